"""bench/rd.py --merge: runs on disjoint images combine into the result of one run on all of them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rd():
    spec = importlib.util.spec_from_file_location("bench_rd", ROOT / "bench" / "rd.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SETTINGS = {"ours": [10, 30, 50, 70, 90], "ours-refine50": [10, 30, 50, 70, 90], "WEBP": [20, 40, 60, 80, 95]}


def fake_rows(seed: int, n: int) -> dict:
    """Per-image points of n images: each codec a rising curve, ours a little cheaper than WebP."""
    rng = np.random.default_rng(seed)
    rows = {}
    for c, qs in SETTINGS.items():
        cheaper = {"ours": 0.95, "ours-refine50": 0.85, "WEBP": 1.0}[c]
        rows[c] = {}
        for k, q in enumerate(qs):
            pts = []
            for _ in range(n):
                bpp = 0.1 * 2 ** k * cheaper * rng.uniform(0.9, 1.1)
                pts.append({"bpp": bpp, "psnr": 26 + 3 * np.log2(bpp / 0.1 / cheaper) + rng.normal(0, 0.05),
                            "ms_ssim": 1 - 0.1 * 0.7 ** k})
            rows[c][q] = pts
    return rows


def run_json(rd, rows: dict, names: list[str], model_id: str = "abcd") -> dict:
    codecs = list(SETTINGS)
    curves, bd, bd_refined = rd.summarise(rows, SETTINGS, codecs, "ours-refine50", len(names))
    proc = {"encode_s": 0.5, "encode_quiet_s": 0.4, "decode_s": 0.5, "total_s": 1.0, "quiet_total_s": 0.9}
    return {"folder": "photos", "images": names, "model": "photo", "model_name": "photo", "model_id": model_id,
            "machine": "x", "curves": curves, "bd_rate_vs": bd,
            "seconds_per_image": {c: {"encode": 1.0 + i, "decode": 0.1} for i, c in enumerate(codecs)},
            "whole_process_768x512": proc, "refine_steps": 50, "refined": "ours-refine50",
            "bd_rate_of_refined_vs": bd_refined,
            "per_image": {c: {str(q): lst for q, lst in rows[c].items()} for c in codecs}}


def test_merge_equals_one_run_on_all_images(rd, tmp_path):
    a, b = fake_rows(1, 3), fake_rows(2, 2)
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(run_json(rd, a, ["p1", "p3", "p5"])))
    pb.write_text(json.dumps(run_json(rd, b, ["p2", "p4"])))
    merged = rd.merge([pa, pb])
    both = {c: {q: a[c][q] + b[c][q] for q in qs} for c, qs in SETTINGS.items()}
    one = run_json(rd, both, ["p1", "p3", "p5", "p2", "p4"])
    assert merged["images"] == one["images"]
    for c in SETTINGS:
        for p, q in zip(merged["curves"][c], one["curves"][c]):
            assert p == pytest.approx(q)
    assert merged["bd_rate_vs"]["WEBP"]["psnr"] == pytest.approx(one["bd_rate_vs"]["WEBP"]["psnr"])
    assert merged["bd_rate_vs"]["WEBP"]["psnr"] < 0
    refined = merged["bd_rate_of_refined_vs"]["WEBP"]
    assert refined["psnr"] == pytest.approx(one["bd_rate_of_refined_vs"]["WEBP"]["psnr"])
    assert refined["psnr_per_image"]["images"] == 5
    assert merged["seconds_per_image"]["ours"]["encode"] == pytest.approx(1.0)
    assert len(merged["whole_process_768x512"]) == 2

    # without per-image points (runs from before they were stored) the averaged curves are the same
    for p in (pa, pb):
        d = json.loads(p.read_text())
        del d["per_image"]
        p.write_text(json.dumps(d))
    old = rd.merge([pa, pb])
    for c in SETTINGS:
        for p, q in zip(old["curves"][c], one["curves"][c]):
            assert p == pytest.approx(q)
    assert old["bd_rate_vs"]["WEBP"]["psnr"] == pytest.approx(one["bd_rate_vs"]["WEBP"]["psnr"])
    assert old["bd_rate_vs"]["WEBP"]["psnr_per_image"] is None


def test_merge_refuses_overlapping_or_mismatched_runs(rd, tmp_path):
    pa, pb, pc = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    pa.write_text(json.dumps(run_json(rd, fake_rows(1, 2), ["p1", "p2"])))
    pb.write_text(json.dumps(run_json(rd, fake_rows(2, 2), ["p2", "p3"])))
    pc.write_text(json.dumps(run_json(rd, fake_rows(3, 1), ["p9"], model_id="ffff")))
    with pytest.raises(SystemExit, match="more than one run"):
        rd.merge([pa, pb])
    with pytest.raises(SystemExit, match="model_id"):
        rd.merge([pa, pc])


@pytest.mark.parametrize("script, args, words", [
    ("rd.py", ["{tmp}/nosuch"], "no such folder"),
    ("rd.py", ["{tmp}/empty"], "no images in"),
    ("rd.py", ["{tmp}/broken"], "none of the 2 images in"),
    ("denoise.py", ["--data", "{tmp}/empty"], "no images in"),
    ("denoise.py", ["{tmp}/broken"], "none of the 2 images in"),
    ("denoise.py", ["--data", "{tmp}/empty", "--methods", "foo"], "unknown method foo"),
    ("rd.py", ["{tmp}/other"], "no images of the kinds it takes (.bmp, .jpeg, .jpg, .png) in"),
    ("denoise.py", ["{tmp}/other"], "no images of the kinds it takes (.bmp, .jpeg, .jpg, .png, .tif, .tiff) in"),
    ("speed.py", ["--runs", "0"], "--runs must be at least 1"),
    ("large.py", ["--size", "abc"], "use WIDTHxHEIGHT"),
])
def test_benchmark_mistakes_are_one_error_line(tmp_path, script, args, words):
    """A missing or empty folder, a folder of damaged images only, an unknown method, a bad number:
    the error line, not a traceback (or a run of NaN figures written as results, for an empty folder)."""
    import subprocess
    import sys

    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "cut.png").write_bytes(PNG_CUT)
    (tmp_path / "broken" / "text.jpg").write_text("not a picture\n")
    from PIL import Image

    (tmp_path / "other").mkdir()                 # images, none of a kind the script measures
    Image.new("RGB", (16, 16)).save(tmp_path / "other" / "a.webp")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / script), *[a.format(tmp=tmp_path) for a in args],
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"{script}: error: ") and words in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def _png_cut() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


PNG_CUT = _png_cut()                        # a PNG cut short: Pillow opens it, reading its pixels fails


def test_rd_measures_each_image_as_the_cli_does(rd, tmp_path, photo_codec):
    """A greyscale PNG was coded as colour and measured in RGB: ours 0.1-0.2 dB below the PSNR of the
    greyscale file `aecompress decode` writes (the chroma errors the decoder's mean removes were
    counted), and the peers coded it as a colour image (JPEG about 5% more bits than cjpeg's
    greyscale file). Every codec now sees the pixels `aecompress encode` codes, and a greyscale image
    is measured in grey: ours gives exactly the CLI's bytes and figures, JPEG a greyscale JPEG's bytes."""
    import io

    from PIL import Image

    from aecompress.compress import encode_picture, quality_report
    from aecompress.imageio import read_image
    from tests.conftest import smooth_image

    grey = smooth_image(40, 48, seed=3, channels=1)[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    rgba = np.concatenate([smooth_image(40, 48, seed=4), np.full((40, 48, 1), 90, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    settings = {"ours": [10, 60], "JPEG": [50]}
    for name in ("grey.png", "rgba.png"):
        pts, _ = rd.measure_image(tmp_path / name, photo_codec, {"ours": photo_codec}, ["JPEG"], settings)
        pic = read_image(tmp_path / name)
        for q in settings["ours"]:
            enc = encode_picture(pic, photo_codec, quality=q)
            assert pts["ours"][q]["bpp"] == len(enc.data) * 8 / (40 * 48)
            assert (pts["ours"][q]["psnr"], pts["ours"][q]["ms_ssim"]) == pytest.approx(quality_report(enc, pic.mode))
    grey_pts, _ = rd.measure_image(tmp_path / "grey.png", photo_codec, {}, ["JPEG"], settings)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "JPEG", quality=50, optimize=True)
    assert grey_pts["JPEG"][50]["bpp"] == len(buf.getvalue()) * 8 / (40 * 48)


def test_rd_skips_what_it_cannot_measure(rd, tmp_path, capsys, photo_codec):
    """A damaged file ended the whole run at its turn (`rd.py: error: ...`), and an image a codec
    reproduces exactly (a flat one: JPEG and WebP at any quality) put an infinite PSNR into the
    averaged curves: `inf` in the table, Infinity in rd.json (not JSON) and a crash drawing the plot.
    Each is now named with its reason and left out; the others are measured."""
    from PIL import Image

    from tests.conftest import smooth_image

    (tmp_path / "a_cut.png").write_bytes(PNG_CUT)
    Image.new("RGB", (32, 24), (128, 128, 128)).save(tmp_path / "b_flat.png")
    Image.fromarray(smooth_image(24, 32)).save(tmp_path / "c_photo.png")
    files = sorted(tmp_path.glob("*.png"))
    settings = {"JPEG": [20, 95], "WEBP": [50]}
    rows, times, done, skipped = rd.measure_all(files, photo_codec, {}, ["JPEG", "WEBP"], settings)
    assert [f.name for f in done] == ["c_photo.png"]
    assert set(skipped) == {"a_cut.png", "b_flat.png"}
    assert "cannot read image" in skipped["a_cut.png"] and "reproduces it exactly" in skipped["b_flat.png"]
    assert all(len(lst) == 1 and np.isfinite(lst[0]["psnr"]) for c in rows for lst in rows[c].values())
    err = capsys.readouterr().err
    assert "skipping" in err and "a_cut.png" in err and "b_flat.png" in err


def test_denoise_bench_takes_a_users_folder(tmp_path):
    """bench/denoise.py FOLDER was refused (only --data took a folder); a damaged file stopped the
    run; and a greyscale image was read as three equal channels and given colour noise, a different
    and easier image (about 2.6 dB more for ours on a 200x160 photo) than the noisy greyscale file
    `aecompress denoise` would get. Now: the folder as an argument, the damaged file named and left out
    (in denoise.json too), and grey noise on a grey image, measured as `aecompress denoise` gives it."""
    import sys

    from PIL import Image

    from aecompress.denoise import denoise_array
    from aecompress.metrics import psnr
    from aecompress.package import DEFAULT_DENOISER, load_package
    from tests.conftest import smooth_image

    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("bench_denoise", ROOT / "bench" / "denoise.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    grey = smooth_image(40, 48, seed=5, channels=1)
    Image.fromarray(grey[:, :, 0]).save(tmp_path / "grey.png")
    (tmp_path / "cut.png").write_bytes(PNG_CUT)
    (tmp_path / "notes.txt").write_text("not an image\n")
    res = mod.main([str(tmp_path), "--methods", "ours", "--sigmas", "25", "--out", str(tmp_path / "out")])
    assert res["images"] == ["grey.png"] and list(res["skipped"]) == ["cut.png"]
    noisy = mod.add_noise(grey, 25, mod.noise_seed("grey.png", 25))          # one channel of noise
    cli = denoise_array(noisy[:, :, 0], load_package(DEFAULT_DENOISER, device="cpu"))[0]
    assert res["results"]["25"]["ours"]["psnr"] == round(psnr(cli, grey[:, :, 0]), 3)
    assert json.loads((tmp_path / "out" / "denoise.json").read_text())["skipped"] == res["skipped"]


def test_denoise_bench_keeps_fractional_sigmas_apart():
    """--sigmas 15 15.5: sigma 15.5's figures overwrote sigma 15's row (both keyed and seeded as 15)."""
    import sys

    sys.path.insert(0, str(ROOT / "bench"))             # it imports speed.py beside it, as when run
    spec = importlib.util.spec_from_file_location("bench_denoise", ROOT / "bench" / "denoise.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.noise_seed("a.png", 15) == mod.noise_seed("a.png", 15.0) != mod.noise_seed("a.png", 15.5)
    assert mod.noise_seed("a.png", 25) == 25 * 1_000_003 + __import__("zlib").crc32(b"a.png")    # earlier runs' seeds


def test_speed_bench_crops_without_stretching(tmp_path):
    """A 500x500 photo was stretched to 768x512; it is scaled up keeping its shape, then cropped."""
    from PIL import Image

    spec = importlib.util.spec_from_file_location("bench_speed", ROOT / "bench" / "speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    grid = np.zeros((500, 500, 3), np.uint8)
    grid[::50] = 255                                   # a line every 50 rows and columns
    grid[:, ::50] = 255
    Image.fromarray(grid).save(tmp_path / "sq.png")
    mod.crop_768x512(tmp_path / "sq.png", tmp_path / "c.png")
    out = np.asarray(Image.open(tmp_path / "c.png").convert("L")).astype(float)
    assert out.shape == (512, 768)
    def spacing(profile):                               # distance between the starts of the bright lines
        on = np.flatnonzero(profile > 128)
        return np.median(np.diff(on[np.r_[True, np.diff(on) > 1]]))

    # the same spacing down and across (stretched, the columns' lines were 1.5 times as far apart)
    assert abs(spacing(out.mean(axis=1)) - spacing(out.mean(axis=0))) <= 2


def test_the_shipped_manifest_records_the_shipped_results():
    """`aecompress models` shows the manifest's `measured`: when bench/results/rd.json measured the
    shipped package, the manifest holds that run's curve and BD-rates (a new ladder left the package
    before's 0.04-2.12 bpp, 23.9-36.0 dB there)."""
    from aecompress.package import find_package_dir, load_package

    result = json.loads((ROOT / "bench" / "results" / "rd.json").read_text())
    pkg = load_package(str(find_package_dir("photo")), "cpu", 1)
    if not pkg.model_id.hex().startswith(result["model_id"]):
        pytest.skip("bench/results/rd.json measured another package")
    measured = pkg.manifest["measured"]
    assert measured["points"] == [{k: round(v, 4) for k, v in p.items()} for p in result["curves"]["ours"]]
    assert measured["bd_rate_psnr_vs"] == {c: v["psnr"] for c, v in result["bd_rate_vs"].items()}
