"""Denoising runtime and `aecompress denoise` on single files: shapes, modes, metadata, tiling, sigma, CLI.

Uses the shipped models/denoise package when it exists, else exports a randomly initialised network
with the training code (needs torch). Nothing here depends on the weights being good.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms
from typer.testing import CliRunner

from aecompress.errors import AecError
from aecompress.package import load_package

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "denoise"


def make_denoiser_package(root: Path) -> Path:
    """The shipped package, or (without one) an untrained export with random non-zero weights."""
    if (SHIPPED / "manifest.json").exists():
        return SHIPPED
    torch = pytest.importorskip("torch")
    from aecompress.train.denoiser import DenoiseNet, export_package

    torch.manual_seed(0)
    net = DenoiseNet()
    for p in net.out.parameters():
        torch.nn.init.normal_(p, std=0.01)
    return export_package(net, root / "denoise", measure=False)


@pytest.fixture(scope="session")
def pkg_dir(tmp_path_factory) -> Path:
    return make_denoiser_package(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def pkg(pkg_dir):
    return load_package(pkg_dir, device="cpu", threads=2)


@pytest.fixture
def env(pkg_dir, monkeypatch):
    monkeypatch.setenv("AECOMPRESS_MODELS", str(pkg_dir.parent))
    return {**os.environ, "AECOMPRESS_MODELS": str(pkg_dir.parent)}


def smooth_image(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    chans = [128 + 60 * np.sin(xx / (7 + 3 * k) + rng.uniform(0, 6)) * np.cos(yy / (9 + 2 * k)) for k in range(c)]
    return np.clip(np.stack(chans, axis=2), 0, 255).astype(np.uint8)


def noisy(a: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(a + rng.normal(0, sigma, a.shape)), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- runtime

@pytest.mark.parametrize("shape,dtype", [((37, 53, 3), np.uint8), ((40, 24), np.uint8), ((33, 31, 1), np.uint8),
                                         ((24, 40, 4), np.uint8), ((20, 30, 2), np.uint8), ((32, 32, 3), np.uint16)])
def test_denoise_array_keeps_shape_dtype_and_alpha(pkg, shape, dtype):
    from aecompress.denoise import denoise_array

    rng = np.random.default_rng(0)
    top = 65535 if dtype == np.uint16 else 255
    a = rng.integers(0, top + 1, size=shape).astype(dtype)
    out, info = denoise_array(a, pkg)
    assert out.shape == a.shape and out.dtype == a.dtype
    if a.ndim == 3 and a.shape[2] in (2, 4):
        assert np.array_equal(out[:, :, -1], a[:, :, -1])
    assert not np.array_equal(out, a)                    # the network really ran
    assert info["provider"] == "CPUExecutionProvider" and info["seconds"] > 0


def test_greyscale_is_the_mean_of_the_replicated_colour_run(pkg):
    from aecompress.denoise import denoise_array

    g = noisy(smooth_image(48, 40, 1), 20)
    out_g, _ = denoise_array(g, pkg, float_output=True)
    out_c, _ = denoise_array(np.repeat(g, 3, axis=2), pkg, float_output=True)
    assert out_g.shape == (48, 40, 1)
    np.testing.assert_allclose(out_g[:, :, 0], out_c.mean(axis=2), atol=1e-3)


def test_tiled_equals_untiled(pkg):
    from aecompress.denoise import denoise_array

    a = noisy(smooth_image(150, 170), 25)
    whole, info_w = denoise_array(a, pkg, tile=0, float_output=True)
    tiled, info_t = denoise_array(a, pkg, tile=32, float_output=True)
    assert info_w["tile"] is None and info_t["tile"] == 32
    assert np.abs(whole - tiled).max() < 0.02            # 0-255 scale: float rounding only, no seams
    u8_whole, _ = denoise_array(a, pkg, tile=0)
    u8_tiled, _ = denoise_array(a, pkg, tile=48)
    assert np.abs(u8_whole.astype(int) - u8_tiled).max() <= 1


def test_self_ensemble_averages_the_flipped_and_rotated_runs(pkg):
    from aecompress.denoise import denoise_array

    a = noisy(smooth_image(40, 56), 25)
    sess = pkg.session("denoise")
    x = a.transpose(2, 0, 1)[None].astype(np.float32) / 255
    # the eight symmetries of the square, each undone after the run (np.rot90/np.flip, independently
    # of the module's own views); x2 pairs the image with its mirror image
    views = [(lambda t, k=k, f=f: np.rot90(np.flip(t, 3) if f else t, k, axes=(2, 3)),
              lambda t, k=k, f=f: (lambda u: np.flip(u, 3) if f else u)(np.rot90(t, -k, axes=(2, 3))))
             for k in range(4) for f in (False, True)]
    for n, chosen in ((2, [views[0], views[1]]), (8, views)):
        want = np.mean([undo(sess(np.ascontiguousarray(do(x)))) for do, undo in chosen], axis=0)
        want = np.clip(want, 0, 1)[0].transpose(1, 2, 0) * 255
        got, info = denoise_array(a, pkg, tile=0, float_output=True, guard=False, ensemble=n)
        assert info["ensemble"] == n
        np.testing.assert_allclose(got, want, atol=2e-3)
    # tiles (their transposes change shape) join without seams, as a single run's do
    tiled, _ = denoise_array(a, pkg, tile=16, float_output=True, guard=False, ensemble=8)
    assert np.abs(tiled - got).max() < 0.02
    with pytest.raises(AecError, match="ensemble"):
        denoise_array(a, pkg, ensemble=3)


def test_self_ensemble_denoises_better(pkg):
    from aecompress.denoise import denoise_array
    from aecompress.metrics import psnr

    clean = smooth_image(96, 128, seed=3)
    a = noisy(clean, 25, seed=4)
    one, _ = denoise_array(a, pkg)
    eight, _ = denoise_array(a, pkg, ensemble=8)
    assert psnr(clean, eight) > psnr(clean, one) + 0.05


@pytest.mark.parametrize("sigma", [5, 15, 25, 40])
def test_sigma_estimate_in_ballpark(sigma):
    from aecompress.denoise import estimate_sigma

    clean = smooth_image(256, 256)
    est = estimate_sigma(noisy(clean, sigma, seed=sigma))
    assert abs(est - sigma) < 0.15 * sigma + 1.0
    assert estimate_sigma(clean) < 1.5
    a16 = (noisy(clean, sigma).astype(np.uint16) * 257)
    assert abs(estimate_sigma(a16) - est) < 0.5


def test_residual_limit_keeps_clean_images(pkg):
    from aecompress.denoise import RESIDUAL_LIMIT, denoise_array, estimate_sigma, limit_residual
    from aecompress.metrics import psnr

    clean = smooth_image(64, 80)
    wrecked = np.clip(clean.astype(np.int16) + np.random.default_rng(3).integers(-60, 61, clean.shape), 0, 255)
    out = wrecked.astype(np.uint8)
    f = limit_residual(clean, out, estimate_sigma(clean), 255.0)
    rms = np.sqrt(np.mean((clean.astype(float) - out) ** 2))
    assert f < 0.1 and rms <= RESIDUAL_LIMIT * max(estimate_sigma(clean), 0.5) + 0.6
    den, info = denoise_array(clean, pkg)
    assert info["residual_scale"] <= 1.0 and psnr(den, clean) > 40
    noisy_in = noisy(clean, 30)
    out2 = clean.copy()                      # removing exactly the noise is within the limit: untouched
    assert limit_residual(noisy_in, out2, 30.0, 255.0) == 1.0 and np.array_equal(out2, clean)


def test_sigma_auto_reports_estimate(pkg):
    from aecompress.denoise import denoise_array

    _, info = denoise_array(noisy(smooth_image(64, 64), 20), pkg, sigma="auto")
    assert 14 < info["sigma_estimate"] < 26
    _, info = denoise_array(smooth_image(64, 64), pkg, sigma=12)
    assert info["sigma"] == 12 and info["sigma_estimate"] is None


def test_denoise_array_rejects_bad_input(pkg):
    from aecompress.denoise import denoise_array
    from aecompress.errors import AecError

    with pytest.raises(AecError):
        denoise_array(np.zeros((8, 8, 3), np.float32), pkg)
    with pytest.raises(AecError):
        denoise_array(np.zeros((8, 8, 5), np.uint8), pkg)
    with pytest.raises(AecError):
        denoise_array(np.zeros((8, 8, 3), np.uint8), pkg, sigma="loud")


def test_manifest_describes_package(pkg):
    m = pkg.manifest
    assert m["kind"] == "denoiser" and m["graphs"] == {"denoise": "denoise.onnx"}
    assert m["receptive_radius"] > 0 and m["align"] == 8
    files = sorted(os.listdir(pkg.path))
    assert files == ["denoise.onnx", "manifest.json"]     # self-contained: no external weight files
    assert (pkg.path / "denoise.onnx").stat().st_size < 50 * 2**20


# ---------------------------------------------------------------- CLI, single files

def run_cli(args, env=None):
    from aecompress.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_cli_single_file_default_output_and_no_overwrite(tmp_path, env):
    src = tmp_path / "photo.png"
    Image.fromarray(noisy(smooth_image(40, 56), 20)).save(src)
    before = digest(src)
    r = run_cli(["denoise", src], env)
    assert r.exit_code == 0, r.output
    dst = tmp_path / "photo.denoised.png"
    assert dst.exists() and digest(src) == before
    assert "photo.denoised.png" in r.output
    first = digest(dst)
    r = run_cli(["denoise", src], env)                  # exists, no --force: refused, file untouched
    assert r.exit_code == 1 and digest(dst) == first
    r = run_cli(["denoise", src, "--force", "-o", tmp_path / "x.png"], env)
    assert r.exit_code == 0 and (tmp_path / "x.png").exists()


def test_cli_errors_are_one_line_without_traceback(tmp_path, env):
    cases = [
        ["denoise", tmp_path / "missing.png"],
        ["denoise", tmp_path, "--sigma", "loud"],
        ["denoise", tmp_path, "-m", "no-such-model"],
        ["denoise", tmp_path, "--ensemble", "3"],
    ]
    (tmp_path / "bad.png").write_bytes(b"not a png")
    cases.append(["denoise", tmp_path / "bad.png"])
    for args in cases:
        p = subprocess.run([sys.executable, "-m", "aecompress"] + [str(a) for a in args], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode != 0, args
        err = p.stderr.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1, (args, err)
        assert err.startswith("aecompress: error:"), err


def test_cli_keeps_format_size_mode_exif_icc(tmp_path, env):
    exif = Image.Exif()
    exif[0x010F] = "TestCam"                                # Make
    exif[0x0132] = "2024:01:02 03:04:05"                    # DateTime
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    grey_icc = icc[:16] + b"GRAY" + icc[20:]            # a greyscale image's profile names GRAY (PNG spec)
    rgb = noisy(smooth_image(48, 64), 15)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=92, exif=exif, icc_profile=icc)
    Image.fromarray(noisy(smooth_image(40, 36, 1), 15)[:, :, 0], "L").save(tmp_path / "b.png", icc_profile=grey_icc)
    rgba = np.concatenate([rgb, np.full((48, 64, 1), 200, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c.webp", lossless=True, exif=exif)
    Image.fromarray(rgb).save(tmp_path / "d.tiff")
    out = tmp_path / "out"
    r = run_cli(["denoise", tmp_path, "-o", out], env)
    assert r.exit_code == 0, r.output
    for name, fmt, mode, size, has_exif, has_icc in [
        ("a.jpg", "JPEG", "RGB", (64, 48), True, True), ("b.png", "PNG", "L", (36, 40), False, True),
        ("c.webp", "WEBP", "RGBA", (64, 48), True, False), ("d.tiff", "TIFF", "RGB", (64, 48), False, False),
    ]:
        with Image.open(out / name) as im:
            assert (im.format, im.mode, im.size) == (fmt, mode, size), name
            if has_exif:
                assert im.getexif().get(0x010F) == "TestCam", name
            if has_icc:
                assert im.info.get("icc_profile") == (grey_icc if mode == "L" else icc), name
            if mode == "RGBA":
                assert np.all(np.asarray(im)[:, :, 3] == 200)


def test_cli_reference_reports_psnr_ssim(tmp_path, env):
    from aecompress.metrics import psnr, ssim

    (tmp_path / "noisy" / "s").mkdir(parents=True)
    (tmp_path / "clean" / "s").mkdir(parents=True)
    for i in range(2):
        clean = smooth_image(40, 48, seed=i)
        Image.fromarray(clean).save(tmp_path / "clean" / "s" / f"{i}.png")
        Image.fromarray(noisy(clean, 25, seed=i)).save(tmp_path / "noisy" / "s" / f"{i}.png")
    r = run_cli(["denoise", tmp_path / "noisy", "-r", "-o", tmp_path / "out", "--reference", tmp_path / "clean",
                 "--json"], env)
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.stdout.strip().splitlines()]
    results, summary = lines[:-1], lines[-1]["summary"]
    assert len(results) == 2 and summary["done"] == 2
    for res in results:
        rel = Path(res["input"]).relative_to(tmp_path / "noisy")
        assert Path(res["output"]) == tmp_path / "out" / rel
        out = np.asarray(Image.open(tmp_path / "out" / rel))
        clean = np.asarray(Image.open(tmp_path / "clean" / rel))
        assert res["psnr"] == pytest.approx(psnr(out, clean), abs=1e-3)
        assert res["ssim"] == pytest.approx(ssim(out, clean), abs=1e-4)
        assert res["psnr_input"] == pytest.approx(psnr(np.asarray(Image.open(res["input"])), clean), abs=1e-3)
    assert summary["mean_psnr"] == pytest.approx(np.mean([x["psnr"] for x in results]), abs=1e-3)


def test_cli_keeps_cmyk_palette_tiff_compression_and_dpi(tmp_path, env):
    """Sources whose mode the denoiser does not work in come back in their own mode; a TIFF's
    layout tags (CMYK, float samples) never land on an output they contradict."""
    rgb = noisy(smooth_image(48, 64), 15)
    im = Image.fromarray(rgb)
    im.convert("CMYK").save(tmp_path / "cmyk.tif", compression="tiff_lzw", dpi=(300, 300))
    im.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=92)
    im.convert("F").save(tmp_path / "float.tif")
    im.quantize(32).save(tmp_path / "pal.png")
    im.save(tmp_path / "dpi.jpg", dpi=(200, 200))
    out = tmp_path / "out"
    r = run_cli(["denoise", tmp_path, "-o", out], env)
    assert r.exit_code == 0, r.output
    for name, mode in [("cmyk.tif", "CMYK"), ("cmyk.jpg", "CMYK"), ("float.tif", "L"), ("pal.png", "P"),
                       ("dpi.jpg", "RGB")]:
        with Image.open(out / name) as o, Image.open(tmp_path / name) as src:
            o.load()                                        # a contradictory tag would fail here
            assert (o.mode, o.size, o.format) == (mode, src.size, src.format), name
            if name == "pal.png":
                assert o.getpalette() == src.getpalette()
    with Image.open(out / "cmyk.tif") as o:
        assert o.info["compression"] == "tiff_lzw" and tuple(map(round, o.info["dpi"])) == (300, 300)
    with Image.open(out / "dpi.jpg") as o:
        assert tuple(map(round, o.info["dpi"])) == (200, 200)


def test_icc_profile_of_another_colour_space_is_not_written(tmp_path):
    """An RGB output never carries a CMYK (or greyscale) profile."""
    from aecompress.imageio import save_image

    cmyk_like = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    cmyk_like[16:20] = b"CMYK"
    save_image(tmp_path / "a.png", smooth_image(16, 16), icc=bytes(cmyk_like))
    assert "icc_profile" not in Image.open(tmp_path / "a.png").info
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    save_image(tmp_path / "b.png", smooth_image(16, 16), icc=srgb)
    assert Image.open(tmp_path / "b.png").info["icc_profile"] == srgb


def test_cli_reference_problems_are_warnings_not_failures(tmp_path, env):
    """The outputs are written and good: a missing, unreadable or mismatched reference only means
    they are not scored (no failure counted, exit 0), and every case is said."""
    (tmp_path / "in").mkdir()
    (tmp_path / "ref").mkdir()
    for i, name in enumerate(["ok.png", "small.png", "junk.png", "grey.png", "none.png"]):
        clean = smooth_image(40, 48, seed=i)
        Image.fromarray(noisy(clean, 20, seed=i)).save(tmp_path / "in" / name)
        if name == "ok.png":
            Image.fromarray(clean).save(tmp_path / "ref" / name)
        elif name == "small.png":
            Image.fromarray(clean[:20, :20]).save(tmp_path / "ref" / name)
        elif name == "junk.png":
            (tmp_path / "ref" / name).write_bytes(b"junk")
        elif name == "grey.png":
            Image.fromarray(clean[:, :, 0]).save(tmp_path / "ref" / name)
    p = subprocess.run([sys.executable, "-m", "aecompress", "denoise", str(tmp_path / "in"), "-o",
                        str(tmp_path / "out"), "--reference", str(tmp_path / "ref")], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "5 denoised, 0 skipped, 0 failed" in p.stdout and "1 of 5 scored against a reference" in p.stdout
    assert len(list((tmp_path / "out").iterdir())) == 5
    warnings = [x for x in p.stderr.splitlines() if x.startswith("aecompress: warning:")]
    assert len(warnings) == 4 and "Traceback" not in p.stderr
    assert any("none.png" in w and "no reference" in w for w in warnings)
    assert any("greyscale" in w and "grey.png" in w for w in warnings)


def test_cli_sigma_auto_json(tmp_path, env):
    Image.fromarray(noisy(smooth_image(64, 64), 20)).save(tmp_path / "n.png")
    r = run_cli(["denoise", tmp_path / "n.png", "--sigma", "auto", "--json"], env)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout.splitlines()[0])
    assert 14 < res["sigma_estimate"] < 26
    # a --sigma the blind model does not use is said under --json too (notes go to standard error,
    # as the README says), and standard output stays JSON
    p = subprocess.run([sys.executable, "-m", "aecompress", "denoise", str(tmp_path / "n.png"), "-o",
                        str(tmp_path / "m.png"), "--sigma", "10", "--json"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "--sigma 10 is not used" in p.stderr, p.stderr
    assert [json.loads(x) for x in p.stdout.splitlines()][-1]["summary"]["done"] == 1


def test_cli_ensemble_reaches_the_model(tmp_path, env, pkg):
    from aecompress.denoise import denoise_array

    a = noisy(smooth_image(64, 64), 20)
    Image.fromarray(a).save(tmp_path / "n.png")
    for n in (1, 8):
        r = run_cli(["denoise", tmp_path / "n.png", "-o", tmp_path / f"x{n}.png", "--ensemble", str(n)], env)
        assert r.exit_code == 0, r.output
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"x{n}.png")), denoise_array(a, pkg, ensemble=n)[0])
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "x1.png")), np.asarray(Image.open(tmp_path / "x8.png")))


def test_cli_keeps_16_bit_colour(tmp_path, env):
    """A 16-bit colour PNG and TIFF (which Pillow holds only as 8-bit) are denoised at 16 bits and
    written back 16-bit: finer than 8-bit steps, closer to the clean image than the noisy one."""
    from aecompress.imageio import read_image, save_image

    clean = smooth_image(48, 64).astype(np.uint16) * 257 + 100
    noise = np.random.default_rng(4).normal(0, 20 * 257, clean.shape)
    dirty = np.clip(np.round(clean + noise), 0, 65535).astype(np.uint16)
    for name in ("n.png", "n.tif"):
        save_image(tmp_path / name, dirty, source={"compression": "tiff_adobe_deflate"})
    r = run_cli(["denoise", tmp_path / "n.png", tmp_path / "n.tif", "-o", tmp_path / "out"], env)
    assert r.exit_code == 0, r.output
    for name in ("n.png", "n.tif"):
        pic = read_image(tmp_path / "out" / name)
        assert pic.bits == 16 and pic.mode == "RGB" and pic.pixels.shape == dirty.shape, name
        assert np.any(pic.pixels % 257 != 0), name           # not 8-bit values widened
        err = lambda a: float(np.mean((a.astype(np.float64) - clean) ** 2))  # noqa: E731
        assert err(pic.pixels) < err(dirty) / 2, name
    with Image.open(tmp_path / "out" / "n.tif") as im:
        assert im.info["compression"] == "tiff_adobe_deflate"


def test_folder_scans_pick_up_avif_and_jfif(tmp_path, env):
    from PIL import features

    img = Image.fromarray(noisy(smooth_image(32, 48), 10))
    img.save(tmp_path / "a.jfif", format="JPEG", quality=90)
    names = ["a.jfif"]
    if features.check("avif"):
        img.save(tmp_path / "b.avif", quality=90)
        names.append("b.avif")
    (tmp_path / "notes.txt").write_text("not an image")
    r = run_cli(["denoise", tmp_path, "-o", tmp_path / "out", "--json"], env)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names
    assert Image.open(tmp_path / "out" / "a.jfif").format == "JPEG"


def test_reference_of_another_bit_depth_is_scored_on_the_8_bit_scale(tmp_path, env):
    from aecompress.imageio import save_image
    from aecompress.metrics import psnr

    clean = smooth_image(40, 48)
    (tmp_path / "in").mkdir()
    (tmp_path / "ref").mkdir()
    Image.fromarray(clean).save(tmp_path / "ref" / "a.png")
    save_image(tmp_path / "in" / "a.png", noisy(clean, 20).astype(np.uint16) * 257)
    r = run_cli(["denoise", tmp_path / "in", "-o", tmp_path / "out", "--reference", tmp_path / "ref", "--json"], env)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout.splitlines()[0])
    from aecompress.imageio import read_image
    from aecompress.rgb16 import narrow

    out = narrow(read_image(tmp_path / "out" / "a.png").pixels)       # the 16-bit output, rounded to 8 bits
    assert res["psnr"] == pytest.approx(psnr(out, clean), abs=0.05) and res["psnr"] > res["psnr_input"]


def test_quality_option_sets_lossy_outputs(tmp_path, env):
    """-q sets the quality of lossy outputs; without it a JPEG keeps its own tables."""
    img = Image.fromarray(noisy(smooth_image(48, 64), 10))
    img.save(tmp_path / "a.jpg", quality=40, subsampling=0)
    img.save(tmp_path / "b.webp", quality=90)
    for args, out in [([], "keep"), (["-q", "90"], "q90")]:
        r = run_cli(["denoise", tmp_path / "a.jpg", tmp_path / "b.webp", "-o", tmp_path / out, *args], env)
        assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "a.jpg") as src, Image.open(tmp_path / "keep" / "a.jpg") as keep, \
            Image.open(tmp_path / "q90" / "a.jpg") as q90:
        assert keep.quantization == src.quantization
        assert sum(q90.quantization[0]) < sum(src.quantization[0]) / 2           # finer steps
        from PIL import JpegImagePlugin
        assert JpegImagePlugin.get_sampling(q90) == 0                           # subsampling kept
    assert (tmp_path / "q90" / "b.webp").stat().st_size < (tmp_path / "keep" / "b.webp").stat().st_size
    r = run_cli(["denoise", tmp_path / "a.jpg", "-q", "0"], env)
    assert r.exit_code != 0


def _with_manifest(pkg, **changes):
    from aecompress.package import ModelPackage

    return ModelPackage(pkg.path, {**pkg.manifest, **changes}, "cpu", 2)


def test_residual_gain_removes_its_share_of_the_residual(pkg):
    from aecompress.denoise import denoise_array, estimate_sigma, residual_gain

    clean = smooth_image(96, 128, seed=5)
    x = noisy(clean, 6, seed=1)
    plain = _with_manifest(pkg, residual_gain=None)
    half = _with_manifest(pkg, residual_gain={"sigma": [0.0, 100.0], "gain": [0.5, 0.5]})
    ramp = _with_manifest(pkg, residual_gain={"sigma": [0.0, 10.0], "gain": [0.2, 1.0]})
    est = estimate_sigma(x)
    assert residual_gain(plain, est) == 1.0
    assert residual_gain(ramp, est) == pytest.approx(0.2 + 0.08 * est) and residual_gain(ramp, 50) == 1.0
    full, info1 = denoise_array(x, plain, float_output=True)
    out, info = denoise_array(x, half, float_output=True)
    # half of what the network removes, before rounding (the residual limit is not reached here)
    assert info1["residual_scale"] == 1.0 and info["residual_scale"] == 0.5
    assert np.allclose(out, x + 0.5 * (full - x), atol=1e-3)
    out8, _ = denoise_array(x, half)
    assert np.abs(out8.astype(float) - (x + 0.5 * (full - x))).max() <= 0.5 + 1e-3
    # greyscale images take the same share
    g = x[:, :, :1]
    gf, _ = denoise_array(g, plain, float_output=True)
    gh, _ = denoise_array(g, half, float_output=True)
    assert np.allclose(gh, g + 0.5 * (gf - g), atol=1e-3)


@pytest.mark.parametrize("bad", [{"sigma": [0, 5], "gain": [0.5]}, {"sigma": [5, 0], "gain": [0.5, 1]},
                                 {"sigma": [0, 5], "gain": [0.0, 1]}, {"sigma": [0, 5], "gain": [0.5, 1.5]},
                                 [0.5], {"sigma": [0, "x"], "gain": [0.5, 1]}])
def test_a_malformed_residual_gain_is_a_malformed_manifest(bad):
    from aecompress.package import manifest_problem

    m = {"kind": "denoiser", "graphs": {"denoise": "denoise.onnx"}}
    assert manifest_problem(m) is None
    assert "residual_gain" in manifest_problem({**m, "residual_gain": bad})


def test_the_gain_curve_fit_recovers_a_known_curve():
    from aecompress.train.residual_gain import KNOTS, fit_curve

    rng = np.random.default_rng(0)
    s = rng.uniform(0, 40, 3000)
    true = np.interp(s, [0, 10, 20], [0.6, 0.9, 1.0])
    den = rng.uniform(1e3, 1e4, s.size)
    num = true * den * (1 + 0.05 * rng.standard_normal(s.size))     # <n, r> = g <r, r>, noisy
    g = fit_curve(s, num, den)
    assert np.all(np.diff(g) >= 0) and g.max() <= 1.0
    assert np.allclose(g, np.interp(KNOTS, [0, 10, 20], [0.6, 0.9, 1.0]), atol=0.03)
    # a network that removes exactly the noise everywhere gets no curve to speak of
    assert np.allclose(fit_curve(s, den.copy(), den), 1.0)
    # knots no crop came near take their neighbours' value, not an arbitrary one
    some = s > 5
    g = fit_curve(s[some], num[some], den[some])
    assert np.allclose(g[:2], g[2], atol=1e-6) and abs(g[2] - 0.72) < 0.03      # knot 4 still sees s in (5, 6)


def test_residual_gain_tool_writes_a_package_with_the_curve(pkg_dir, tmp_path):
    pytest.importorskip("torch")
    from aecompress.denoise import denoise_array
    from aecompress.train import residual_gain

    data = tmp_path / "photos"
    data.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(80, 96, seed=10 + i)).save(data / f"wiki_{i:03d}.png")
    Image.fromarray(smooth_image(80, 96, seed=20)).save(data / "bsds_000.png")      # not a clean reference
    out = tmp_path / "tuned"
    residual_gain.main([str(pkg_dir), str(out), "--data", str(data), "--samples", "12", "--crop", "64",
                        "--threads", "1", "--val", str(tmp_path / "none")])
    m = json.loads((out / "manifest.json").read_text())
    curve = m["residual_gain"]
    assert curve["sigma"] == list(residual_gain.KNOTS) and all(0 < g <= 1 for g in curve["gain"])
    assert curve["gain"] == sorted(curve["gain"])
    assert m["training"]["residual_gain_fit"]["images"] == 2 and m["training"]["residual_gain_fit"]["crops"] == 12
    for f in pkg_dir.iterdir():                     # the network is the same file
        if f.name != "manifest.json":
            assert (out / f.name).read_bytes() == f.read_bytes()
    tuned = load_package(out, device="cpu", threads=1)
    den, info = denoise_array(noisy(smooth_image(64, 64), 10), tuned)
    assert den.shape == (64, 64, 3) and 0 < info["residual_scale"] <= 1
    with pytest.raises(SystemExit):                 # an existing output is not replaced without --force
        residual_gain.main([str(pkg_dir), str(out), "--data", str(data), "--val", str(tmp_path / "none")])


def test_an_output_named_for_another_format_is_written_in_it(tmp_path, env):
    """`denoise scan.png -o scan.jpg` writes a JPEG, as decode does (it used to write PNG bytes under
    the .jpg name); a name no writer knows is refused before the work; folder outputs keep the
    input's own format whatever its extension says."""
    a = noisy(smooth_image(48, 64), 10)
    Image.fromarray(a).save(tmp_path / "n.png")
    Image.fromarray(np.dstack([a, np.full(a.shape[:2], 200, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray((smooth_image(48, 64, c=1)[:, :, 0].astype(np.uint16) * 257)).save(tmp_path / "g16.png")
    Image.fromarray(a).save(tmp_path / "misnamed.jpg", format="PNG")
    for src, dst, fmt, mode in [("n.png", "n.jpg", "JPEG", "RGB"), ("rgba.png", "rgba.jpg", "JPEG", "RGB"),
                                ("g16.png", "g16.jpg", "JPEG", "L"), ("g16.png", "g16.tif", "TIFF", "I;16"),
                                ("n.png", "n.webp", "WEBP", "RGB"), ("n.png", "n.PNG", "PNG", "RGB")]:
        r = run_cli(["denoise", tmp_path / src, "-o", tmp_path / "out" / dst], env)
        assert r.exit_code == 0, (dst, r.output)
        with Image.open(tmp_path / "out" / dst) as im:
            assert (im.format, im.mode, im.size) == (fmt, mode, (64, 48)), dst
    r = run_cli(["denoise", tmp_path / "n.png", "-o", tmp_path / "n.xyz"], env)
    assert r.exit_code == 1 and "unknown image format '.xyz'" in r.output
    assert not (tmp_path / "n.xyz").exists()
    r = run_cli(["denoise", tmp_path / "misnamed.jpg", "-o", f"{tmp_path / 'mirror'}/"], env)   # a folder: kept as is
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "mirror" / "misnamed.jpg") as im:
        assert im.format == "PNG"


def test_cli_output_names_for_one_file(tmp_path, env):
    """-o NAME/ is a folder even when NAME is a file (the trailing slash was dropped, and --force
    replaced the file); -o NAME without an extension is a file in the input's format, as for
    encode and decode (it was a folder)."""
    src = tmp_path / "photo.png"
    Image.fromarray(noisy(smooth_image(40, 56), 20)).save(src)
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"keep me")
    r = run_cli(["denoise", src, "-o", f"{victim}/", "--force"], env)
    assert r.exit_code == 1 and "names a folder, and" in str(r.exception) and victim.read_bytes() == b"keep me"
    r = run_cli(["denoise", src, "-o", tmp_path / "plain"], env)
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "plain") as im:
        assert (tmp_path / "plain").is_file() and im.format == "PNG" and im.size == (56, 40)
    r = run_cli(["denoise", src, "-o", f"{tmp_path / 'into'}/"], env)
    assert r.exit_code == 0 and (tmp_path / "into" / "photo.png").is_file()


def test_cli_json_with_a_reference_equal_to_the_input_is_strict(tmp_path, env):
    """A clean input scored against itself has an infinite PSNR: null in --json (it printed Infinity)."""
    src = tmp_path / "in" / "photo.png"
    src.parent.mkdir()
    Image.fromarray(smooth_image(40, 56)).save(src)
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "photo.png").write_bytes(src.read_bytes())
    p = subprocess.run([sys.executable, "-m", "aecompress", "denoise", str(src), "-o", str(tmp_path / "o.png"),
                        "--reference", str(ref), "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    objs = [json.loads(line, parse_constant=lambda c: pytest.fail(f"not JSON: {c}")) for line in p.stdout.splitlines()]
    assert objs[0]["psnr_input"] is None and objs[0]["psnr"] > 30
    assert objs[1]["summary"]["mean_psnr_input"] is None


def test_cli_notes_what_reading_changed(tmp_path, env):
    """A 32-bit integer TIFF is written back as 16 bits, scaled: said on stderr and in --json."""
    src = tmp_path / "wide.tif"
    Image.fromarray((smooth_image(40, 56)[:, :, 0].astype(np.int32) * 700), "I").save(src)
    p = subprocess.run([sys.executable, "-m", "aecompress", "denoise", str(src), "-o", str(tmp_path / "o.tif"),
                        "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert f"aecompress: note: {src}: 32-bit integer samples scaled to 16 bits" in p.stderr
    assert "scaled to 16 bits" in json.loads(p.stdout.splitlines()[0])["notes"][0]


def test_cli_skip_existing_leaves_a_link_that_leads_nowhere(tmp_path, env):
    """An output name taken by a dangling link is an existing output: --skip-existing leaves it, as
    encode and decode do (denoise failed with 'exists'); --quiet prints no notes."""
    src = tmp_path / "wide.tif"
    Image.fromarray((smooth_image(40, 56)[:, :, 0].astype(np.int32) * 700), "I").save(src)
    link = tmp_path / "out.tif"
    link.symlink_to(tmp_path / "nowhere" / "x.tif")
    r = run_cli(["denoise", src, "-o", link, "--skip-existing"], env)
    assert r.exit_code == 0 and "skipped" in r.output and link.is_symlink() and not link.exists(), r.output
    p = subprocess.run([sys.executable, "-m", "aecompress", "denoise", str(src), "-o", str(tmp_path / "q.tif"),
                        "--quiet"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stderr == "" and p.stdout == "", p.stderr
