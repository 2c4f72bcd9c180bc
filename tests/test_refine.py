"""Encoder-side latent refinement (`encode --refine`): the gradient graph, and what it buys."""

import json
import shutil

import numpy as np
import pytest

from aecompress.codec import Codec
from aecompress.ladder import Ladder
from aecompress.compress import REFINE_NOT_KEPT, decode_bytes, encode_picture
from aecompress.imageio import Picture
from aecompress.metrics import psnr
from aecompress.package import load_package


@pytest.fixture(scope="module")
def crop(cat):
    return np.ascontiguousarray(cat[:192, :256])


def test_the_shipped_codec_has_a_refinement_graph_outside_its_model_id():
    pkg = load_package("photo")
    assert pkg.manifest["encoder"]["refine_graph"] == "refine.onnx"
    assert Codec(pkg).can_refine()
    hashed = set(pkg.manifest["graphs"].values())
    assert "refine.onnx" not in hashed                # the decoder never runs it


def test_refined_files_lie_above_the_unrefined_rate_distortion_curve(crop):
    pkg = load_package("photo", "cpu", 2)
    plain, refined = Codec(pkg), Codec(pkg, refine=30)
    for c in (plain, refined):              # full resolution at every level: position = level
        c.ladder = Ladder.single(c.levels)
    a = plain.analyse(crop)
    n = crop.shape[0] * crop.shape[1]

    def point(codec, level):
        data, st = codec.code(a, level)
        return data, st, len(data) * 8 / n, psnr(crop, codec.reconstruct(st, *crop.shape[:2]))

    curve = np.array([point(plain, lv)[2:] for lv in np.arange(0.0, 8.01, 0.5)])      # bpp, PSNR
    for level in (3.0, 6.0):
        data, st, bpp, db = point(refined, level)
        assert np.array_equal(st["z"], point(plain, level)[1]["z"])   # the hyper-latent is left alone
        # more quality than its bits buy unrefined (measured: +0.025 dB at level 3, +0.16 dB at 6)
        assert db > np.interp(bpp, curve[:, 0], curve[:, 1]) + 0.01
        # the file is an ordinary one: the decoder gives the encoder's reconstruction
        pixels, _, _ = decode_bytes(data, pkg)
        assert np.array_equal(pixels, refined.reconstruct(st, *crop.shape[:2]))


def test_refinement_is_repeatable_and_off_by_default(crop):
    pkg = load_package("photo", "cpu", 2)
    a = Codec(pkg).analyse(crop)
    first = Codec(pkg, refine=5).code(a, 4.0)[0]
    assert Codec(pkg, refine=5).code(a, 4.0)[0] == first         # a fixed seed: the same file
    assert Codec(pkg).code(a, 4.0)[0] == Codec(pkg, refine=0).code(a, 4.0)[0] != first


def test_refinement_in_tiles_changes_only_what_it_may(monkeypatch):
    """A latent larger than a tile is refined tile by tile; the result stays finite and every tile
    moves (none is skipped)."""
    from aecompress import refine

    monkeypatch.setattr(refine, "TILE", 4)
    rng = np.random.default_rng(0)
    m, h, w = 3, 6, 9
    calls = []

    def graph(y, mean, scale, inv_gain, target, mask):
        calls.append((y.shape, mask.sum()))
        return [0.0, 0.0, np.sign(y - mean).astype(np.float32), np.zeros_like(y)]   # rate pulls to the mean

    y = rng.normal(size=(m, h, w)).astype(np.float32) * 3
    out = refine.refine(graph, y, np.zeros_like(y), np.ones_like(y), np.ones(m), np.zeros((3, 16 * h, 16 * w)),
                        16 * h - 5, 16 * w - 7, 0.01, steps=40)
    assert len(calls) == 40 * 2 * 3                   # 2 x 3 tiles, 40 steps each
    assert max(c[0][2] for c in calls) <= 4 + 2 * refine.MARGIN
    # the error counts over each tile's window inside the image (91 x 137 pixels), never on padding:
    # windows of rows 0-6 (91 pixels inside) and of columns 0-8, 0-9, 4-9 (128, 137, 73 pixels)
    assert sum(c[1] for c in calls[::40]) == 2 * 91 * (128 + 137 + 73)
    assert np.isfinite(out).all()
    assert (np.abs(out) < np.abs(y) - 0.05).mean() > 0.9          # every tile moved towards the mean


def test_rate_targets_hold_with_refinement(cat, monkeypatch):
    """A target's search runs unrefined, then its answer is refined: the target still holds, the
    refined file is kept only when it is the better one, and refinement really ran."""
    pkg = load_package("photo", "cpu", 2)
    pic = Picture(np.ascontiguousarray(cat[:128, :192]), "RGB", 8)
    plain, refined = Codec(pkg), Codec(pkg, refine=30)
    steps = []
    code = Codec.code

    def spy(self, *a, **k):
        steps.append(k.get("refine"))
        return code(self, *a, **k)

    monkeypatch.setattr(Codec, "code", spy)
    better = []
    for limit in (1200, 3500):
        e0 = encode_picture(pic, plain, target_size=limit)
        steps.clear()
        e1 = encode_picture(pic, refined, target_size=limit)
        assert 30 in steps and steps.count(30) <= 2 and steps.count(0) > 5    # searched unrefined, then refined
        assert len(e1.data) <= limit and len(e0.data) <= limit
        assert psnr(pic.pixels, e1.recon) >= psnr(pic.pixels, e0.recon)
        better.append(psnr(pic.pixels, e1.recon) - psnr(pic.pixels, e0.recon))
        # a refinement that was thrown away is said (it took seconds and changed nothing, silently)
        assert (REFINE_NOT_KEPT in e1.notes) == (e1.data == e0.data), (limit, e1.notes)
    # and refinement is worth something within a size (measured: +0.21 dB at 3500 bytes, 4/3 resolution with the package before)
    assert max(better) > 0.05
    for target in (31.0, 35.0):
        e0 = encode_picture(pic, plain, target_psnr=target)
        steps.clear()
        e2 = encode_picture(pic, refined, target_psnr=target)
        assert 30 in steps
        assert psnr(pic.pixels, e2.recon) >= target and len(e2.data) <= len(e0.data)
        assert (REFINE_NOT_KEPT in e2.notes) == (e2.data == e0.data), (target, e2.notes)
        # and what it returns is what the decoder makes of its file
        assert np.array_equal(decode_bytes(e2.data, pkg)[0], e2.recon)


def test_a_model_without_the_graph_encodes_unrefined_and_says_so(tmp_path, crop):
    src = load_package("photo").path
    copy = tmp_path / "photo"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("refine.onnx"))
    m = json.loads((copy / "manifest.json").read_text())
    del m["encoder"]["refine_graph"]
    (copy / "manifest.json").write_text(json.dumps(m))
    pkg = load_package(copy, "cpu", 2)
    assert pkg.model_id == load_package("photo").model_id
    enc = encode_picture(Picture(crop, "RGB", 8), Codec(pkg, refine=10), quality=50)
    base = encode_picture(Picture(crop, "RGB", 8), Codec(pkg), quality=50)
    assert enc.data == base.data
    assert any("no refinement graph" in n for n in enc.notes)
    m["encoder"]["refine_graph"] = "refine.onnx"          # named, but the file is not there
    (copy / "manifest.json").write_text(json.dumps(m))
    enc = encode_picture(Picture(crop, "RGB", 8), Codec(load_package(copy, "cpu", 2), refine=10), quality=50)
    assert enc.data == base.data
    assert any("refine.onnx is missing" in n for n in enc.notes)


def test_the_cli_refines_and_reports(tmp_path, cat):
    import subprocess
    import sys

    from PIL import Image

    src = tmp_path / "c.png"
    Image.fromarray(np.ascontiguousarray(cat[:128, :128])).save(src)
    out = {}
    for steps, q in ((0, 55), (0, 60), (15, 60)):
        dst = tmp_path / f"c{steps}_{q}.aez"
        p = subprocess.run([sys.executable, "-m", "aecompress", "encode", src, "-o", dst, "--refine", str(steps),
                            "--json", "-q", str(q)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        out[steps, q] = json.loads(p.stdout)
    # the refined file lies above the plain curve: more PSNR than its bits buy unrefined (measured:
    # 0.254 bpp 32.07 dB, where plain q55 gives 0.252 bpp 31.81 dB and q60 0.303 bpp 32.51 dB)
    (b0, p0), (b1, p1) = ((out[0, q]["bpp"], out[0, q]["psnr"]) for q in (55, 60))
    r = out[15, 60]
    assert b0 <= r["bpp"] < b1
    assert r["psnr"] > np.interp(r["bpp"], [b0, b1], [p0, p1]) + 0.05
    p = subprocess.run([sys.executable, "-m", "aecompress", "encode", src, "-o", tmp_path / "x.aez", "--refine", "-3"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "Traceback" not in p.stderr


torch = pytest.importorskip("torch")


def test_the_hand_written_gradients_match_autograd():
    from aecompress.train.conv import HyperpriorCodec
    from aecompress.train.layers import gaussian_likelihood
    from aecompress.train.refine import RefineGraph

    torch.manual_seed(0)
    codec = HyperpriorCodec(3, 8, 12, 8, 4, (0.01, 0.1)).double()
    for p in codec.g_s.parameters():                  # away from the initial identity-like GDNs
        p.data += 0.05 * torch.randn_like(p)
    graph = RefineGraph(codec.g_s).double()
    h, w = 3, 4
    y = (torch.randn(1, 12, h, w) * 2).double().requires_grad_(True)
    mean, scale = torch.randn(1, 12, h, w).double(), (torch.rand(1, 12, h, w) * 3 + 0.2).double()
    inv_gain = (torch.rand(1, 12, 1, 1) + 0.5).double()
    target = torch.rand(1, 3, 16 * h, 16 * w).double()
    mask = (torch.rand(1, 1, 16 * h, 16 * w) > 0.3).double()
    bits, sse, grad_bits, grad_sse = graph(y, mean, scale, inv_gain, target, mask)
    ref_bits = (-torch.log2(gaussian_likelihood(y, mean, scale))).sum()
    ref_sse = (((torch.clamp(codec.g_s(y * inv_gain), 0, 1) - target) * mask) ** 2).sum()
    assert torch.allclose(bits, ref_bits) and torch.allclose(sse, ref_sse)
    g_bits, = torch.autograd.grad(ref_bits, y)
    g_sse, = torch.autograd.grad(ref_sse, y)
    assert torch.allclose(grad_bits, g_bits, atol=1e-9) and torch.allclose(grad_sse, g_sse, atol=1e-9)


def test_adding_the_graph_to_a_package_keeps_its_id_and_matches_its_synthesis(tmp_path):
    from aecompress.train.refine import add_to_package, check_against_package

    copy = tmp_path / "photo"
    shutil.copytree(load_package("photo").path, copy, ignore=shutil.ignore_patterns("refine.onnx"))
    m = json.loads((copy / "manifest.json").read_text())
    del m["encoder"]["refine_graph"]
    (copy / "manifest.json").write_text(json.dumps(m))
    before = load_package(copy).model_id
    path = add_to_package(copy)
    assert load_package(copy).model_id == before
    assert load_package(copy).manifest["encoder"]["refine_graph"] == path.name
    assert check_against_package(copy, path) < 1e-5


def test_short_searches_use_the_short_schedule(crop, monkeypatch):
    """Below refine.SHORT_BELOW steps the codec searches with the short schedule (smaller steps,
    faster cooling), from there on with the shipped one; a schedule set on the codec wins."""
    from aecompress import refine

    assert refine.schedule_for(10) is refine.SHORT and refine.schedule_for(refine.SHORT_BELOW - 1) is refine.SHORT
    assert refine.schedule_for(refine.SHORT_BELOW) is refine.SCHEDULE and refine.schedule_for(50) is refine.SCHEDULE
    assert refine.SHORT.learning_rate < refine.SCHEDULE.learning_rate
    assert refine.SHORT.tau_decay > refine.SCHEDULE.tau_decay
    seen = []
    real = refine.Schedule.step_size                  # the schedule that really drives the search
    monkeypatch.setattr(refine.Schedule, "step_size", lambda self, t, n: seen.append(self) or real(self, t, n))
    pkg = load_package("photo", "cpu", 2)
    a = Codec(pkg).analyse(crop)
    custom = Codec(pkg, refine=3)
    custom.refine_schedule = refine.PREVIOUS
    for codec, want in ((Codec(pkg, refine=3), refine.SHORT), (Codec(pkg, refine=16), refine.SCHEDULE),
                        (custom, refine.PREVIOUS)):
        seen.clear()
        codec.code(a, 4.0)
        assert seen and all(s is want for s in seen)
