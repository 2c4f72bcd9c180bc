"""`aecompress train`, `embed`, `score` from the command line; the runtime stays torch-free."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.test_train_dense import read_mnist, write_digits

ROOT = Path(__file__).resolve().parent.parent


def random_images(folder: Path, seed: int, count: int = 2) -> None:
    """A folder of small noise images: enough for a conv training step and its whole-photo check."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (72, 72, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aecompress", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("cli")
    images, labels = read_mnist(300)
    data = write_digits(root / "digits", images, labels)
    from aecompress.cli import app

    out = root / "pkg"
    r = CliRunner().invoke(app, ["train", "dense", "--data", str(data), "--out", str(out), "--latent", "8",
                                 "--hidden", "32", "--steps", "60", "--quiet"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    return data, out


def test_train_dense_writes_package_and_report(trained):
    data, out = trained
    m = json.loads((out / "manifest.json").read_text())
    assert m["codec"] == "factorized" and m["training"]["steps"] == 60
    assert m["measured"]["mean_file_bytes"] > 0 and m["measured"]["set"] == "held-out validation images"
    for f in ("report.html", "curves.png", "recon.png", "latent.png", "features.png"):
        assert (out / "report" / f).stat().st_size > 0
    html = (out / "report" / "report.html").read_text()
    assert "latent.png" in html and "PSNR" in html
    assert (out.parent / "pkg.work" / "checkpoint.pt").exists()


def test_variant_reports_show_their_effect(trained, tmp_path):
    data, _ = trained
    out = tmp_path / "den"
    r = invoke("train", "dense", "--data", str(data), "--out", str(out), "--latent", "4", "--hidden", "16",
               "--steps", "20", "--noise", "mask:0.3", "--sparse", "l1:0.01", "--quiet")
    assert r.exit_code == 0, r.output + repr(r.exception)
    html = (out / "report" / "report.html").read_text()
    assert (out / "report" / "denoise.png").exists() and "denoising (mask:0.3)" in html
    assert "mean code activation" in html


def test_encode_decode_embed_score_without_torch(trained, tmp_path):
    """The runtime commands work with torch made unimportable."""
    data, out = trained
    digit = sorted((data / "3").glob("*.png"))[0]
    code = f"""
import sys
sys.modules['torch'] = None
from aecompress.cli import main
sys.argv = ['aecompress'] + sys.argv[1:]
main()
"""

    def no_torch(*args):
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)

    r = no_torch("encode", "-m", str(out), str(digit), "-o", str(tmp_path / "d.aez"))
    assert r.returncode == 0, r.stderr
    size = (tmp_path / "d.aez").stat().st_size
    assert 21 < size < 64
    r = no_torch("decode", "-m", str(out), str(tmp_path / "d.aez"), "-o", str(tmp_path / "d.png"))
    assert r.returncode == 0, r.stderr
    assert np.asarray(Image.open(tmp_path / "d.png")).shape == (28, 28)

    r = no_torch("embed", str(out), str(data / "1"), str(digit), "-o", str(tmp_path / "codes.npy"))
    assert r.returncode == 0, r.stderr
    codes = np.load(tmp_path / "codes.npy")
    assert codes.shape == (len(list((data / "1").glob("*.png"))) + 1, 8)

    r = no_torch("score", str(out), str(data / "7"), "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == len(list((data / "7").glob("*.png")))
    assert {Path(row["input"]).parent for row in rows} == {data / "7"}
    errs = [row["mse"] for row in rows]
    assert errs == sorted(errs, reverse=True)

    r = no_torch("train", "dense", "--data", str(data), "--out", str(tmp_path / "x"))
    assert r.returncode != 0
    assert "pip install -e '.[train]'" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_embed_and_score_go_past_a_bad_image_and_name_the_rows(trained, tmp_path):
    """One unreadable file, or one of the wrong size, is named and left out; the others' codes and
    scores stand, the run exits 1; embed lists the images of its rows beside the array."""
    data, out = trained
    folder = tmp_path / "mixed"
    folder.mkdir()
    digits = sorted((data / "3").glob("*.png"))[:3]
    for d in digits:
        (folder / d.name).write_bytes(d.read_bytes())
    (folder / "0_bad.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((30, 28), np.uint8)).save(folder / "1_tall.png")
    r = run("embed", str(out), str(folder), "-o", str(tmp_path / "codes.npy"))
    assert r.returncode == 1, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("aecompress: error: ")]
    assert len(errors) == 2 and "0_bad.png" in errors[0] and "1_tall.png: model" in errors[1], r.stderr
    assert "3 done, 2 failed" in r.stderr
    rows = json.loads((tmp_path / "codes.json").read_text())
    assert rows["images"] == [str(folder / d.name) for d in digits]
    assert np.load(tmp_path / "codes.npy").shape == (3, 8) and rows["shape"] == [3, 8]
    r = run("embed", str(out), str(folder), "-o", str(tmp_path / "codes.npy"))      # no --force: refused
    assert r.returncode == 1 and "exists" in r.stderr

    r = run("score", str(out), str(folder), "--json")
    assert r.returncode == 1 and len(r.stdout.splitlines()) == 3 and "0_bad.png" in r.stderr
    for q in ("500", "-5", "nan"):
        r = run("score", str(out), str(digits[0]), "--quality", q)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--quality" in r.stderr, (q, r.stderr)
    r = run("embed", str(out), str(tmp_path / "mixed" / "0_bad.png"), "-o", str(tmp_path / "x.npy"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "0_bad.png: cannot read image" in r.stderr
    assert not (tmp_path / "x.npy").exists()


def invoke(*args: str):
    from aecompress.cli import app

    return CliRunner().invoke(app, list(args))


def test_a_fixed_size_codec_refuses_a_header_of_another_size(trained, tmp_path):
    """A dense codec codes its one size; a (forged) header naming another was decoded to the model's
    size and reported as the header's (100x28 reported, a 28x28 PNG written, exit 0)."""
    import struct
    import zlib

    data, out = trained
    digit = sorted((data / "3").glob("*.png"))[0]
    assert run("encode", "-m", str(out), str(digit), "-o", str(tmp_path / "d.aez")).returncode == 0
    body = (tmp_path / "d.aez").read_bytes()[:-4]
    assert body[13:15] == bytes([28, 28])                  # width and height, one-byte varints
    for name, geometry in (("wide", bytes([100, 28])), ("small", bytes([14, 14]))):
        forged = body[:13] + geometry + body[15:]
        (tmp_path / f"{name}.aez").write_bytes(forged + struct.pack("<I", zlib.crc32(forged)))
        r = run("decode", "-m", str(out), str(tmp_path / f"{name}.aez"), "-o", str(tmp_path / f"{name}.png"))
        assert r.returncode == 3 and "header does not match the model" in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1 and not (tmp_path / f"{name}.png").exists()
    r = run("decode", "-m", str(out), str(tmp_path / "d.aez"), "-o", str(tmp_path / "d.png"))
    assert r.returncode == 0 and Image.open(tmp_path / "d.png").size == (28, 28)


def test_cli_bad_input(trained, tmp_path):
    from aecompress.errors import AecError

    data, out = trained
    (tmp_path / "empty").mkdir()
    # through the real entry point: one line on stderr, exit code 1, nothing written
    r = run("train", "dense", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "no images found" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()

    def fails(match: str, *args: str) -> None:
        """An error (exit 1) or, for an option's value, a usage error (exit 2), saying match."""
        res = invoke(*args)
        assert ((isinstance(res.exception, AecError) and match in str(res.exception))
                or (res.exit_code == 2 and match in res.output)), (res.output, res.exception)

    fails("dense models only", "train", "conv", "--data", str(data), "--out", str(tmp_path / "o"), "--latent", "16")
    # options that do not fit the architecture are usage errors, one line, exit 2, said plainly
    for args, words in ((["dense", "--bf16"], "--bf16 applies to conv models only"),
                        (["conv", "--latent", "16"], "--latent applies to dense models only"),
                        (["denoise", "--n", "8"], "--n does not apply to denoisers"),
                        # values with a fixed form, checked before any image is read (they were exit 1)
                        (["dense", "--activation", "tanh"], "Invalid value for '--activation': must be one of"),
                        (["dense", "--loss", "l1"], "Invalid value for '--loss'"),
                        (["dense", "--sparse", "kl:2:0.5"], "Invalid value for '--sparse': 'kl:2:0.5': use l1:WEIGHT"),
                        (["dense", "--noise", "mask:1.5"], "Invalid value for '--noise': 'mask:1.5': use gaussian:STD")):
        res = invoke("train", *args, "--data", str(data), "--out", str(tmp_path / "o"))
        assert res.exit_code == 2 and f"aecompress: error: {words}" in res.output, (args, res.output)
        assert res.output.rstrip().endswith("(see 'aecompress train --help')") and res.output.count("\n") == 1
    fails("unknown architecture", "train", "mlp", "--data", str(data), "--out", str(tmp_path / "o"))
    fails("'--sparse': 'l2:1': use l1:WEIGHT", "train", "dense", "--data", str(data), "--out", str(tmp_path / "o"), "--sparse", "l2:1")
    fails("--hidden", "train", "dense", "--data", str(data), "--out", str(tmp_path / "o"), "--hidden", "3x")
    # --resume of a conv model from a dense checkpoint
    fails("dense model, not conv", "train", "conv", "--data", str(data), "--out", str(out), "--resume", "--steps", "2",
          "--force")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.txt").write_text("precious")
    fails("not a model package", "train", "dense", "--data", str(data), "--out", str(tmp_path / "docs"))
    assert (tmp_path / "docs" / "thesis.txt").exists()
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(big)
    fails("28x28", "score", str(out), str(big))
    # an image the model cannot take is a model mismatch (exit 4, as documented), in one line
    r = run("encode", "-m", str(out), str(big), "-o", str(tmp_path / "big.aez"))
    assert r.returncode == 4 and "takes 28x28 images, not 30x40" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "big.aez").exists()
    # an existing package is replaced only with --force (files made with it need it)
    before = (out / "manifest.json").read_bytes()
    fails("use --force", "train", "dense", "--data", str(data), "--out", str(out), "--steps", "2")
    assert (out / "manifest.json").read_bytes() == before
    # an interrupted run's checkpoint is not thrown away by a fresh run
    (tmp_path / "run.work").mkdir()
    (tmp_path / "run.work" / "checkpoint.pt").write_bytes(b"state")
    fails("holds an interrupted run", "train", "dense", "--data", str(data), "--out", str(tmp_path / "run"))
    assert (tmp_path / "run.work" / "checkpoint.pt").read_bytes() == b"state"
    fails("--val", "train", "conv", "--data", str(data), "--out", str(tmp_path / "o"), "--val", str(tmp_path / "empty"))
    fails("multiple of 64", "train", "conv", "--data", str(data), "--out", str(tmp_path / "o"), "--crop", "96")
    fails("'--minutes': must be positive", "train", "conv", "--data", str(data), "--out", str(tmp_path / "o"),
          "--minutes", "-1")
    fails("WEIGHT >= 0", "train", "dense", "--data", str(data), "--out", str(tmp_path / "o"), "--sparse", "l1:-5")
    afile = tmp_path / "afile"
    afile.write_text("x")
    fails("cannot write", "train", "dense", "--data", str(data), "--out", str(afile / "pkg"), "--steps", "2")
    # out-of-range numbers are usage errors before anything runs, never a run (a negative --steps
    # made `train conv` loop for ever)
    for opt, value in (("--steps", "-5"), ("--batch", "0"), ("--threads", "0"), ("--rate", "-1"),
                       ("--checkpoint-every", "0"), ("--epochs", "-1")):
        res = invoke("train", "dense", "--data", str(data), "--out", str(tmp_path / "o"), opt, value)
        assert res.exit_code == 2 and "Invalid value" in res.output, (opt, res.output)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.work").exists()


def test_report_with_a_single_validation_image(tmp_path):
    """The code map's PCA needs two directions; one image has one (it raised IndexError after the
    package was already in place)."""
    from aecompress.train.report import pca_2d

    xy, var = pca_2d(np.array([[1.0, 2.0, 3.0]]))
    assert xy.shape == (1, 2) and var.shape == (2,)
    xy, var = pca_2d(np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 3.0]]))
    assert xy.shape == (2, 2) and var[0] == pytest.approx(1.0)


def test_train_conv_tiny(tmp_path):
    pytest.importorskip("torch")
    from aecompress.cli import app

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        im = np.clip(rng.normal(128, 40, (80, 96, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(im).save(tmp_path / "imgs" / f"{i}.png")
    out = tmp_path / "conv"
    r = CliRunner().invoke(app, ["train", "conv", "--data", str(tmp_path / "imgs"), "--out", str(out), "--steps", "3",
                                 "--crop", "64", "--n", "16", "--m", "24", "--batch", "2", "--quiet"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    m = json.loads((out / "manifest.json").read_text())
    assert m["codec"] == "hyperprior" and m["architecture"]["m"] == 24
    assert (out / "report" / "report.html").exists() and (out / "report" / "recon.png").exists()
    # the manifest says what it ran on and what the runtime measured when it coded and decoded at export
    assert "torch" in m["training"]["hardware"] and "cores" in m["training"]["hardware"]
    pts = m["measured"]["points"]
    assert [p["quality"] for p in pts] == [10, 50, 75, 100] and all(p["bpp"] > 0 for p in pts)


def test_a_timed_conv_run_reports_its_progress(tmp_path):
    """`train conv --minutes 2` on a CPU printed nothing between 'training on CPU' and 'done': the step
    lines came with validation, every 500 steps (a tenth of the default --steps), which a few minutes
    do not reach; the report's training curves were one point. Now a line, and a point of the
    training curve, at least every tenth of the budget."""
    torch = pytest.importorskip("torch")
    from aecompress.cli import app
    from aecompress.train.fit_dense import work_dir

    random_images(tmp_path / "imgs", seed=12)
    out = tmp_path / "conv"
    r = CliRunner().invoke(app, ["train", "conv", "--data", str(tmp_path / "imgs"), "--out", str(out), "--minutes",
                                 "0.04", "--crop", "64", "--n", "8", "--m", "8", "--batch", "1", "--threads", "1"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    lines = [line for line in r.output.splitlines() if line.endswith("of --minutes)")]
    assert len(lines) >= 5 and lines[0].startswith("step "), r.output
    history = torch.load(work_dir(out) / "checkpoint.pt", weights_only=False)["history"]
    assert len([h for h in history if "val" not in h]) >= 5 and "val" in history[-1]
    assert (out / "report" / "curves.png").stat().st_size > 0


def test_train_conv_init_fine_tunes_from_a_checkpoint(tmp_path):
    pytest.importorskip("torch")
    import torch

    from aecompress.cli import app
    from aecompress.train.fit_dense import work_dir

    random_images(tmp_path / "imgs", seed=1)
    args = ["--data", str(tmp_path / "imgs"), "--crop", "64", "--n", "16", "--m", "24", "--batch", "2", "--quiet",
            "--no-report"]
    first = tmp_path / "a"
    assert CliRunner().invoke(app, ["train", "conv", "--out", str(first), "--steps", "2"] + args).exit_code == 0
    ck = work_dir(first) / "checkpoint.pt"
    second = tmp_path / "b"
    r = CliRunner().invoke(app, ["train", "conv", "--out", str(second), "--steps", "1", "--lr", "0",
                                 "--init", str(ck)] + args)
    assert r.exit_code == 0, r.output + repr(r.exception)
    a = torch.load(ck, weights_only=False)
    b = torch.load(work_dir(second) / "checkpoint.pt", weights_only=False)
    assert b["step"] == 1                         # a fresh schedule, not a resume
    # lr 0: the weights are exactly the initial checkpoint's
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"] if k.startswith("g_s"))
    # the stage is judged on whole validation photos against its starting weights: unchanged weights,
    # the same curves (up to the entropy model's own bookkeeping), a BD-rate near zero; the manifest's
    # stage list carries it
    whole = b["whole_photos"]
    assert whole["photos"] == 1 and len(whole["start"]) == len(whole["end"]) == 9
    for s0, s1 in zip(whole["start"], whole["end"]):
        assert s1["psnr"] == pytest.approx(s0["psnr"], abs=1e-6) and s1["bpp"] == pytest.approx(s0["bpp"], rel=0.01)
    stages = json.loads((second / "manifest.json").read_text())["training"]["stages"]
    assert stages[-1]["whole_photo_bd_rate_vs_start"] == pytest.approx(whole["bd_rate_vs_start"], abs=0.01)
    assert "whole_photo_bd_rate_vs_start" not in stages[0]               # a first run has no start to compare
    bad = CliRunner().invoke(app, ["train", "conv", "--out", str(tmp_path / "c"), "--steps", "1",
                                   "--init", str(tmp_path / "missing.pt")] + args)
    assert bad.exit_code != 0 and "no such checkpoint" in bad.output + str(bad.exception)


def test_whole_photo_comparison_is_a_bd_rate():
    pytest.importorskip("torch")
    from aecompress.train.fit_conv import _whole_photos, compare_whole

    start = [{"level": k, "bpp": 0.2 * 1.3 ** k, "psnr": 25.0 + 1.1 * k} for k in range(9)]
    cheaper = [dict(r, bpp=r["bpp"] * 0.9) for r in start]
    assert compare_whole(start, start) == pytest.approx(0.0, abs=1e-9)
    assert compare_whole(start, cheaper) == pytest.approx(-10.0, abs=1e-6)
    assert compare_whole(cheaper, start) == pytest.approx(100 / 0.9 - 100, abs=1e-6)
    # central crops in multiples of 64, at most 768, evenly spaced photos; too small ones are left out
    ims = [np.zeros((500, 1000, 3), np.uint8), np.zeros((40, 900, 3), np.uint8), np.zeros((130, 70, 3), np.uint8)]
    assert [p.shape for p in _whole_photos(ims, count=4)] == [(448, 768, 3), (128, 64, 3)]


def test_fine_tuning_keeps_the_weights_best_on_whole_photos(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from aecompress.train import fit_conv

    random_images(tmp_path / "imgs", seed=2)
    base = dict(data=str(tmp_path / "imgs"), val=str(tmp_path / "imgs"), crop=64, n=16, m=24, batch=2, threads=1)
    first = fit_conv.train_conv(fit_conv.ConvConfig(out=str(tmp_path / "a"), steps=1, **base), log=lambda m: None)
    assert first.name == "checkpoint.pt"                  # a first stage has no start to compare against
    # whole-photo curves as measured: the start, better at step 2, worse again at the end (step 4)
    start = [{"level": k, "bpp": 0.2 * 1.3 ** k, "psnr": 25.0 + 1.1 * k} for k in range(9)]
    curves = [start, [dict(r, bpp=r["bpp"] * 0.9) for r in start], [dict(r, bpp=r["bpp"] * 1.2) for r in start]]
    monkeypatch.setattr(fit_conv, "evaluate_whole", lambda model, photos: curves.pop(0))
    logs = []
    cfg = fit_conv.ConvConfig(out=str(tmp_path / "b"), steps=4, init=str(first), whole_every=2, **base)
    best = fit_conv.train_conv(cfg, log=logs.append)
    assert not curves                                     # measured at the start, step 2 and the end
    assert best.name == "best.pt"
    b, last = torch.load(best, weights_only=False), torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert b["step"] == 2 and b["whole_photos"]["bd_rate_vs_start"] == pytest.approx(-10.0, abs=1e-6)
    assert last["step"] == 4 and last["whole_photos"]["bd_rate_vs_start"] == pytest.approx(20.0, abs=1e-6)
    assert [c["step"] for c in last["whole_photos"]["checks"]] == [2, 4]
    assert not all(torch.equal(b["model"][k], last["model"][k]) for k in b["model"])
    assert any("step 2: whole photos -10.00%" in m for m in logs) and "best on whole photos: step 2" in logs[-1]


def test_subpixel_synthesis_matches_transposed_convolutions():
    torch = pytest.importorskip("torch")
    from aecompress.train.conv import Synthesis
    from aecompress.train.export import SubpixelDeconv, subpixel_synthesis

    torch.manual_seed(0)
    dc = torch.nn.ConvTranspose2d(6, 5, 5, stride=2, padding=2, output_padding=1)
    x = torch.randn(2, 6, 7, 9)
    with torch.no_grad():
        assert torch.allclose(SubpixelDeconv(dc)(x), dc(x), atol=1e-5)
        g = Synthesis(3, 16, 24).eval()
        y = torch.randn(1, 24, 5, 6) * 3
        ref, got = g(y), subpixel_synthesis(g)(y)
    assert got.shape == ref.shape == (1, 3, 80, 96)
    assert torch.allclose(got, ref, atol=1e-4)
    # the only transposed convolutions left are the exact 2x2 pixel shuffles
    assert all(m.kernel_size == (2, 2) for m in subpixel_synthesis(g).modules()
               if isinstance(m, torch.nn.ConvTranspose2d))


def test_exact_pixel_shuffle_is_bit_identical_to_pixel_shuffle():
    torch = pytest.importorskip("torch")
    from aecompress.train.export import ExactPixelShuffle

    x = torch.randn(2, 4 * 5, 6, 7) * 1e3
    with torch.no_grad():
        assert torch.equal(ExactPixelShuffle(5)(x), torch.nn.PixelShuffle(2)(x))


def test_bf16_mixed_precision_until_the_final_phase(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from aecompress.train import fit_conv
    from aecompress.train.conv import HyperpriorCodec, rd_loss

    random_images(tmp_path / "imgs", seed=2)
    flags = []
    real = torch.autocast

    def spy(device_type, dtype=None, enabled=True, **kw):
        flags.append((device_type, dtype, enabled))
        return real(device_type, dtype=dtype, enabled=enabled, **kw)

    monkeypatch.setattr(fit_conv.torch, "autocast", spy)
    cfg = fit_conv.ConvConfig(data=str(tmp_path / "imgs"), out=str(tmp_path / "run"), n=16, m=24, crop=64, batch=2,
                              steps=10, val_every=1000, checkpoint_every=1000, bf16=True)
    ck = fit_conv.train_conv(cfg, log=lambda m: None)
    # steps 0-8 (progress <= 0.85) in bfloat16, the last one in full precision
    assert [f[2] for f in flags] == [True] * 9 + [False]
    assert all(f[:2] == ("cpu", torch.bfloat16) for f in flags)
    state = torch.load(ck, weights_only=False)
    assert state["train_config"]["bf16"] is True and state["step"] == 10
    # the mixed-precision loss is the full-precision one up to bfloat16 rounding
    model = HyperpriorCodec(3, 16, 24, 64, 32)
    model.load_state_dict(state["model"])
    model.eval()
    x = torch.from_numpy(np.random.default_rng(2).random((2, 3, 64, 64), dtype=np.float32))
    level = torch.tensor([0, 8])
    with torch.no_grad():
        full = rd_loss(model, x, level)
        with real("cpu", dtype=torch.bfloat16):
            mixed = rd_loss(model, x, level)
    assert torch.isfinite(mixed["loss"])
    assert float(mixed["mse"]) == pytest.approx(float(full["mse"]), rel=0.05)
    assert float(mixed["bpp"]) == pytest.approx(float(full["bpp"]), rel=0.05)


def test_denoiser_bf16_training_records_it(tmp_path):
    torch = pytest.importorskip("torch")
    from aecompress.train.denoiser import train

    rng = np.random.default_rng(3)
    (tmp_path / "imgs").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    ck = train(tmp_path / "run", minutes=5, batch=2, crop=32, lr=1e-3, max_steps=3, data=tmp_path / "imgs", bf16=True)
    state = torch.load(ck, weights_only=False)
    assert state["bf16"] is True and state["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_kill_mid_training_keeps_a_resumable_checkpoint(tmp_path):
    """SIGTERM while `train conv` runs: exit 143, no package, a checkpoint that --resume continues
    and that a fresh run does not silently throw away."""
    import signal
    import time

    pytest.importorskip("torch")
    random_images(tmp_path / "imgs", 0)
    out = tmp_path / "conv"
    args = ["train", "conv", "--data", str(tmp_path / "imgs"), "--out", str(out), "--steps", "100000", "--crop", "64",
            "--n", "8", "--m", "8", "--batch", "1", "--threads", "1", "--quiet", "--no-report"]
    p = subprocess.Popen([sys.executable, "-m", "aecompress", *args], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "conv.work").is_dir():
        time.sleep(0.1)
    time.sleep(5)                                          # a few training steps
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("aecompress: terminated;") and "--resume" in err, err
    assert (tmp_path / "conv.work" / "checkpoint.pt").exists() and not out.exists()
    r = run(*args)
    assert r.returncode == 1 and "--resume" in r.stderr


def test_a_resumed_conv_run_keeps_its_running_loss_and_names_a_spent_budget(tmp_path):
    """The training loss in the step lines, the history and the report's curve is a running mean; a
    resumed run started it again from 0 (each step adding 2% of its loss), so after --resume the
    curve fell fifty-fold and took hundreds of steps to come back."""
    torch = pytest.importorskip("torch")
    from aecompress.train.fit_conv import ConvConfig, train_conv

    random_images(tmp_path / "imgs", seed=11)
    opts = dict(data=str(tmp_path / "imgs"), out=str(tmp_path / "run"), n=8, m=8, nh=8, nz=8, crop=64, batch=1,
                val_every=1, threads=1)
    train_conv(ConvConfig(steps=2, **opts), log=lambda *a: None)
    path = train_conv(ConvConfig(steps=4, **opts), resume=True, log=lambda *a: None)
    loss = {h["step"]: h["train"]["loss"] for h in torch.load(path, weights_only=False)["history"]}
    assert loss[3] > 0.5 * loss[2], loss
    # a budget the run already spent: said, as for --steps (it said only 'resumed at step 4')
    said = []
    train_conv(ConvConfig(steps=8, minutes=1e-4, **opts), resume=True, log=said.append)
    assert "resumed at step 4 (already past --minutes 0.0001: nothing to train)" in said, said


def test_train_denoise_makes_a_package_denoise_uses_at_once(tmp_path):
    pytest.importorskip("torch")
    random_images(tmp_path / "imgs", 1, count=3)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "dn"
    r = run("train", "denoise", "--data", str(tmp_path / "imgs"), "--out", str(out), "--steps", "4", "--minutes", "1",
            "--batch", "2", "--crop", "64", "--threads", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines() == [f"wrote {out}"]          # --quiet drops the steps, not the result
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "denoiser" and m["name"] == "dn" and m["training"]["steps"] == 4
    assert m["training"]["images"] == 3 and m["training"]["skipped"] == 1      # unreadable files are counted
    assert str(tmp_path / "imgs") in m["training"]["data"] and "torch thread" in m["training"]["hardware"]
    assert m["measured"]["images"] == 3 and "psnr_sigma25" in m["measured"]
    assert m["measured"]["set"].startswith("3 training photos of ") and "no --val" in m["measured"]["set"]
    assert "cores" in m["training"]["hardware"] and "torch 2." in m["training"]["hardware"]
    r = run("denoise", str(tmp_path / "imgs" / "0.png"), "-m", str(out), "-o", str(tmp_path / "clean.png"))
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "clean.png").size == (72, 72)
    r = run("train", "denoise", "--data", str(tmp_path / "imgs"), "--out", str(tmp_path / "x"), "--crop", "60")
    assert r.returncode == 2 and "multiple of 8" in r.stderr and r.stderr.count("\n") == 1


def one_step_denoiser(tmp_path, images: int, *options: str) -> dict:
    """The manifest of a denoiser trained one step on a few random images, with `options`."""
    pytest.importorskip("torch")
    random_images(tmp_path / "imgs", images)
    out = tmp_path / "dn"
    res = invoke("train", "denoise", "--data", str(tmp_path / "imgs"), "--out", str(out), "--steps", "1",
                 "--batch", "1", "--crop", "16", "--threads", "1", "--quiet", *options)
    assert res.exit_code == 0, res.output + repr(res.exception)
    return json.loads((out / "manifest.json").read_text())


def test_train_denoise_writes_the_description_given(tmp_path):
    """--description was taken and dropped: a denoiser's manifest always had the shipped model's line."""
    assert one_step_denoiser(tmp_path, 2, "--description", "scanner grain")["description"] == "scanner grain"


def test_train_denoise_fine_tunes_at_a_lower_default_learning_rate(tmp_path):
    """--init denoise started at the from-scratch peak 1e-3, which undid much of the shipped training."""
    stage = one_step_denoiser(tmp_path, 3, "--init", "denoise")["training"]["stages"][-1]
    assert stage["lr"] == 1e-4 and stage["init"] == "denoise"


def test_train_help_gives_the_denoisers_defaults():
    """--batch, --lr, --threads and --steps named conv's and dense's defaults only; --out promised a
    report a denoiser does not write."""
    from aecompress.cli import app

    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "400"})
    text = " ".join(res.output.split())
    for said in ("dense 128, denoise 16", "denoise 1e-3, denoise --init 1e-4", "denoise: all cores",
                 "denoise: a cap", "conv, dense: report in OUT/report/", "a denoiser has none"):
        assert said in text, said


def test_a_fresh_denoise_run_starts_its_own_log(tmp_path):
    """--force over a finished run appended to its OUT.work/log.jsonl: two runs' steps in one log."""
    pytest.importorskip("torch")
    from aecompress.train import denoiser

    random_images(tmp_path / "imgs", 9)
    kw = dict(minutes=5, batch=1, crop=16, data=tmp_path / "imgs", log_every=1)
    denoiser.train(tmp_path / "dn", max_steps=3, **kw)
    denoiser.train(tmp_path / "dn", max_steps=4, resume=True, **kw)          # resumed: the same log goes on
    steps = [json.loads(line)["step"] for line in (tmp_path / "dn" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 3, 4, 4]
    denoiser.train(tmp_path / "dn", max_steps=2, resume=False, **kw)         # started over
    steps = [json.loads(line)["step"] for line in (tmp_path / "dn" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 2]


def test_a_diverging_conv_run_is_one_line(tmp_path):
    imgs = tmp_path / "imgs"
    random_images(imgs, seed=3)
    r = run("train", "conv", "--data", str(imgs), "--out", str(tmp_path / "pk"), "--steps", "3", "--batch", "1",
            "--crop", "64", "--n", "8", "--m", "8", "--lr", "1e12", "--threads", "1", "--quiet")
    assert r.returncode == 1 and "loss became nan" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "pk").exists()


def test_a_diverging_denoise_run_is_one_line_and_leaves_nothing(tmp_path):
    """A NaN loss stopped conv and dense runs; a denoiser exported its NaN weights with exit 0."""
    imgs = tmp_path / "imgs"
    random_images(imgs, seed=3)
    r = run("train", "denoise", "--data", str(imgs), "--out", str(tmp_path / "pk"), "--steps", "20", "--batch", "2",
            "--crop", "32", "--lr", "1e12", "--threads", "1", "--quiet")
    assert r.returncode == 1 and "lower --lr" in r.stderr and "became" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "pk").exists() and not (tmp_path / "pk.work").exists()


def test_ctrl_c_during_denoise_keeps_a_checkpoint_that_resume_continues(tmp_path):
    import signal
    import time

    torch = pytest.importorskip("torch")
    imgs = tmp_path / "imgs"
    random_images(imgs, seed=4)
    out = tmp_path / "dn"
    args = ["train", "denoise", "--data", str(imgs), "--out", str(out), "--minutes", "30", "--batch", "2",
            "--crop", "32", "--threads", "1"]
    # Ctrl-C as a terminal sends it (a shell running this in the background may have SIGINT ignored)
    p = subprocess.Popen([sys.executable, "-m", "aecompress", *args, "--steps", "100000"], cwd=ROOT,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "dn.work").is_dir():
        time.sleep(0.1)
    time.sleep(3)                                          # some training steps
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "Traceback" not in err, err
    assert "--resume" in err.strip().splitlines()[-1]      # the interrupt line says how to continue
    ckpt = tmp_path / "dn.work" / "checkpoint.pt"
    assert ckpt.exists() and not out.exists()
    step = torch.load(ckpt, weights_only=False)["step"]
    assert step > 0
    r = run(*args, "--steps", str(step + 2), "--resume")
    assert r.returncode == 0, r.stderr
    assert f"resumed at step {step}" in r.stderr
    assert json.loads((out / "manifest.json").read_text())["training"]["steps"] == step + 2
    # --resume with nothing to resume is refused, as for conv and dense
    res = invoke(*args, "--out", str(tmp_path / "none"), "--resume")
    assert "nothing to resume" in str(res.exception), res.output
    assert not (tmp_path / "none.work").exists()


def test_training_data_reads_16_bit_images_as_the_runtime_does(tmp_path):
    """A 16-bit PNG became solid white (Pillow's convert clips I;16 to 255)."""
    from aecompress.train.data import load_folder

    a = (np.arange(48 * 40, dtype=np.uint32).reshape(48, 40) * 34).astype(np.uint16)
    (tmp_path / "d").mkdir()
    Image.fromarray(a).save(tmp_path / "d" / "deep.png")
    assert Image.open(tmp_path / "d" / "deep.png").mode == "I;16"
    expect = ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    rgb = load_folder(tmp_path / "d", "RGB").images[0]
    assert rgb.shape == (48, 40, 3) and all(np.array_equal(rgb[:, :, c], expect) for c in range(3))
    assert np.array_equal(load_folder(tmp_path / "d", "L").images[0][:, :, 0], expect)


def test_folders_of_unreadable_images_are_one_line(tmp_path):
    """A --val or --data folder whose only "images" cannot be read: an IndexError traceback, or a
    NaN manifest, before."""
    from aecompress.errors import AecError

    imgs = tmp_path / "imgs"
    random_images(imgs, seed=5)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "fake.png").write_text("not an image")
    (bad / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")

    def fails(match: str, *args: str) -> None:
        """An error (exit 1) or, for an option's value, a usage error (exit 2), saying match."""
        res = invoke(*args)
        assert ((isinstance(res.exception, AecError) and match in str(res.exception))
                or (res.exit_code == 2 and match in res.output)), (res.output, res.exception)

    fails("--val", "train", "conv", "--data", str(imgs), "--out", str(tmp_path / "v1"), "--steps", "2", "--crop", "64",
          "--n", "8", "--m", "8", "--val", str(bad))
    fails("no readable images", "train", "denoise", "--data", str(bad), "--out", str(tmp_path / "v4"), "--steps", "2")
    fails("no readable images", "train", "denoise", "--data", str(imgs), "--out", str(tmp_path / "v5"), "--steps",
          "2", "--val", str(bad))
    fails("no readable images", "train", "conv", "--data", str(bad), "--out", str(tmp_path / "v6"), "--steps", "2")
    assert not list(tmp_path.glob("v*"))                    # no package, no OUT.work/ left behind


def test_resume_refuses_other_options(tmp_path, trained, monkeypatch):
    """A resumed run kept the checkpoint's steps while the manifest recorded the new options; only
    the step budget may change. The conv manifest says what it measured and ran on."""
    torch = pytest.importorskip("torch")
    from aecompress.errors import AecError
    from aecompress.train import denoiser

    monkeypatch.chdir(tmp_path)
    random_images(tmp_path / "imgs", seed=6, count=3)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG broken")
    random_images(tmp_path / "other", seed=7)
    base = ["train", "conv", "--out", "pk", "--n", "8", "--m", "8", "--threads", "1", "--quiet", "--no-report"]
    r = invoke(*base, "--data", "imgs", "--steps", "2", "--crop", "64", "--batch", "2")
    assert r.exit_code == 0, r.output + repr(r.exception)
    for changed, named in ((["--crop", "128"], "--crop 64 (now 128)"), (["--batch", "1"], "--batch 2 (now 1)"),
                           (["--lr", "5e-4"], "--lr 0.0002 (now 0.0005)"), (["--seed", "3"], "--seed 0 (now 3)")):
        opts = {"--data": "imgs", "--crop": "64", "--batch": "2"}
        opts.update(dict(zip(changed[::2], changed[1::2])))
        res = invoke(*base, *sum(map(list, opts.items()), []), "--steps", "3", "--resume", "--force")
        assert isinstance(res.exception, AecError) and named in str(res.exception), (changed, res.exception)
    res = invoke(*base, "--data", "other", "--crop", "64", "--batch", "2", "--steps", "3", "--resume", "--force")
    assert isinstance(res.exception, AecError) and "--data " in str(res.exception), res.exception
    # the step budget may grow (and the folder may be named another way)
    r = invoke(*base, "--data", str(tmp_path / "imgs"), "--crop", "64", "--batch", "2", "--steps", "3", "--resume",
               "--force")
    assert r.exit_code == 0, r.output + repr(r.exception)
    t = json.loads((tmp_path / "pk" / "manifest.json").read_text())
    tr, meas = t["training"], t["measured"]
    assert tr["steps"] == 3 and tr["crop"] == 64 and tr["batch"] == 2
    assert tr["data"] == str((tmp_path / "imgs").resolve())           # absolute, not as typed
    assert (tr["images"], tr["validation_images"], tr["skipped"]) == (3, 1, 1)
    assert "1 torch thread" in tr["hardware"]
    # without --val the calibration images are mostly training images, and the manifest says so
    assert str((tmp_path / "imgs").resolve()) in meas["set"] and "2 training image(s) and 1 held out" in meas["set"]
    assert meas["set"] in meas["summary"]

    data, out = trained                                    # dense: the same rule
    res = invoke("train", "dense", "--data", str(data), "--out", str(out), "--latent", "8", "--hidden", "32",
                 "--steps", "80", "--batch", "64", "--resume", "--force", "--quiet")
    assert isinstance(res.exception, AecError) and "--batch 128 (now 64)" in str(res.exception), res.exception

    ck = denoiser.train(tmp_path / "dn", minutes=5, batch=2, crop=32, max_steps=2, data=tmp_path / "imgs")
    with pytest.raises(ValueError, match=r"--crop 32 \(now 16\), --lr 0.001 \(now 0.002\)"):
        denoiser.train(tmp_path / "dn", minutes=5, batch=2, crop=16, lr=2e-3, max_steps=3, data=tmp_path / "imgs")
    with pytest.raises(ValueError, match="--data"):
        denoiser.train(tmp_path / "dn", minutes=5, batch=2, crop=32, max_steps=3, data=tmp_path / "other")
    denoiser.train(tmp_path / "dn", minutes=9, batch=2, crop=32, max_steps=3, data=Path("imgs"))
    state = torch.load(ck, weights_only=False)
    assert state["step"] == 3 and state["data"] == str((tmp_path / "imgs").resolve()) and state["skipped"] == 1
    # the data folder was moved: its new path is taken, not refused
    (tmp_path / "imgs").rename(tmp_path / "moved")
    denoiser.train(tmp_path / "dn", minutes=9, batch=2, crop=32, max_steps=4, data=tmp_path / "moved")
    state = torch.load(ck, weights_only=False)
    assert state["step"] == 4 and state["data"] == str((tmp_path / "moved").resolve())


def test_train_option_messages(tmp_path):
    from aecompress.errors import AecError

    random_images(tmp_path / "imgs", seed=8)
    imgs = str(tmp_path / "imgs")
    res = invoke("train", "denoise", "--data", str(tmp_path / "nonexist"), "--out", str(tmp_path / "o"))
    assert isinstance(res.exception, AecError) and "nonexist: no such folder" in str(res.exception)
    for args, match in ((["denoise", "--data", imgs, "--lr", "nan"], "'--lr': must be a finite number, positive"),
                        (["conv", "--data", imgs, "--lr", "inf"], "'--lr': must be a finite number, positive"),
                        (["conv", "--data", imgs, "--minutes", "nan"], "'--minutes': must be positive and finite")):
        res = invoke("train", *args, "--out", str(tmp_path / "o"))    # a usage error: exit 2, with the --help
        assert res.exit_code == 2 and match in res.output and "--help" in res.output, (args, res.output)


def test_dense_numbers_out_of_range_are_usage_errors(tmp_path):
    """NaN passes a typer range (it compares false): `--rate nan` trained a classic autoencoder whose
    manifest said rate nan, `--contractive nan` was ignored, `--beta nan` ended as a divergence blamed
    on --lr; `--quant-bits 12` was offered by --help (1-16) and refused with a message about three
    other options, exit 1, as were `--quant-step 0` and `--val-split nan`."""
    pytest.importorskip("torch")
    random_images(tmp_path / "imgs", seed=9)
    dense = ["train", "dense", "--data", str(tmp_path / "imgs"), "--out", str(tmp_path / "o"), "--steps", "2"]
    for args, match in ((["--rate", "nan"], "'--rate': must be a finite number, not nan"),
                        (["--contractive", "nan"], "'--contractive': must be a finite number"),
                        (["--variational", "--beta", "nan"], "'--beta': must be a finite number"),
                        (["--rate", "inf"], "'--rate': must be a finite number, not inf"),
                        (["--weight-decay", "nan"], "'--weight-decay': must be a finite number"),
                        (["--val-split", "nan"], "'--val-split': must be a finite number"),
                        (["--quant-step", "0"], "'--quant-step': must be positive"),
                        (["--quant-step", "nan"], "'--quant-step': must be a finite number"),
                        (["--quant-bits", "12"], "not in the range 1<=x<=8")):
        res = invoke(*dense, *args)
        assert res.exit_code == 2 and match in res.output and "--help" in res.output, (args, res.output)
    assert not list(tmp_path.glob("o*"))


def test_dense_single_image_and_lr_0(tmp_path):
    """--lr 0 is "0 to train nothing" in the option's check, and conv takes it; dense refused it after
    the check with "--batch must be positive, --lr positive and --val-split in [0, 1)". A single image
    is never held out, and the manifest said "--val-split 0" although the default share was given."""
    pytest.importorskip("torch")
    random_images(tmp_path / "imgs", seed=10, count=1)
    out = tmp_path / "o"
    res = invoke("train", "dense", "--data", str(tmp_path / "imgs"), "--out", str(out), "--size", "8x8", "--hidden",
                 "none", "--latent", "2", "--steps", "2", "--lr", "0", "--quiet", "--no-report")
    assert res.exit_code == 0, (res.output, res.exception)
    m = json.loads((out / "manifest.json").read_text())
    assert m["measured"]["set"] == "training images (a single image: none held out)"


def test_embed_and_score_stop_at_a_broken_package(trained, tmp_path):
    """A package whose tables do not fit is one model error (exit 4) before any image, not one
    error an image; a run whose failures share a code ends with it."""
    import shutil

    data, out = trained
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    t = dict(np.load(bad / "tables.npz"))
    t["z_offset"] = t["z_offset"] + 10**6
    np.savez(bad / "tables.npz", **t)
    digits = sorted((data / "3").glob("*.png"))[:3]
    for cmd in (["score", str(bad), *map(str, digits)], ["embed", str(bad), *map(str, digits), "-o", str(tmp_path / "c.npy")]):
        r = run(*cmd)
        assert r.returncode == 4 and r.stderr.count("\n") == 1 and "tables do not fit" in r.stderr, r.stderr
    Image.fromarray(np.zeros((30, 28), np.uint8)).save(tmp_path / "tall.png")
    Image.fromarray(np.zeros((28, 30), np.uint8)).save(tmp_path / "wide.png")
    r = run("score", str(out), str(tmp_path / "tall.png"), str(tmp_path / "wide.png"))
    assert r.returncode == 4 and "0 done, 2 failed" in r.stderr, r.stderr       # both model-size errors
    r = run("embed", str(out), str(digits[0]), str(tmp_path / "tall.png"), "-o", str(tmp_path / "one.npy"))
    assert r.returncode == 4 and "1 done, 1 failed" in r.stderr, r.stderr       # the written rows stand
    assert np.load(tmp_path / "one.npy").shape == (1, 8)


def _embed_photos(tmp_path, *extra):
    """Three small noise images and `embed photo` (the shipped codec, no training) of the first two."""
    images = tmp_path / "img"
    if not images.exists():
        random_images(images, seed=5, count=3)
    return images, invoke("embed", "photo", str(images / "0.png"), str(images / "1.png"),
                          "-o", str(tmp_path / "codes.npy"), *extra)


def _fail_placing_npy(monkeypatch):
    """codes.npy cannot be put in place (a full disk, as the rename or link that places it fails)
    once codes.json has been: the moment between the two replaces."""
    import errno
    import os

    from aecompress import fsutil

    real_replace, real_place = os.replace, fsutil._place_new

    def no_space(path):
        if str(path).endswith(".npy"):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil.os, "replace", lambda a, b: (no_space(b), real_replace(a, b))[1])
    monkeypatch.setattr(fsutil, "_place_new", lambda tmp, path: (no_space(path), real_place(tmp, path))[1])


def test_embed_replaces_codes_and_their_list_as_one_pair(tmp_path, monkeypatch):
    """codes.npy and codes.json were replaced one after the other: a failure between the two left one
    run's codes beside another's list of images, and nothing told a reader. Now a failure to place
    codes.npy puts the old codes.json back (or removes the new one), and codes.json records the
    digest and shape of its codes.npy, which read_codes checks."""
    from aecompress.embedding import read_codes

    images, r = _embed_photos(tmp_path)
    assert r.exit_code == 0, r.output
    codes, meta = read_codes(tmp_path / "codes.npy")
    assert codes.shape == (2, 128) and meta["images"] == [str(images / "0.png"), str(images / "1.png")]
    assert len(meta["npy_sha256"]) == 64
    before = {f: (tmp_path / f).read_bytes() for f in ("codes.npy", "codes.json")}

    with monkeypatch.context() as m:
        _fail_placing_npy(m)
        r = invoke("embed", "photo", str(images / "2.png"), "-o", str(tmp_path / "codes.npy"), "--force")
        assert r.exit_code == 1 and "no space left" in str(r.exception), r.output
        assert {f: (tmp_path / f).read_bytes() for f in before} == before      # the old pair, both files
        r = invoke("embed", "photo", str(images / "2.png"), "-o", str(tmp_path / "new.npy"))
        assert r.exit_code == 1 and "no space left" in str(r.exception), r.output
        assert sorted(p.name for p in tmp_path.iterdir()) == ["codes.json", "codes.npy", "img"]  # no new.json

    # where codes.json cannot be put back either (a run killed outright between the replaces: the
    # same files), the digest tells the reader
    import aecompress.embedding as embedding

    with monkeypatch.context() as m:
        _fail_placing_npy(m)
        m.setattr(embedding, "_undo", lambda *a: None)
        r = invoke("embed", "photo", str(images / "1.png"), str(images / "2.png"), "-o", str(tmp_path / "codes.npy"),
                   "--force")
        assert r.exit_code == 1
    assert (tmp_path / "codes.npy").read_bytes() == before["codes.npy"]
    assert json.loads((tmp_path / "codes.json").read_text())["shape"] == [2, 128]      # same shape, other rows
    with pytest.raises(Exception) as exc:
        read_codes(tmp_path / "codes.npy")
    assert str(exc.value) == f"{tmp_path / 'codes.npy'} does not belong to {tmp_path / 'codes.json'}: run embed again"
    assert exc.value.exit_code == 1


def test_read_codes_refuses_a_pair_that_does_not_belong_together(tmp_path):
    """A one-line error (exit code 1) for codes of another run, a missing half, or an array that is
    not one; a codes.json written before the digest was recorded is still read, checked by its shape."""
    from aecompress.embedding import read_codes
    from aecompress.errors import AecError

    images, r = _embed_photos(tmp_path)
    assert r.exit_code == 0, r.output
    npy, names = tmp_path / "codes.npy", tmp_path / "codes.json"
    codes = np.load(npy)
    meta = json.loads(names.read_text())

    def refused(match):
        with pytest.raises(AecError) as exc:
            read_codes(npy)
        assert match in str(exc.value) and "\n" not in str(exc.value) and exc.value.exit_code == 1, str(exc.value)

    np.save(npy, codes[::-1])                       # same shape, another run's rows
    refused("does not belong to")
    old = {k: v for k, v in meta.items() if k != "npy_sha256"}      # as embed wrote codes.json before
    names.write_text(json.dumps(old))
    assert read_codes(npy)[1]["images"] == meta["images"]           # no digest: the shape is all there is
    np.save(npy, codes[:1])
    refused("does not belong to")
    npy.write_bytes(b"not an array")
    refused("is not an array from embed")
    npy.unlink()
    refused("codes.npy is missing")
    np.save(npy, codes)
    names.unlink()
    refused("codes.json is missing")
