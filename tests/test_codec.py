"""The codec pipeline with the shipped photo model: round trips, modes, rate control, determinism."""

import numpy as np
import pytest

import aecompress.codec as codec_mod
from aecompress.codec import Codec
from aecompress.compress import decode_bytes, encode_picture
from aecompress.imageio import Picture
from aecompress.metrics import psnr
from aecompress.package import load_package

from .conftest import smooth_image


def _pic(a, mode=None, bits=8):
    return Picture(a, mode or ("L" if a.shape[2] == 1 else "RGB" if a.shape[2] == 3 else "RGBA"), bits)


def test_roundtrip_decodes_to_the_encoders_reconstruction(photo_codec):
    img = smooth_image(97, 131)                       # odd sizes, not multiples of 64
    enc = encode_picture(_pic(img), photo_codec, quality=60)
    pixels, header, _ = decode_bytes(enc.data)
    assert pixels.shape == img.shape
    assert np.array_equal(pixels, enc.recon)
    assert (header.width, header.height) == (131, 97)
    assert psnr(img, pixels) > 22


def test_quality_orders_rate_and_distortion(photo_codec, cat):
    a = photo_codec.analyse(cat)
    sizes, psnrs = [], []
    scales = []
    for q in (1, 50, 100):
        data, st = photo_codec.code(a, photo_codec.quality_to_position(q))
        sizes.append(len(data))
        scales.append(st["scale"])
        psnrs.append(psnr(cat, photo_codec.reconstruct(st, *cat.shape[:2])))
    assert sizes[0] < sizes[1] < sizes[2]
    assert psnrs[0] < psnrs[1] < psnrs[2]
    bpp = [s * 8 / (cat.shape[0] * cat.shape[1]) for s in sizes]
    # the shipped model spans about 0.05 to 2 bpp on photos: its resolution ladder codes the lowest
    # qualities at half resolution, the highest at 5/3 resolution (where full resolution saturates)
    assert bpp[0] < 0.15 and bpp[2] > 1.0
    assert scales[0] == 2 and scales[2] == 3 / 5


def test_greyscale_rgba_and_16bit_sources(photo_codec):
    g = smooth_image(64, 80, channels=1)
    enc = encode_picture(_pic(g), photo_codec, quality=70)
    pixels, header, _ = decode_bytes(enc.data)
    assert header.mode == "L" and pixels.shape == (64, 80, 1)

    rgba = np.concatenate([smooth_image(40, 50), np.full((40, 50, 1), 128, np.uint8)], axis=2)
    enc = encode_picture(_pic(rgba), photo_codec, quality=70)
    assert any("alpha" in n for n in enc.notes)
    pixels, header, _ = decode_bytes(enc.data)
    assert header.alpha_dropped and pixels.shape == (40, 50, 3)

    deep = smooth_image(40, 50).astype(np.uint16) * 257
    enc = encode_picture(_pic(deep, "RGB", 16), photo_codec, quality=70)
    assert any("16-bit" in n for n in enc.notes)
    assert decode_bytes(enc.data)[1].bits == 16


def test_rate_targets(photo_codec, cat):
    pic = _pic(cat)
    px = cat.shape[0] * cat.shape[1]
    for target in (0.4, 0.8):
        enc = encode_picture(pic, photo_codec, target_bpp=target)
        bpp = len(enc.data) * 8 / px
        assert bpp <= target and bpp > target * 0.8
    enc = encode_picture(pic, photo_codec, target_bpp=0.01)
    # the note names the target in the unit it was asked in, and what the smallest file is
    size = len(enc.data)
    assert f"target 0.01 bpp not reachable: the smallest file, at the lowest quality, is {size:,} bytes " \
           f"({size * 8 / px:.3f} bpp)" in enc.notes
    enc = encode_picture(pic, photo_codec, target_size=30)
    assert f"target 30 bytes not reachable: the smallest file, at the lowest quality, is {len(enc.data):,} bytes " \
           f"({len(enc.data) * 8 / px:.3f} bpp)" in enc.notes
    enc = encode_picture(pic, photo_codec, target_size=9000)
    assert 8000 < len(enc.data) <= 9000
    enc = encode_picture(pic, photo_codec, target_psnr=26.0)
    assert psnr(cat, enc.recon) >= 26.0


def test_decoding_is_identical_across_thread_counts(cat):
    enc_codec = Codec(load_package("photo", "cpu", 1))
    data = encode_picture(_pic(cat), enc_codec, quality=80).data
    outs = [decode_bytes(data, load_package("photo", "cpu", t))[0] for t in (1, 2)]
    assert np.array_equal(outs[0], outs[1])


@pytest.mark.parametrize("quality", [1, 75])          # half resolution (the ladder's low end), full
def test_float_drift_never_reaches_the_entropy_coder(cat, monkeypatch, quality):
    """Simulate another provider: every float graph output is perturbed on the decoding side.

    The entropy decoder must still recover exactly the encoder's integers (it depends only on
    integers and the integer hyper-synthesis); pixels may move by rounding, not more.
    """
    pkg = load_package("photo", "cpu", 2)
    codec = Codec(pkg)
    a = codec.analyse(cat)
    data, st = codec.code(a, codec.quality_to_position(quality))
    clean = codec.reconstruct(st, *cat.shape[:2])

    drifting = Codec(load_package("photo", "cpu", 2))
    rng = np.random.default_rng(0)
    orig_session = drifting.pkg.session

    def session(name):
        s = orig_session(name)
        return lambda x: s(x) * (1 + rng.normal(0, 1e-5, 1)).astype(np.float32)

    monkeypatch.setattr(drifting.pkg, "session", session)
    captured = {}
    orig_latent = drifting.latent_from_state

    def latent_from_state(state):
        captured.update(state)
        return orig_latent(state)

    monkeypatch.setattr(drifting, "latent_from_state", latent_from_state)
    pixels, _ = drifting.decode(data)
    assert np.array_equal(captured["q"], st["q"]) and np.array_equal(captured["z"], st["z"])
    assert np.array_equal(captured["mean"], st["mean"])
    assert np.abs(pixels.astype(int) - clean.astype(int)).max() <= 2


def test_tiled_transforms_leave_no_seams(monkeypatch, photo_codec):
    img = smooth_image(300, 330, seed=3)
    whole = encode_picture(_pic(img), photo_codec, quality=70)
    monkeypatch.setattr(codec_mod, "ANALYSIS_TILE", 128)
    monkeypatch.setattr(codec_mod, "SYNTHESIS_TILE", 8)
    tiled = encode_picture(_pic(img), photo_codec, quality=70)
    # same latents up to a few rounding flips, and a reconstruction without seams
    assert abs(len(tiled.data) - len(whole.data)) <= 0.01 * len(whole.data)
    diff = np.abs(tiled.recon.astype(int) - whole.recon.astype(int))
    assert diff.mean() < 0.05 and abs(psnr(img, tiled.recon) - psnr(img, whole.recon)) < 0.05
    pixels, _, _ = decode_bytes(tiled.data)
    assert np.array_equal(pixels, tiled.recon)


def test_a_tiled_analysis_lets_its_session_go(monkeypatch, photo_codec):
    # a large (tiled) image's analysis session is closed after use, so the memory onnxruntime
    # keeps of its tiles is not held beside the synthesis; the next image opens it again
    img = smooth_image(300, 330, seed=4)
    photo_codec.analyse(img)
    assert "analysis" in photo_codec.pkg._sessions            # one tile: kept for the next image
    monkeypatch.setattr(codec_mod, "ANALYSIS_TILE", 128)
    first = encode_picture(_pic(img), photo_codec, quality=70)
    assert "analysis" not in photo_codec.pkg._sessions
    assert "synthesis" in photo_codec.pkg._sessions
    again = encode_picture(_pic(img), photo_codec, quality=70)
    assert again.data == first.data and np.array_equal(again.recon, first.recon)
    assert photo_codec.pkg.provider == "CPUExecutionProvider"
    pixels, _, _ = decode_bytes(first.data)
    assert np.array_equal(pixels, first.recon)


def _codec_with_rdoq(lam: float) -> Codec:
    """The photo codec at full resolution only (positions are levels), with this RDOQ lambda."""
    from aecompress.ladder import Ladder

    c = Codec(load_package("photo", "cpu", 2), rdoq_lambda=lam)
    c.ladder = Ladder.single(c.levels)
    return c


def test_rdoq_beats_plain_rounding_on_the_rate_distortion_curve(cat):
    lam = load_package("photo").manifest["encoder"]["rdoq_lambda"]
    assert lam > 0                                                           # the shipped model uses it
    rdoq, plain = _codec_with_rdoq(lam), _codec_with_rdoq(0.0)
    a = plain.analyse(cat)
    n = cat.shape[0] * cat.shape[1]

    def point(codec, level):
        data, st = codec.code(a, level)
        assert st["scale"] == 1
        return len(data) * 8 / n, psnr(cat, codec.reconstruct(st, *cat.shape[:2]))

    curve = np.array([point(plain, lv) for lv in np.arange(0.0, 8.01, 0.5)])   # bpp, PSNR
    for level in (3.0, 5.0, 7.0):
        bpp, db = point(rdoq, level)
        assert curve[0, 0] < bpp < point(plain, level)[0]                     # fewer bits ...
        assert db > np.interp(bpp, curve[:, 0], curve[:, 1])                  # ... for less than they cost


def test_rdoq_with_a_huge_lambda_is_plain_rounding(cat):
    a = _codec_with_rdoq(0.0).analyse(cat)
    pos = 4.5
    assert _codec_with_rdoq(1e12).code(a, pos)[0] == _codec_with_rdoq(0.0).code(a, pos)[0]


def test_encoder_settings_do_not_change_the_model_id(tmp_path):
    import json
    import shutil

    pkg = load_package("photo")
    copy = tmp_path / "photo"
    shutil.copytree(pkg.path, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["encoder"] = {"rdoq_lambda": 3.0}
    m["quality_anchor"] = {"quality": 75, "position": 5.0, "calibration_psnr": 28.0}
    (copy / "manifest.json").write_text(json.dumps(m))
    assert load_package(copy).model_id == pkg.model_id
    m["latent_channels"] = 64                        # a coding field does change it
    (copy / "manifest.json").write_text(json.dumps(m))
    assert load_package(copy).model_id != pkg.model_id


def test_a_header_that_asks_for_more_memory_than_is_free_is_refused(monkeypatch):
    """26 checksummed bytes may claim 20000 x 20000 pixels: the decode (whole latent in memory) was
    swapping at 10 GB. It is refused in one line when the machine lacks the memory; a photo is not."""
    from aecompress import codec as codec_module
    from aecompress import container
    from aecompress.compress import decode_bytes, open_codec
    from aecompress.errors import AecError

    c = open_codec(None, "cpu", 1)
    header = container.Header(c.pkg.model_id, 20000, 20000, 3, "RGB", 8, "hyperprior", 2.0, False)
    data = container.pack(header, container.join_payload(b"", b""))
    assert len(data) < 40
    monkeypatch.setattr(codec_module, "_available_memory", lambda: 4 << 30)
    with pytest.raises(AecError, match=r"20000x20000 image needs about 9.4 GB of memory, and 4.0 GB is free"):
        decode_bytes(data, c.pkg)
    small = container.pack(container.Header(c.pkg.model_id, 640, 480, 3, "RGB", 8, "hyperprior", 2.0, False),
                           container.join_payload(b"", b""))
    monkeypatch.setattr(codec_module, "_available_memory", lambda: 1 << 20)
    try:                                   # under 1 GB a decode is never refused (MemAvailable can be odd)
        decode_bytes(small, c.pkg)
    except AecError as exc:                # (an empty stream may still be damage)
        assert "needs about" not in str(exc)


def test_graphs_whose_outputs_do_not_fit_the_manifest_are_model_errors():
    """A synthesis that upsampled 8x instead of 16x decoded a 96x64 image reported as 192x128
    (exit 0), one with 4 channels an RGBA file for an RGB one; an analysis with stride 8 made files
    its own model could not decode. Each is a model error now, before anything is written."""
    from aecompress.compress import decode_bytes, encode_picture, open_codec
    from aecompress.errors import ModelError
    from aecompress.imageio import Picture

    pic = Picture(smooth_image(128, 192), "RGB", 8)
    data = encode_picture(pic, open_codec(None, "cpu")).data

    class Wrong:                           # a session whose output is cut or widened as a bad graph's
        def __init__(self, real, change):
            self.real, self.change = real, change

        def __call__(self, *x):
            return self.change(self.real(*x))

    for graph, change in (("synthesis", lambda o: o[:, :, ::2, ::2]),
                          ("synthesis", lambda o: np.concatenate([o, o[:, :1]], axis=1)),
                          ("analysis", lambda o: np.repeat(np.repeat(o, 2, axis=2), 2, axis=3))):
        codec = open_codec(None, "cpu")
        codec.pkg._sessions[graph] = Wrong(codec.pkg.session(graph), change)
        with pytest.raises(ModelError, match=f"its {graph} gave an output of shape"):
            if graph == "analysis":
                encode_picture(pic, codec)
            else:
                decode_bytes(data, codec.pkg)
