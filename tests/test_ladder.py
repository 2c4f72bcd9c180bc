"""The resolution ladder: half resolution below the full-resolution rate range, chosen per model."""

import json
import shutil

import numpy as np
import pytest

from aecompress import compress as compress_module, container
from aecompress.codec import Codec
from aecompress.compress import coding_input, decode_bytes, encode_picture, file_info
from aecompress.errors import ModelError
from aecompress.imageio import Picture
from aecompress.ladder import (Ladder, Rung, calibrate, downscale, parse_points, parse_scale, resolution_name,
                             scale_label, scaled_size, upscale)
from aecompress.metrics import psnr
from aecompress.package import ModelPackage, find_package_dir, read_manifest


def test_positions_run_along_the_rungs():
    lad = Ladder([Rung(2, 0.0, 4.0), Rung(1, 1.0, 8.0)])
    assert lad.span == 11.0
    assert lad.intervals() == [(0.0, 4.0), (4.0, 11.0)]
    assert lad.at(0) == (2, 0.0) and lad.at(2.5) == (2, 2.5)
    assert lad.at(4.0) == (2, 4.0)                   # a border belongs to the lower rung
    assert lad.at(5.0) == (1, 2.0) and lad.at(99) == (1, 8.0) and lad.at(-1) == (2, 0.0)
    for u in (0.0, 1.5, 4.0, 6.25, 11.0):
        assert lad.position(*lad.at(u)) == pytest.approx(u)
    assert lad.quality_to_position(1) == 0 and lad.quality_to_position(100) == 11.0
    assert lad.position_to_quality(lad.quality_to_position(37)) == pytest.approx(37)
    single = Ladder.single(9)
    assert single.span == 8 and single.at(3.25) == (1, 3.25)


def test_quality_maps_through_the_anchor():
    lad = Ladder([Rung(2, 0.0, 4.0), Rung(1, 1.0, 8.0)], anchor=(75, 6.0))
    assert lad.quality_to_position(1) == 0 and lad.quality_to_position(100) == 11.0
    assert lad.quality_to_position(75) == pytest.approx(6.0)
    assert lad.quality_to_position(38) == pytest.approx(3.0)               # halfway to the anchor
    assert lad.quality_to_position(87.5) == pytest.approx(8.5)             # halfway above it
    qs = np.linspace(1, 100, 199)
    us = [lad.quality_to_position(q) for q in qs]
    assert np.all(np.diff(us) > 0)
    for q in (1, 20, 75, 90, 100):
        assert lad.position_to_quality(lad.quality_to_position(q)) == pytest.approx(q)
    assert lad.quality_to_position(500) == 11.0 and lad.quality_to_position(-3) == 0
    spec = {"resolution_ladder": lad.to_manifest(), "quality_anchor": lad.anchor_manifest()}
    back = Ladder.from_manifest(json.loads(json.dumps(spec)), 9)
    assert back.anchor == (75, 6.0) and back.quality_to_position(75) == pytest.approx(6.0)
    assert back.anchor_manifest() == spec["quality_anchor"]
    for bad in ((75, 0.0), (75, 11.0), (100, 5.0), (1, 5.0)):
        with pytest.raises(ValueError, match="anchor"):
            Ladder(lad.rungs, anchor=bad)


def test_anchor_sits_at_the_calibration_psnr():
    # full resolution: PSNR 25 + l; half resolution: PSNR 22 + l / 2 (bits as in calibrate's tests)
    points = {}
    for lv in range(9):
        points[(1, float(lv))] = (0.4 * 1.25 ** lv, 25.0 + lv)
        points[(2, float(lv))] = (0.1 * 1.25 ** lv, 22.0 + lv / 2)
    lad = Ladder([Rung(2, 0.0, 6.0), Rung(1, 0.0, 8.0)])
    on_full = lad.anchored(points, psnr=30.2)
    assert on_full.anchor == (75.0, pytest.approx(6.0 + 5.2)) and on_full.anchor_manifest()["calibration_psnr"] == 30.2
    scale, level = on_full.at(on_full.quality_to_position(75))
    assert scale == 1 and 25.0 + level == pytest.approx(30.2)
    on_half = lad.anchored(points, psnr=23.0, quality=40)
    assert on_half.at(on_half.quality_to_position(40)) == (2, pytest.approx(2.0))
    # a PSNR the ladder never reaches leaves quality linear
    assert lad.anchored(points, psnr=40.0).anchor is None
    assert lad.anchored(points, psnr=40.0).quality_to_position(75) == pytest.approx(74 / 99 * 14)


def test_shipped_default_quality_codes_at_the_anchor_psnr(photo_codec):
    m = photo_codec.pkg.manifest
    pts = parse_points(m["training"]["ladder_calibration"]["points (scale:level -> bpp, PSNR)"])
    scale, level = photo_codec.ladder.at(photo_codec.quality_to_position(75))
    lv = np.arange(photo_codec.levels, dtype=float)
    assert np.interp(level, lv, [pts[(scale, v)][1] for v in lv]) == pytest.approx(m["quality_anchor"]["calibration_psnr"], abs=0.01)


def test_invalid_ladders_are_refused():
    with pytest.raises(ValueError):
        Ladder([Rung(3, 0, 1)])
    with pytest.raises(ValueError, match="unsupported"):
        Ladder.from_manifest({"resolution_ladder": [{"scale": "3/2", "lo": 0, "hi": 4}]}, 9)
    with pytest.raises(ValueError):
        Ladder.from_manifest({"resolution_ladder": [{"scale": 2, "lo": 0, "hi": 12}]}, 9)
    assert Ladder.from_manifest({}, 9).span == 8


def test_calibrate_switches_where_half_resolution_stops_paying():
    # full resolution: bpp 0.4 * 1.25^l, PSNR 25 + l; half: a quarter of the bits, PSNR saturating
    def curve(scale, lv):
        if scale == 1:
            return 0.4 * 1.25 ** lv, 25.0 + lv
        return 0.1 * 1.25 ** lv, 22.0 + 4.5 * (1 - np.exp(-lv / 3))

    lad = calibrate(curve, 9, scales=(1, 2))
    assert [r.scale for r in lad.rungs] == [2, 1]
    half, full = lad.rungs
    # at the switch both resolutions give the same PSNR, and half resolution is no longer cheaper
    p_half = curve(2, half.hi)[1]
    assert p_half == pytest.approx(25.0 + full.lo, abs=0.1)
    b_full = 0.4 * 1.25 ** full.lo
    assert curve(2, half.hi)[0] == pytest.approx(b_full, rel=0.1)
    assert 0 < half.hi < 8 and 0 <= full.lo < 2
    # a half-resolution curve that is never cheaper: no half-resolution rung
    assert [r.scale for r in calibrate(lambda s, lv: (0.5 * 1.25 ** lv, 25 + lv - (s - 1) * 3), 9,
                                       scales=(1, 2)).rungs] == [1]


def test_calibrate_climbs_past_full_resolution_where_it_saturates():
    """Where the full-resolution levels saturate, coding at 4/3 of the size (scale 3/4) reaches PSNRs
    full resolution never does: the ladder ends with such a rung, and the calibration walks up to its
    top, not only to full resolution's (the photo model's top levels gain 0.2 dB for 20% more bits)."""
    def curve(scale, lv):
        if scale == 1:
            return 0.4 * 1.25 ** lv, 25.0 + 7 * (1 - np.exp(-lv / 3))           # saturates near 32 dB
        return 0.4 / scale ** 2 * 1.25 ** lv, 24.0 + 11 * (1 - np.exp(-lv / 4))  # 3/4: more bits, higher top

    lad = calibrate(curve, 9, scales=(1, 3 / 4))
    assert [r.scale for r in lad.rungs] == [1, 3 / 4] and lad.rungs[-1].hi == 8
    full, up = lad.rungs
    assert curve(1, full.hi)[1] == pytest.approx(curve(3 / 4, up.lo)[1], abs=0.05)   # the same PSNR at the switch
    assert 0 < full.hi < 8
    # a finer scale that never pays stays out
    assert [r.scale for r in calibrate(lambda s, lv: (0.4 / s ** 2 * 1.25 ** lv, 25 + lv), 9,
                                       scales=(1, 3 / 4)).rungs] == [1]


def test_calibrate_puts_an_intermediate_resolution_where_it_is_cheapest():
    # full: bpp 0.4 * 1.25^l, PSNR 25 + l; each coarser scale codes fewer pixels and saturates lower
    def curve(scale, lv):
        if scale == 1:
            return 0.4 * 1.25 ** lv, 25.0 + lv
        ceiling = 25.0 + 8 * (1 / scale) ** 2                  # 3/4: 29.5 dB, 1/2: 27 dB
        return 0.4 / scale ** 2 * 1.25 ** lv, 21.0 + (ceiling - 21.0) * (1 - np.exp(-lv / 3))

    lad = calibrate(curve, 9, scales=(1, 2, 4 / 3))
    assert [r.scale for r in lad.rungs] == [2, 4 / 3, 1]
    for lower, upper in zip(lad.rungs, lad.rungs[1:]):
        # a switch keeps the PSNR (quality stays monotone) and lands where the finer scale became cheaper
        assert curve(lower.scale, lower.hi)[1] == pytest.approx(curve(upper.scale, upper.lo)[1], abs=0.05)
        assert curve(upper.scale, upper.lo)[0] == pytest.approx(curve(lower.scale, lower.hi)[0], rel=0.05)
    # inside each rung nothing else is cheaper at the same PSNR
    fine = np.linspace(0, 8, 161)
    for r in lad.rungs:
        for lv in np.linspace(r.lo, r.hi, 7)[1:-1]:
            bits, p = curve(r.scale, lv)
            for other in (1, 2, 4 / 3):
                pts = np.array([curve(other, v) for v in fine])
                if other != r.scale and pts[0, 1] <= p <= pts[-1, 1]:
                    assert np.interp(p, pts[:, 1], pts[:, 0]) >= bits * 0.99
    # without the intermediate scale, the ladder is the two-rung one
    assert [r.scale for r in calibrate(curve, 9, scales=(1, 2)).rungs] == [2, 1]


def test_resampling_is_size_exact_and_repeatable(cat):
    small = downscale(cat, 2)
    assert small.shape == (150, 226, 3)
    big = upscale(small, 451, 300)
    assert big.shape == cat.shape and np.array_equal(big, upscale(small, 451, 300))
    assert psnr(cat, big) > 25
    grey = cat[:, :, :1]
    assert upscale(downscale(grey, 2), 451, 300).shape == (300, 451, 1)


def _variant(tmp_path_factory, name, ladder):
    """A copy of the shipped photo codec with another resolution ladder (None: full resolution only)."""
    dst = tmp_path_factory.mktemp("pkg") / name
    shutil.copytree(find_package_dir("photo"), dst)
    m = json.loads((dst / "manifest.json").read_text())
    m.pop("resolution_ladder", None)
    m.pop("quality_anchor", None)                 # placed on the shipped ladder: quality maps linearly here
    if ladder:
        m["resolution_ladder"] = ladder
    (dst / "manifest.json").write_text(json.dumps(m))
    return Codec(ModelPackage(dst, read_manifest(dst), "cpu", 2))


@pytest.fixture(scope="module")
def laddered(tmp_path_factory):
    """Half resolution for levels 0-4, then full resolution."""
    return _variant(tmp_path_factory, "photo_ladder", [{"scale": 2, "lo": 0, "hi": 4}, {"scale": 1, "lo": 0, "hi": 8}])


@pytest.fixture(scope="module")
def full_only(tmp_path_factory):
    return _variant(tmp_path_factory, "photo_full", None)


def _at_most_full(lad: Ladder, u: float) -> tuple[float, float]:
    """The ladder's answer for an image too large to code at any scale finer than full resolution."""
    return lad.at_fitting(u, lambda scale: scale >= 1)


def test_shipped_codec_has_a_half_resolution_rung(photo_codec):
    # half resolution at the bottom, 3/2 and then 5/3 at the top, where full resolution saturates
    assert [r.scale for r in photo_codec.ladder.rungs] == [2, 4 / 3, 1, 2 / 3, 3 / 5]
    assert photo_codec.ladder.rungs[-1].hi == photo_codec.levels - 1


def test_low_qualities_code_at_half_resolution_and_decode_to_full_size(laddered, full_only, cat):
    pic = Picture(cat, "RGB")
    low = encode_picture(pic, laddered, quality=1)
    assert low.scale == 2 and container.read_header(low.data).scale == 2
    floor = encode_picture(pic, full_only, quality=1)            # the same model without the ladder
    assert len(low.data) < 0.5 * len(floor.data)
    pixels, header, _ = decode_bytes(low.data, laddered.pkg)
    assert pixels.shape == cat.shape and (header.width, header.height) == (451, 300)
    assert np.array_equal(pixels, low.recon)                     # the decoder gets what the encoder reported
    high = encode_picture(pic, laddered, quality=100)
    assert high.scale == 1 and np.array_equal(decode_bytes(high.data, laddered.pkg)[0], high.recon)


def test_rate_targets_search_every_resolution(laddered, full_only, cat):
    pic = Picture(cat, "RGB")
    ref, _ = coding_input(pic, laddered)
    floor = len(encode_picture(pic, full_only, quality=1).data)
    target = floor // 2                                          # below what full resolution can reach
    enc = encode_picture(pic, laddered, target_size=target)
    assert len(enc.data) <= target and enc.scale == 2 and not enc.notes
    p = psnr(ref, enc.recon)
    enc2 = encode_picture(pic, laddered, target_psnr=p - 0.5)
    assert psnr(ref, enc2.recon) >= p - 0.5 and len(enc2.data) <= len(enc.data)


def test_a_ladder_on_a_fixed_size_model_is_refused(laddered):
    m = dict(laddered.pkg.manifest, codec="factorized")
    with pytest.raises(ModelError, match="resolution"):
        Codec(ModelPackage(laddered.pkg.path, m, "cpu", 1))


def test_position_of_a_level_outside_the_ladder_is_the_nearest_rung_end():
    lad = Ladder([Rung(2, 0.0, 8.0), Rung(1, 2.0, 8.0)])
    assert lad.position(1, 1.0) == pytest.approx(8.0)         # below the full rung: its start
    assert lad.position(1, 5.0) == pytest.approx(11.0)
    assert lad.position(2, 3.0) == pytest.approx(3.0)


def test_position_of_a_scale_without_a_rung_is_on_the_nearest_scale():
    """A file of an earlier package coded at 4/3 (scale 3/4), read with today's ladder, which goes
    from full resolution to 3/2 and 5/3: its quality is that of the nearest scale's rung (3/2), not
    the bottom of the ladder (it was position 0, quality 1, for a file coded at -q 95)."""
    lad = Ladder([Rung(2, 0.0, 3.0), Rung(1, 1.5, 4.0), Rung(2 / 3, 2.0, 5.3), Rung(3 / 5, 4.6, 8.0)])
    assert lad.position(3 / 4, 3.0) == pytest.approx(lad.position(2 / 3, 3.0)) == pytest.approx(6.5)
    assert lad.position(3 / 4, 8.0) == pytest.approx(lad.intervals()[2][1])     # the 3/2 rung's top
    assert lad.position(4 / 3, 2.0) == pytest.approx(lad.position(1, 2.0))    # between 1/2 and full: full
    assert Ladder([Rung(2, 0.0, 3.0), Rung(4 / 3, 1.0, 5.0)]).position(1, 6.0) == pytest.approx(7.0)
    assert Ladder([Rung(1, 0.0, 3.0), Rung(2 / 3, 1.0, 5.0)]).position(2, 1.0) == pytest.approx(1.0)


def test_info_of_a_file_of_the_package_before_at_4_3_gives_a_high_quality(tmp_path):
    """The shipped package decodes files of the one before (id ccdd523b), whose top rung was 4/3;
    `info` recomputes their quality from today's ladder, which has no 4/3 rung."""
    from aecompress.compress import file_info

    header = container.Header(bytes.fromhex("ccdd523b3a4bdc88"), 600, 400, 3, "RGB", 8, "hyperprior", 6.0,
                              False, scale=3 / 4)
    path = tmp_path / "old.aez"
    path.write_bytes(container.pack(header, b"\0" * 10))
    info = file_info(path)
    assert info["model"] == "photo" and info["resolution"] == "4/3"
    assert 75 < info["quality"] < 100


def test_scales_are_exact_ratios():
    assert [scale_label(s) for s in container.SCALES] == ["1", "2", "4/3", "3/4", "2/3", "3/5"]
    assert [resolution_name(s) for s in container.SCALES] == ["full", "1/2", "3/4", "4/3", "3/2", "5/3"]
    for s in container.SCALES:
        assert parse_scale(scale_label(s)) == s and parse_scale(s) == s
    assert parse_scale("2/1") == 2 and parse_scale(" 4/3") == 4 / 3
    for bad in ("3/2", "5/3", "8/5", "x", "4/0", 3):
        with pytest.raises(ValueError):
            parse_scale(bad)
    # ceil(size / scale) in integers: 451 * 3/4 = 338.25 -> 339, 301 * 3/4 = 225.75 -> 226
    assert scaled_size(451, 301, 4 / 3) == (339, 226) and scaled_size(451, 301, 2) == (226, 151)
    assert downscale(np.zeros((301, 451, 3), np.uint8), 4 / 3).shape == (226, 339, 3)
    # the scale 3/4 codes at 4/3 of the size: 451 * 4/3 = 601.33 -> 602, 301 * 4/3 = 401.33 -> 402
    assert scaled_size(451, 301, 3 / 4) == (602, 402)
    assert downscale(np.zeros((301, 451, 3), np.uint8), 3 / 4).shape == (402, 602, 3)
    # 3/2 and 5/3 of the size: 451 * 3/2 = 676.5 -> 677, 301 * 5/3 = 501.67 -> 502
    assert scaled_size(451, 301, 2 / 3) == (677, 452) and scaled_size(451, 301, 3 / 5) == (752, 502)
    assert parse_scale("3/4") == 3 / 4 and scale_label(3 / 4) == "3/4"
    lad = Ladder([Rung(2, 0, 3), Rung(4 / 3, 2, 5), Rung(1, 3, 8)])
    spec = json.loads(json.dumps(lad.to_manifest()))
    assert [r["scale"] for r in spec] == [2, "4/3", 1]
    assert Ladder.from_manifest({"resolution_ladder": spec}, 9).rungs == lad.rungs
    # calibration points as the manifest keeps them read back exactly
    assert parse_points({"4/3:2": [0.5, 30.0], "1:0": [0.3, 25.0], "2:8": [0.4, 26.5]}) == {
        (4 / 3, 2.0): (0.5, 30.0), (1, 0.0): (0.3, 25.0), (2, 8.0): (0.4, 26.5)}


@pytest.fixture(scope="module")
def four_rungs(tmp_path_factory):
    return _variant(tmp_path_factory, "photo_four", [{"scale": 2, "lo": 0, "hi": 4}, {"scale": "4/3", "lo": 2, "hi": 5},
                                                      {"scale": 1, "lo": 3, "hi": 5}, {"scale": "3/4", "lo": 3, "hi": 5},
                                                      {"scale": "2/3", "lo": 3, "hi": 6},
                                                      {"scale": "3/5", "lo": 4, "hi": 8}])


def test_intermediate_resolutions_round_trip(four_rungs, cat, tmp_path):
    pic = Picture(cat, "RGB")
    a = four_rungs.analyse(cat)
    seen = []
    for lo, hi in four_rungs.ladder.intervals():
        data, st = four_rungs.code(a, (lo + hi) / 2)
        rec = four_rungs.reconstruct(st, 300, 451)
        header = container.read_header(data)
        assert header.scale == st["scale"] and header.version == {3 / 4: 4, 2 / 3: 5, 3 / 5: 5}.get(st["scale"], 3)
        pixels, header, _ = decode_bytes(data, four_rungs.pkg)
        assert pixels.shape == cat.shape and np.array_equal(pixels, rec)   # what the encoder reported
        seen.append((st["scale"], len(data), psnr(cat, rec)))
        path = tmp_path / f"{resolution_name(st['scale']).replace('/', '_')}.aez"
        path.write_bytes(data)
        info = file_info(path)
        assert info["resolution"] == resolution_name(st["scale"])
    assert [s for s, _, _ in seen] == [2, 4 / 3, 1, 3 / 4, 2 / 3, 3 / 5]
    assert all(a[1] < b[1] and a[2] < b[2] for a, b in zip(seen, seen[1:]))   # rate and quality rise
    # rate targets search every rung and still keep to the target
    enc = encode_picture(pic, four_rungs, target_size=seen[1][1])
    assert len(enc.data) <= seen[1][1]


def test_an_image_too_large_to_code_upsampled_codes_at_full_resolution(photo_codec, cat, monkeypatch):
    """Above MAX_UPSCALED_PIXELS coded pixels the rungs finer than full resolution map onto the full
    rung's levels above its top instead (a 40-megapixel photo would code as 111 at 5/3): quality still
    rises with -q, and the top is full resolution's top level."""
    import aecompress.codec as codec_mod

    lad = photo_codec.ladder
    full = [r for r in lad.rungs if r.scale == 1][-1]
    last_full = max(k for k, r in enumerate(lad.rungs) if r.scale == 1)
    lo, hi = lad.intervals()[last_full][1], lad.span             # the rungs above full resolution
    assert _at_most_full(lad, hi) == (1, photo_codec.levels - 1)
    assert _at_most_full(lad, lo)[1] == pytest.approx(full.hi)
    assert _at_most_full(lad, lo / 2) == lad.at(lo / 2)                 # below the top rung: as at()
    a = photo_codec.analyse(cat)
    assert photo_codec.code(a, hi)[1]["scale"] == 3 / 5
    monkeypatch.setattr(codec_mod, "MAX_UPSCALED_PIXELS", 451 * 300)    # the cat itself fits, 3/2 of it not
    sizes = []
    for u in (lo, (2 * lo + hi) / 3, (lo + 2 * hi) / 3, hi):        # on both rungs above full resolution
        data, st = photo_codec.code(a, u)
        assert st["scale"] == 1 and container.read_header(data).scale == 1
        sizes.append(len(data))
    assert sizes == sorted(sizes) and st["level"] == photo_codec.levels - 1


def test_too_large_to_upsample_maps_every_rung_above_full_onto_full_levels_in_order():
    """With two rungs above full resolution (3/2 and 5/3), at_fitting with only full and coarser scales maps the whole stretch after
    the full rung linearly onto the full levels above its top: rising with the position, from the
    full rung's top to the highest level, never back down where the second rung starts (each rung
    mapped on its own went from its start to the top twice)."""
    lad = Ladder([Rung(2, 0.0, 3.0), Rung(1, 1.5, 4.0), Rung(2 / 3, 2.0, 5.3), Rung(3 / 5, 4.6, 8.0)])
    start = lad.intervals()[1][1]
    us = np.linspace(start, lad.span, 41)
    mapped = [_at_most_full(lad, u) for u in us]
    assert all(s == 1 for s, _ in mapped)
    levels = [lv for _, lv in mapped]
    assert levels[0] == pytest.approx(4.0) and levels[-1] == pytest.approx(8.0)
    assert all(b > a for a, b in zip(levels, levels[1:]))
    assert _at_most_full(lad, start / 2) == lad.at(start / 2)          # below: as at()


def test_an_image_too_large_for_the_top_rung_codes_at_the_finest_rung_that_fits(photo_codec, cat, monkeypatch):
    """An image whose 5/3 version is over the bound but whose 3/2 version is not codes the 5/3 rung's
    positions at 3/2, on that scale's levels above its rung's top: quality rises with -q and the top
    is the 3/2 scale's top level."""
    import aecompress.codec as codec_mod

    lad = photo_codec.ladder
    assert [r.scale for r in lad.rungs[-2:]] == [2 / 3, 3 / 5]
    lo, hi = lad.intervals()[-1]
    three_halves = lad.rungs[-2]
    monkeypatch.setattr(codec_mod, "MAX_UPSCALED_PIXELS", 677 * 450)      # the cat at 3/2 fits, at 5/3 not
    a = photo_codec.analyse(cat)
    sizes = []
    for u in (lad.intervals()[-2][0] + 0.5, lo, (lo + hi) / 2, hi):
        data, st = photo_codec.code(a, u)
        assert st["scale"] == 2 / 3 and container.read_header(data).scale == 2 / 3
        sizes.append(len(data))
    assert sizes == sorted(sizes) and len(set(sizes)) == 4
    assert st["level"] == photo_codec.levels - 1
    assert lad.at_fitting(lo, lambda s: s != 3 / 5) == (2 / 3, pytest.approx(three_halves.hi))


@pytest.fixture(scope="module")
def no_full_rung(tmp_path_factory):
    """A ladder without a full-resolution rung (calibrate gives one where 3/2 is cheaper than full
    resolution at every PSNR above half resolution's)."""
    return _variant(tmp_path_factory, "photo_no_full", [{"scale": 2, "lo": 0, "hi": 4}, {"scale": "2/3", "lo": 0, "hi": 7},
                                                         {"scale": "3/5", "lo": 6, "hi": 8}])


def test_a_ladder_without_a_full_rung_still_keeps_large_images_within_the_bound(no_full_rung, cat, monkeypatch):
    """An image too large to code upsampled codes the upsampled rungs at full resolution (which
    always fits) on the levels above the half rung's top, rising with the position; it coded them
    upsampled whatever the bound when the ladder had no full rung."""
    import aecompress.codec as codec_mod

    lad = no_full_rung.ladder
    lo = lad.intervals()[1][0]
    a = no_full_rung.analyse(cat)
    assert no_full_rung.code(a, lad.span)[1]["scale"] == 3 / 5
    monkeypatch.setattr(codec_mod, "MAX_UPSCALED_PIXELS", 451 * 300)     # the cat itself fits, 3/2 of it not
    sizes = []
    for u in (lo + 0.01, (2 * lo + lad.span) / 3, lad.span):
        data, st = no_full_rung.code(a, u)
        assert st["scale"] == 1 and container.read_header(data).scale == 1
        sizes.append(len(data))
    assert sizes == sorted(sizes) and st["level"] == no_full_rung.levels - 1
    assert no_full_rung.code(a, lo)[1]["scale"] == 2                      # the half rung: as before
    # the mapping starts at the half rung's top level: full resolution codes a level at least as well
    assert _at_most_full(lad, lo + 1e-6) == (1, pytest.approx(4.0, abs=1e-3))
    assert _at_most_full(lad, lad.span) == (1, 8.0)


def test_at_fitting_maps_a_run_of_rungs_that_do_not_fit_onto_the_rung_before_it():
    """Only the run of rungs that do not fit moves; with a fitting rung after the run (a ladder
    calibrate does not make), the run maps onto its own stretch of positions, not the ladder's rest."""
    lad = Ladder([Rung(1, 0.0, 4.0), Rung(3 / 5, 2.0, 6.0), Rung(2 / 3, 5.0, 8.0)])
    fits = lambda s: s != 3 / 5                                          # noqa: E731
    assert lad.at_fitting(4.0, fits) == (1, 4.0)
    assert lad.at_fitting(6.0, fits) == (1, pytest.approx(5.0))          # halfway along the 3/5 rung
    assert lad.at_fitting(8.0, fits) == (1, pytest.approx(6.0))          # its end: its top level
    assert lad.at_fitting(9.0, fits) == lad.at(9.0) == (2 / 3, 6.0)
    # a run at the start of the ladder: full resolution on the run's levels
    assert Ladder([Rung(3 / 5, 0.0, 4.0), Rung(1, 3.0, 8.0)]).at_fitting(2.0, fits) == (1, 2.0)


def test_measure_leaves_out_images_too_large_for_an_upsampled_scale(photo_codec, cat, monkeypatch):
    """calibrate_codec's points under an upsampled scale are that scale's: an image the codec would
    code at full resolution instead (over MAX_UPSCALED_PIXELS there) counts at no upsampled scale."""
    import aecompress.codec as codec_mod
    from aecompress.ladder import measure

    im = np.ascontiguousarray(cat[:96, :128])
    monkeypatch.setattr(codec_mod, "MAX_UPSCALED_PIXELS", 96 * 128 * 2)   # 4/3 fits (2.0x), 3/2 and 5/3 not
    points = measure(photo_codec, [im], levels=[4.0])
    assert {s for s, _ in points} == {1, 4 / 3, 3 / 4}                  # 1/2 needs 128 pixels a side
    full = points[(1, 4.0)]
    monkeypatch.setattr(codec_mod, "MAX_UPSCALED_PIXELS", 10 ** 9)
    again = measure(photo_codec, [im], levels=[4.0])
    assert again[(1, 4.0)] == full and again[(2 / 3, 4.0)] != full and (3 / 5, 4.0) in again


def test_calibration_on_images_too_large_for_an_upsampled_scale_leaves_that_scale_out(photo_codec, cat, monkeypatch):
    """When every calibration image is too large for 3/2 and 5/3, the ladder is chosen among the
    other scales (it fell back to a single full-resolution rung, as for images too small)."""
    import aecompress.codec as codec_mod
    from aecompress.ladder import calibrate_codec

    im = np.ascontiguousarray(cat[:192, :256])
    monkeypatch.setattr(codec_mod, "MAX_UPSCALED_PIXELS", 192 * 256 * 2)     # 4/3 of it fits, 3/2 not
    ladder, points = calibrate_codec(photo_codec, [im])
    assert len(ladder.rungs) > 1 and not {2 / 3, 3 / 5} & {r.scale for r in ladder.rungs}
    assert not any(k.startswith(("2/3:", "3/5:")) for k in points) and "3/4:8" in points


def test_encode_says_when_an_image_is_too_large_for_its_rung(photo_codec, cat, monkeypatch):
    """`encode -q 100` of a photo too large to code at 5/3 codes at 3/2 and reports the quality that
    file has on the ladder (below 100): a note says why, so a 45-megapixel photo's 'q 89' is not a
    mystery; a photo that fits gets no such note, and the note survives the report's reconstruction."""
    import aecompress.codec as codec_mod

    pic = Picture(cat, "RGB")
    fits = encode_picture(pic, photo_codec, quality=100)
    assert fits.scale == 3 / 5 and not any("too large" in n for n in fits.notes)
    monkeypatch.setattr(codec_mod, "MAX_UPSCALED_PIXELS", 677 * 450)      # the cat at 3/2 fits, at 5/3 not
    for reconstruct in (True, False):
        enc = encode_picture(pic, photo_codec, quality=100, reconstruct=reconstruct)
        assert enc.scale == 2 / 3
        assert ("too large to code at 5/3 resolution (over 0.30465 million coded pixels): coded at 3/2 "
                "resolution instead") in enc.notes
    below = encode_picture(pic, photo_codec, quality=50)                 # a rung it fits: no note
    assert not any("too large" in n for n in below.notes)


@pytest.mark.parametrize("target", [{"target_size": 4000}, {"target_bpp": 0.01}, {"target_psnr": 30.0},
                                    {"target_psnr": 0.0}])
def test_targets_find_what_a_full_bisection_finds_in_a_few_codings(photo_codec, cat, monkeypatch, target):
    """A rate or quality target bisects each rung of the ladder; a rung wholly inside or outside the
    target is settled by trying its ends (a --psnr search took 60 codings and syntheses, 30 s on a
    768x512 photo; now about 20). The file is the one a full bisection of every rung finds."""
    pic = Picture(cat, "RGB")
    analysis = photo_codec.analyse(coding_input(pic, photo_codec)[0])
    calls = []
    code = photo_codec.code
    monkeypatch.setattr(photo_codec, "code", lambda *a, **k: calls.append(a[1]) or code(*a, **k))
    fast = encode_picture(pic, photo_codec, analysis=analysis, **target)
    n_fast = len(calls)
    # the search as it was: `steps` halvings of every rung, whatever the target
    monkeypatch.setattr(compress_module, "_search", compress_module._bisect)
    calls.clear()
    full = encode_picture(pic, photo_codec, analysis=analysis, **target)
    rungs = len(photo_codec.ladder.rungs)
    assert fast.data == full.data and fast.notes == full.notes
    assert n_fast <= 2 * rungs + compress_module.SEARCH_STEPS + 2 < len(calls)
