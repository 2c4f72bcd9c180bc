"""The resolution ladder: half resolution below the full-resolution rate range, chosen per model."""

import json
import shutil

import numpy as np
import pytest

from aecompress import container
from aecompress.codec import Codec
from aecompress.compress import coding_input, decode_bytes, encode_picture
from aecompress.errors import ModelError
from aecompress.imageio import Picture
from aecompress.ladder import Ladder, Rung, calibrate, downscale, upscale
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


def test_invalid_ladders_are_refused():
    with pytest.raises(ValueError):
        Ladder([Rung(3, 0, 1)])
    with pytest.raises(ValueError):
        Ladder.from_manifest({"resolution_ladder": [{"scale": 2, "lo": 0, "hi": 12}]}, 9)
    assert Ladder.from_manifest({}, 9).span == 8


def test_calibrate_switches_where_half_resolution_stops_paying():
    # full resolution: bpp 0.4 * 1.25^l, PSNR 25 + l; half: a quarter of the bits, PSNR saturating
    def curve(scale, lv):
        if scale == 1:
            return 0.4 * 1.25 ** lv, 25.0 + lv
        return 0.1 * 1.25 ** lv, 22.0 + 4.5 * (1 - np.exp(-lv / 3))

    lad = calibrate(curve, 9)
    assert [r.scale for r in lad.rungs] == [2, 1]
    half, full = lad.rungs
    # at the switch both resolutions give the same PSNR, and half resolution is no longer cheaper
    p_half = curve(2, half.hi)[1]
    assert p_half == pytest.approx(25.0 + full.lo, abs=0.1)
    b_full = 0.4 * 1.25 ** full.lo
    assert curve(2, half.hi)[0] == pytest.approx(b_full, rel=0.1)
    assert 0 < half.hi < 8 and 0 <= full.lo < 2
    # a half-resolution curve that is never cheaper: no half-resolution rung
    assert [r.scale for r in calibrate(lambda s, lv: (0.5 * 1.25 ** lv, 25 + lv - (s - 1) * 3), 9).rungs] == [1]


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


def test_shipped_codec_has_a_half_resolution_rung(photo_codec):
    assert photo_codec.ladder.rungs[0].scale == 2 and photo_codec.ladder.rungs[-1].scale == 1


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
