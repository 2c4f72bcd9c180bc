"""`aecompress encode/decode/info/models` as a user runs them: reports, outputs, bad input."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aecompress.metrics import ms_ssim, psnr

from .conftest import SAMPLE, run_on_terminal, smooth_image


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "aecompress", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.fixture
def photo(tmp_path):
    p = tmp_path / "cat.png"
    p.write_bytes(SAMPLE.read_bytes())
    return p


def test_encode_json_report_matches_the_files(photo):
    r = run("encode", photo, "--json", "-q", "70")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert set(rep) == {"bpp", "ratio_raw", "ratio_file", "psnr", "ms_ssim", "seconds", "provider", "input", "output"}
    out = photo.with_suffix(".aez")
    assert rep["output"] == str(out)
    w, h = Image.open(photo).size
    size = out.stat().st_size
    assert rep["bpp"] == pytest.approx(size * 8 / (w * h), rel=1e-12)
    assert rep["ratio_raw"] == pytest.approx(w * h * 3 / size)
    assert rep["ratio_file"] == pytest.approx(photo.stat().st_size / size)
    assert rep["provider"] == "CPUExecutionProvider"

    r = run("decode", out)            # would write cat.png over the original: refused
    assert r.returncode == 1 and "exists" in r.stderr
    r = run("decode", out, "-o", photo.with_name("dec.png"))
    assert r.returncode == 0, r.stderr
    dec = np.asarray(Image.open(photo.with_name("dec.png")))
    src = np.asarray(Image.open(photo).convert("RGB"))
    assert rep["psnr"] == pytest.approx(psnr(src, dec), abs=1e-9)
    assert rep["ms_ssim"] == pytest.approx(ms_ssim(src, dec), abs=1e-9)


def run_bytes(*args, stdin: bytes = b"", cwd=None):
    return subprocess.run([sys.executable, "-m", "aecompress", *map(str, args)], input=stdin, capture_output=True,
                          cwd=cwd, timeout=120)


def test_standard_input_and_output(photo, tmp_path):
    # encode - -o -: a pipe in and out, as with cwebp; the report goes to stderr
    r = run_bytes("encode", "-", "-o", "-", "--json", stdin=photo.read_bytes(), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stderr)
    assert rep["input"] == "<stdin>" and rep["output"] == "<stdout>"
    assert r.stdout[:3] == b"AEZ" and rep["bpp"] == pytest.approx(len(r.stdout) * 8 / (451 * 300), rel=1e-12)
    assert rep["ratio_file"] == pytest.approx(photo.stat().st_size / len(r.stdout))
    on_disk = run("encode", photo, "-o", tmp_path / "file.aez")
    assert on_disk.returncode == 0 and (tmp_path / "file.aez").read_bytes() == r.stdout
    # decode - -o -: PNG on standard output, the same pixels as decoding the file
    d = run_bytes("decode", "-", "-o", "-", stdin=r.stdout, cwd=tmp_path)
    assert d.returncode == 0, d.stderr
    assert b"<stdin> -> <stdout>: 451x300" in d.stderr
    assert run("decode", tmp_path / "file.aez", "-o", tmp_path / "file.png").returncode == 0
    import io
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(d.stdout))), np.asarray(Image.open(tmp_path / "file.png")))
    # a file from stdin, into a named file
    f = run_bytes("decode", "-", "-o", tmp_path / "piped.png", stdin=r.stdout)
    assert f.returncode == 0 and (tmp_path / "piped.png").read_bytes() == (tmp_path / "file.png").read_bytes()
    i = run_bytes("info", "-", "--json", stdin=r.stdout)
    assert i.returncode == 0 and json.loads(i.stdout)["bytes"] == len(r.stdout), i.stderr
    assert not list(tmp_path.glob("-*"))                   # no file named "-" anywhere
    # misuse: one line each, nothing on standard output
    for args, stdin, msg in [
        (("encode", "-"), photo.read_bytes(), b"needs -o"),
        (("encode", "-", photo, "-o", tmp_path / "x"), b"", b"the only input"),
        (("encode", photo, photo.with_name("missing.png"), "-o", "-"), b"", b"single input"),
        (("decode", "-", "-o", "-"), photo.read_bytes(), b"not an .aez file"),
        (("encode", "-", "-o", "-"), b"", b"cannot read image"),
        (("encode", "-", "-o", "-"), b"garbage", b"<stdin>: cannot read image (not a format Pillow reads)"),
    ]:
        bad = run_bytes(*args, stdin=stdin, cwd=tmp_path)
        assert bad.returncode != 0 and msg in bad.stderr and bad.stdout == b"", (args, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1 and b"Traceback" not in bad.stderr


def test_tiny_and_animated_inputs_are_reported_honestly(tmp_path):
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "one.png")
    frames = [Image.fromarray(smooth_image(64, 64, seed=i)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "scan.tif", save_all=True, append_images=frames[1:])
    r = run("encode", tmp_path / "one.png", tmp_path / "anim.gif", tmp_path / "scan.tif")
    assert r.returncode == 0, r.stderr
    one, anim = r.stdout.split("anim.gif ->")
    anim, scan = anim.split("scan.tif ->")
    size = (tmp_path / "one.aez").stat().st_size
    assert f"{3 / size:.3f}:1 vs raw" in one                     # a tiny image grows: not "0.0:1"
    assert "animated image: only the first of its 3 frames is coded" in anim
    assert "note: multi-page TIFF: only the first of its 3 pages is coded" in scan    # not "animated"


def test_folders_and_clashing_output_names(tmp_path):
    for k, rel in enumerate(("photos/a.png", "photos/b.jpg", "other/a.png")):
        p = tmp_path / rel
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(smooth_image(64, 80, seed=k)).save(p)
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    # a folder stands for the images in it; other/a.png would land on photos/a.png's output: refused,
    # even with --force, so one run never overwrites its own results
    r = run("encode", tmp_path / "photos", tmp_path / "other" / "a.png", tmp_path / "empty", "-o", tmp_path / "out",
            "--force", "--json")
    assert r.returncode == 1
    assert sorted(json.loads(line)["input"] for line in r.stdout.splitlines()) == [
        str(tmp_path / "photos" / "a.png"), str(tmp_path / "photos" / "b.jpg")]
    assert "other/a.png: its output" in r.stderr and "is also the output of" in r.stderr
    assert "empty: no images in this folder" in r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.aez", "b.aez"]
    first = Image.open(tmp_path / "photos" / "a.png").size
    # decode takes folders of .aez files, next to them by default
    r = run("decode", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.aez", "a.png", "b.aez", "b.png"]
    # a file given twice, also through its folder, is coded once and is not a failure; with -o a file
    # name it is still one input
    photos = tmp_path / "photos"
    r = run("encode", photos / "a.png", photos / ".." / "photos" / "a.png", photos, "-o", tmp_path / "twice", "--json")
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["input"] for line in r.stdout.splitlines()] == [str(photos / "a.png"), str(photos / "b.jpg")]
    r = run("decode", tmp_path / "twice" / "a.aez", tmp_path / "twice" / "a.aez", "-o", tmp_path / "single.png")
    assert r.returncode == 0 and (tmp_path / "single.png").is_file(), r.stderr
    # two links to one file are two inputs with two outputs (as in denoise)
    (tmp_path / "linked.png").symlink_to(photos / "a.png")
    r = run("encode", photos / "a.png", tmp_path / "linked.png", "-o", tmp_path / "links", "--quiet")
    assert r.returncode == 0 and sorted(p.name for p in (tmp_path / "links").iterdir()) == ["a.aez", "linked.aez"]
    # photos/lnk/../a.png is the a.png beside lnk's target, another file: both are coded (its output
    # name clashes, which is said, not the input dropped in silence)
    (tmp_path / "other" / "deep").mkdir()
    (photos / "lnk").symlink_to(tmp_path / "other" / "deep")
    r = run("encode", photos / "a.png", photos / "lnk" / ".." / "a.png", "-o", tmp_path / "spelled", "--quiet")
    assert r.returncode == 1 and "is also the output of" in r.stderr, r.stderr
    assert Image.open(tmp_path / "out" / "a.png").size == first


def test_info_reads_the_header(photo):
    assert run("encode", photo, "--quiet").returncode == 0
    r = run("info", photo.with_suffix(".aez"), "--json")
    d = json.loads(r.stdout)
    assert (d["width"], d["height"], d["model"], d["mode"]) == (451, 300, "photo", "RGB")
    assert d["bytes"] == photo.with_suffix(".aez").stat().st_size


def test_a_folder_scan_leaves_hidden_files_out(tmp_path):
    """decode of a folder, like encode's, leaves out hidden files: the `._cat.aez` a Mac writes beside
    cat.aez on a shared disk is no .aez file, and failed the batch (exit 3)."""
    Image.fromarray(smooth_image(32, 40)).save(tmp_path / "cat.png")
    (tmp_path / "._cat.png").write_bytes(b"Mac OS X        \0\0")
    r = run("encode", tmp_path, "-o", tmp_path / "packed", "--quiet")
    assert r.returncode == 0, r.stderr
    (tmp_path / "packed" / "._cat.aez").write_bytes(b"Mac OS X        \0\0")
    r = run("decode", tmp_path / "packed", "-o", tmp_path / "out", "--json")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert [json.loads(line)["input"] for line in r.stdout.splitlines()] == [str(tmp_path / "packed" / "cat.aez")]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["cat.png"]


def test_info_finds_a_package_given_with_m(tmp_path, photo):
    """A file of a model that is not installed: info says how to name it, and -m names it."""
    import shutil

    from .conftest import ROOT

    pkg = tmp_path / "mine"
    shutil.copytree(ROOT / "models" / "photo", pkg)
    m = json.loads((pkg / "manifest.json").read_text())
    m["name"] = "mine"                             # another manifest: another model id
    (pkg / "manifest.json").write_text(json.dumps(m))
    aez = tmp_path / "x.aez"
    assert run("encode", photo, "-m", pkg, "-o", aez, "--quiet").returncode == 0
    r = run("info", aez)
    assert r.returncode == 0 and "not installed (name its package with -m" in r.stdout
    # the variable lists folders that hold packages: a package folder named in it is not searched
    assert "put the package in a folder that AECOMPRESS_MODELS lists" in r.stdout
    assert json.loads(run("info", aez, "--json").stdout)["model"] is None
    d = json.loads(run("info", aez, "-m", pkg, "--json").stdout)
    assert d["model"] == "mine" and d["quality"] == 75


def test_a_file_finds_the_package_that_lists_its_model_id(tmp_path, photo):
    """A package retrained on the encoder side only (train.tune_analysis) lists the ids whose files
    it decodes: decode and info find it for such a file, and models shows the ids."""
    import shutil

    from aecompress.package import load_package

    from .conftest import ROOT

    old = tmp_path / "old"
    shutil.copytree(ROOT / "models" / "photo", old)
    m = json.loads((old / "manifest.json").read_text())
    m["name"] = "old"                              # another manifest: another model id, not installed
    (old / "manifest.json").write_text(json.dumps(m))
    aez = tmp_path / "x.aez"
    assert run("encode", photo, "-m", old, "-o", aez, "--quiet").returncode == 0
    assert run("decode", aez, "-o", tmp_path / "none.png").returncode != 0       # no package has its id
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "photo", models / "new")
    m = json.loads((models / "new" / "manifest.json").read_text())
    m["name"] = "new"
    m["decodes"] = [load_package(old).model_id.hex()]
    (models / "new" / "manifest.json").write_text(json.dumps(m))
    env = {**os.environ, "AECOMPRESS_MODELS": str(models)}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "aecompress", *map(str, args)], capture_output=True, text=True,
                              timeout=120, env=env)

    r = cli("decode", aez, "-o", tmp_path / "back.png")
    assert r.returncode == 0, r.stderr
    direct = cli("decode", aez, "-m", old, "-o", tmp_path / "direct.png")
    assert direct.returncode == 0, direct.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "back.png")), np.asarray(Image.open(tmp_path / "direct.png")))
    assert json.loads(cli("info", aez, "--json").stdout)["model"] == "new"
    listed = {r["name"]: r for r in json.loads(cli("models", "--json").stdout)}
    assert listed["new"]["decodes"] == [load_package(old).model_id[:8].hex()]


def test_no_overwrite_without_force(photo):
    out = photo.with_suffix(".aez")
    out.write_bytes(b"precious")
    r = run("encode", photo)
    assert r.returncode != 0 and "exists" in r.stderr and "Traceback" not in r.stderr
    assert out.read_bytes() == b"precious"
    assert run("encode", photo, "--force", "--quiet").returncode == 0
    assert out.read_bytes()[:3] == b"AEZ"


def test_several_inputs_into_a_folder_with_one_bad_file(tmp_path, photo):
    Image.fromarray(smooth_image(50, 70)).save(tmp_path / "b.jpg")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    outdir = tmp_path / "out"
    r = run("encode", photo, tmp_path / "broken.png", tmp_path / "b.jpg", "-o", outdir, "--quiet")
    assert r.returncode == 1
    assert "broken.png" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in outdir.iterdir()) == ["b.aez", "cat.aez"]
    r = run("decode", outdir / "b.aez", outdir / "cat.aez", "-o", tmp_path / "dec")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "dec").iterdir()) == ["b.png", "cat.png"]
    # a batch ends with its failures' exit code when they share one (3: damaged .aez), else 1
    (outdir / "cut.aez").write_bytes((outdir / "b.aez").read_bytes()[:30])
    (outdir / "junk.aez").write_bytes(b"junk")
    r = run("decode", outdir / "cut.aez", outdir / "cat.aez", outdir / "junk.aez", "-o", tmp_path / "dec2")
    assert r.returncode == 3 and "1 done, 2 failed" in r.stderr, r.stderr
    r = run("decode", outdir / "cut.aez", outdir / "missing.aez", "-o", tmp_path / "dec3")
    assert r.returncode == 1 and "0 done, 2 failed" in r.stderr, r.stderr


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_aez_gives_one_line_and_no_output(tmp_path, photo, damage):
    assert run("encode", photo, "--quiet").returncode == 0
    data = photo.with_suffix(".aez").read_bytes()
    bad = {"truncate": data[: len(data) // 2], "flip": data[:40] + bytes([data[40] ^ 4]) + data[41:],
           "garbage": b"hello world" * 10, "empty": b""}[damage]
    f = tmp_path / "bad.aez"
    f.write_bytes(bad)
    r = run("decode", f)
    assert r.returncode == 3
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "bad.png").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_unknown_model_and_unreadable_image(tmp_path, photo):
    r = run("encode", photo, "-m", "no-such-model")
    assert r.returncode == 4 and "unknown model" in r.stderr
    (tmp_path / "x.jpg").write_text("not an image")
    r = run("encode", tmp_path / "x.jpg")
    assert r.returncode == 1 and "cannot read image" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.aez").exists()


def test_absurd_image_dimensions(tmp_path):
    """A PNG whose header claims 40000 x 40000 pixels is refused before decoding."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")
    (tmp_path / "huge.png").write_bytes(png)
    r = run("encode", tmp_path / "huge.png")
    assert r.returncode == 1 and "too large" in r.stderr


def test_full_disk_leaves_nothing_behind(tmp_path, monkeypatch):
    """ENOSPC while writing: one-line error, no partial or temporary file."""
    from typer.testing import CliRunner

    import aecompress.fsutil as fsutil
    from aecompress.cli import app

    src = tmp_path / "a.png"
    Image.fromarray(smooth_image(64, 64)).save(src)

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil.os, "fsync", no_space)
    res = CliRunner().invoke(app, ["encode", str(src), "--quiet"])
    assert res.exit_code != 0
    assert "no space left" in str(res.exception)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_quiet_encode_skips_the_reconstruction_and_writes_the_same_file(tmp_path, monkeypatch):
    """--quiet prints no report, so nothing is reconstructed for PSNR/MS-SSIM; the .aez is the same."""
    from typer.testing import CliRunner

    from aecompress.cli import app
    from aecompress.codec import Codec

    src = tmp_path / "a.png"
    Image.fromarray(smooth_image(96, 128)).save(src)
    assert CliRunner().invoke(app, ["encode", str(src), "-o", str(tmp_path / "full.aez"), "-q", "60"]).exit_code == 0
    calls = []
    real = Codec.render                 # the synthesis, whichever way the reconstruction gets to it
    monkeypatch.setattr(Codec, "render", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    res = CliRunner().invoke(app, ["encode", str(src), "-o", str(tmp_path / "quiet.aez"), "-q", "60", "--quiet"])
    assert res.exit_code == 0 and res.output == "" and calls == []
    assert (tmp_path / "quiet.aez").read_bytes() == (tmp_path / "full.aez").read_bytes()
    # --json with --quiet still reports, so it still reconstructs
    res = CliRunner().invoke(app, ["encode", str(src), "-o", str(tmp_path / "j.aez"), "-q", "60", "--quiet", "--json"])
    assert res.exit_code == 0 and calls == [1] and json.loads(res.output)["psnr"] > 20


def test_models_lists_the_photo_codec():
    r = run("models", "--json")
    names = [m["name"] for m in json.loads(r.stdout)]
    assert "photo" in names
    table = run("models").stdout
    assert "photo" in table and "denoise" in table
    assert "sigma" in table                           # the denoiser's measured PSNRs, not "-"
    assert "models/photo" in table.replace("\\", "/")  # where each package lives


def test_an_image_too_wide_for_the_format_is_refused_before_encoding(tmp_path):
    """The .aez header records at most 262144 pixels a side: encode must not write a file that
    decode would then call damaged."""
    src = tmp_path / "wide.png"
    Image.fromarray(np.zeros((1, 270_000, 3), np.uint8)).save(src)
    r = run("encode", src, "-o", tmp_path / "wide.aez")
    assert r.returncode == 1 and "too large for an .aez file" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "wide.aez").exists()


def test_greyscale_report_is_the_psnr_of_the_decoded_file(tmp_path, photo):
    """A greyscale source decodes to one channel (the mean of the model's three): the report must
    measure those pixels, not the three-channel reconstruction."""
    grey = tmp_path / "grey.png"
    Image.open(photo).convert("L").save(grey)
    r = run("encode", grey, "--json", "-q", "60")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert run("decode", grey.with_suffix(".aez"), "-o", tmp_path / "dec.png").returncode == 0
    dec = np.asarray(Image.open(tmp_path / "dec.png"))
    assert dec.ndim == 2
    src = np.asarray(Image.open(grey))
    assert rep["psnr"] == pytest.approx(psnr(src, dec), abs=1e-9)
    assert rep["ms_ssim"] == pytest.approx(ms_ssim(src, dec), abs=1e-9)


@pytest.mark.parametrize("flag,value", [("-q", "nan"), ("--bpp", "nan"), ("--psnr", "inf"), ("--bpp", "inf")])
def test_non_finite_targets_are_one_line_errors(photo, flag, value):
    r = run("encode", photo, flag, value, "-o", photo.with_name("x.aez"))
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not photo.with_name("x.aez").exists()


def test_output_paths_a_folder_by_slash_never_the_input(tmp_path, photo):
    # a trailing slash names a folder even for one input (the README's `-o out/` with one match)
    r = run("encode", photo, "-o", f"{tmp_path / 'enc'}/", "-q", "50")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "enc" / "cat.aez").is_file()
    r = run("decode", tmp_path / "enc" / "cat.aez", "-o", f"{tmp_path / 'dec'}/")
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "dec" / "cat.png").size == Image.open(photo).size
    # an output that is the input itself is refused even with --force
    before = photo.read_bytes()
    r = run("encode", photo, "-o", photo, "--force")
    assert r.returncode == 1 and "its own input" in r.stderr
    assert photo.read_bytes() == before
    # several inputs and -o naming an existing file: a clear error, nothing written
    other = tmp_path / "other.png"
    other.write_bytes(before)
    r = run("encode", photo, other, "-o", other)
    assert r.returncode == 1 and "need a folder" in r.stderr
    assert other.read_bytes() == before


def test_json_keeps_its_fields_and_notes_go_to_stderr(photo):
    """--json prints exactly the documented fields; a missed target is still said, on stderr."""
    r = run("encode", photo, "--size", "30", "--json", "-o", photo.with_name("s.aez"))
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)) == {"bpp", "ratio_raw", "ratio_file", "psnr", "ms_ssim", "seconds", "provider",
                                         "input", "output"}
    assert "target 30 bytes not reachable: the smallest file" in r.stderr


@pytest.mark.parametrize("signame,code,word", [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted")])
def test_a_signal_leaves_no_partial_file(tmp_path, photo, signame, code, word):
    """`kill` or Ctrl-C during a decode: exit 143 or 130, a one-line message, no temporary or
    partial output."""
    import signal
    import time

    big = tmp_path / "big.png"
    Image.open(photo).resize((2400, 1600)).save(big)
    assert run("encode", big, "-o", tmp_path / "big.aez", "--quiet").returncode == 0
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "aecompress", "decode", str(tmp_path / "big.aez"), "-o",
                             str(out / "big.webp")], stderr=subprocess.PIPE, text=True,
                            # a background job's children start with SIGINT ignored; a terminal's do not
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    def cpu_seconds() -> float:                # user + system time of the process so far (Linux)
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    deadline = time.monotonic() + 60
    while proc.poll() is None and cpu_seconds() < 1.0 and time.monotonic() < deadline:
        time.sleep(0.005)                      # past start-up and imports, into the decoding
    assert proc.poll() is None, "decode finished before it could be interrupted"
    os.kill(proc.pid, getattr(signal, signame))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and word in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("after", [0.0, 0.01, 0.03])
def test_ctrl_c_while_the_command_line_loads_is_quiet(tmp_path, after):
    """Ctrl-C in the tenth of a second that numpy, typer and the commands take to import: one line
    and exit 130, not a traceback from whichever module was loading. The signal goes once numpy's
    C module is mapped (the command line is loading: Python's own start-up, which no program can
    guard, is over), then `after` seconds later."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "aecompress", "models"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if "_multiarray_umath" in maps.read_text():
                break
        except OSError:
            break
        time.sleep(0.001)
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the command finished before the signal")
    assert "Traceback" not in err and proc.returncode == 130, (proc.returncode, err)
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err


def test_malformed_manifest_is_a_model_error(tmp_path, photo):
    import shutil

    from .conftest import ROOT

    pkg = tmp_path / "pk"
    shutil.copytree(ROOT / "models" / "photo", pkg)
    m = json.loads((pkg / "manifest.json").read_text())
    m["levels"] = None
    (pkg / "manifest.json").write_text(json.dumps(m))
    r = run("encode", photo, "-m", pkg, "-o", tmp_path / "x.aez")
    assert r.returncode == 4 and "malformed manifest" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("change, expect", [
    ({"graphs": ["a.onnx"]}, "graphs is not a table"),
    ({"graphs": {"analysis": "analysis.onnx"}}, "no hyper_analysis, synthesis graph"),
    ({"graphs": {"analysis": "../../etc/passwd", "hyper_analysis": "h", "synthesis": "s"}}, "inside the package"),
    ({"channels": 4}, "channels must be 1 or 3"),
    ({"kind": "upscaler"}, "unknown kind"),
    ({"tables": 7}, "tables is not a file name"),
])
def test_a_malformed_package_on_the_search_path_is_skipped(tmp_path, photo, change, expect):
    """A package whose manifest has the wrong shape is refused by name, and skipped when the model
    of a file is looked up among the installed ones (it used to crash every decode)."""
    import shutil

    from aecompress.package import manifest_problem

    from .conftest import ROOT

    models = tmp_path / "models"
    bad = models / "bad"
    shutil.copytree(ROOT / "models" / "photo", bad)
    m = json.loads((bad / "manifest.json").read_text())
    m.update(change)
    assert expect in manifest_problem(m)
    (bad / "manifest.json").write_text(json.dumps(m))
    aez = tmp_path / "cat.aez"
    assert run("encode", photo, "-o", aez).returncode == 0
    env = {**os.environ, "AECOMPRESS_MODELS": str(models)}
    r = subprocess.run([sys.executable, "-m", "aecompress", "decode", str(aez), "-o", str(tmp_path / "back.png")],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "aecompress", "encode", str(photo), "-m", "bad", "-o",
                        str(tmp_path / "x.aez")], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 4 and "malformed manifest" in r.stderr and expect in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "x.aez").exists()


def test_progress_bar_shows_the_rate(tmp_path, photo):
    """Several files on a terminal: a progress bar with count and files per second (its rate
    column used to stay empty)."""
    outs = []
    for k in range(3):
        p = tmp_path / f"c{k}.png"
        Image.open(photo).crop((0, 0, 96 + 16 * k, 64)).save(p)
        outs.append(p)
    assert run("encode", *outs, "-o", str(tmp_path / "z") + "/", "--quiet").returncode == 0
    code, text = run_on_terminal(["decode", *sorted((tmp_path / "z").iterdir()), "-o", str(tmp_path / "back") + "/",
                                  "--quiet"])
    assert code == 0 and "3/3" in text and "files/s" in text, text


def test_outputs_that_are_not_regular_files(tmp_path, photo):
    """--force replaces a file, never a named pipe or a device (it used to rename the new file over
    them); a symbolic link is written through, and stays a link."""
    assert run("encode", photo, "--quiet").returncode == 0
    aez = photo.with_suffix(".aez")
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    r = run("decode", aez, "-o", pipe, "--force")
    assert r.returncode == 1 and "not a regular file" in r.stderr and len(r.stderr.splitlines()) == 1
    assert pipe.is_fifo()
    target = tmp_path / "real.png"
    target.write_bytes(b"old")
    link = tmp_path / "link.png"
    link.symlink_to(target)
    r = run("decode", aez, "-o", link)
    assert r.returncode == 1 and "exists" in r.stderr and target.read_bytes() == b"old"
    r = run("decode", aez, "-o", link, "--force")
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and Image.open(target).size == Image.open(photo).size
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_inputs_that_are_devices_or_pipes(tmp_path, photo):
    """/dev/zero as input is refused at once (it read without end), and the other files of the run
    go on; a pipe is an input like a file (/dev/stdin in a pipeline, a shell's <(...))."""
    import threading

    assert run("encode", photo, "--quiet").returncode == 0
    aez = photo.with_suffix(".aez")
    r = run("decode", "/dev/zero", aez, "-o", tmp_path / "out")
    assert r.returncode == 1 and "/dev/zero is a device, not a file" in r.stderr, r.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["cat.png"]
    r = run("info", "/dev/zero")
    assert r.returncode == 1 and "is a device" in r.stderr
    r = run("encode", "/dev/zero", "-o", tmp_path / "x.aez")
    assert r.returncode == 1 and "is a device" in r.stderr and not (tmp_path / "x.aez").exists()
    for cmd, src, out in (("decode", aez, "p.png"), ("encode", photo, "p.aez")):
        pipe = tmp_path / f"pipe{src.suffix}"
        os.mkfifo(pipe)
        feeder = threading.Thread(target=lambda: pipe.write_bytes(src.read_bytes()))
        feeder.start()
        r = run(cmd, pipe, "-o", tmp_path / out, "--json")
        feeder.join(timeout=60)
        assert r.returncode == 0 and (tmp_path / out).stat().st_size > 0, r.stderr
        if cmd == "encode":                  # the input's size is what came through the pipe
            rep = json.loads(r.stdout)
            assert rep["ratio_file"] == pytest.approx(photo.stat().st_size / (tmp_path / out).stat().st_size)
        pipe.unlink()


def test_dev_stdout_is_standard_output(tmp_path, photo):
    """-o /dev/stdout writes to standard output; with a shell's redirection behind it, renaming over
    it replaced the redirected file and all that was in it."""
    log = tmp_path / "log.bin"
    log.write_bytes(b"HEADER")
    with open(log, "ab") as f:
        r = subprocess.run([sys.executable, "-m", "aecompress", "encode", str(photo), "-o", "/dev/stdout",
                            "--force", "--quiet"], stdout=f, stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    data = log.read_bytes()
    assert data.startswith(b"HEADERAEZ") and len(data) > 1000
    link = tmp_path / "fd1"
    link.symlink_to("/proc/self/fd/1")
    fd_dir = tmp_path / "fds"
    fd_dir.symlink_to("/dev/fd")
    # however the redirected file is spelled, it is refused, and what it held stays
    for out in (link, "/tmp/../dev/fd/1", fd_dir / "1"):
        with open(log, "ab") as f:
            r = subprocess.run([sys.executable, "-m", "aecompress", "encode", str(photo), "-o", str(out), "--force"],
                               stdout=f, stderr=subprocess.PIPE, text=True, timeout=120)
        assert r.returncode == 1 and ("is this command's standard output" in r.stderr
                                      or "names an open file descriptor" in r.stderr), (out, r.stderr)
        assert log.read_bytes() == data
    with open(log, "ab") as f:                             # the file itself, not through /dev/fd: the inode
        r = subprocess.run([sys.executable, "-m", "aecompress", "encode", str(photo), "-o", str(log), "--force"],
                           stdout=f, stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 1 and "is this command's standard output" in r.stderr and log.read_bytes() == data
    # another descriptor a shell opened (`3>>log`), however spelled, is refused as well
    for out in ("/dev/fd/3", "/tmp/../proc/self/fd/3", fd_dir / "3"):
        r = subprocess.run(["bash", "-c", 'exec 3>>"$0"; exec "$1" -m aecompress encode "$2" -o "$3" --force --quiet',
                            str(log), sys.executable, str(photo), str(out)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and "names an open file descriptor" in r.stderr, (out, r.stderr)
        assert log.read_bytes() == data


def test_standard_output_without_a_file_descriptor(photo):
    """-o - where standard output is a Python object (a test runner's, an embedding program's)."""
    from typer.testing import CliRunner

    from aecompress.cli import app

    r = CliRunner().invoke(app, ["encode", str(photo), "-o", "-", "--quiet"])
    assert r.exit_code == 0 and r.stdout_bytes.startswith(b"AEZ"), r.stderr


def test_a_closed_report_pipe_stops_the_batch_quietly(tmp_path, photo):
    """`encode folder --json | head -c 10`: the reader went away; no error per file, no "bug"."""
    for k in range(6):
        Image.fromarray(smooth_image(40, 48, seed=k)).save(tmp_path / f"{k}.png")
    p = subprocess.Popen([sys.executable, "-m", "aecompress", "encode", str(tmp_path), "-o", str(tmp_path / "o"),
                          "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(10)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 1 and "unexpected" not in err and "failed" not in err, err


def test_a_loop_of_links_fails_alone(tmp_path, photo):
    (tmp_path / "la.png").symlink_to("lb.png")
    (tmp_path / "lb.png").symlink_to("la.png")
    r = run("encode", tmp_path / "la.png", photo, "-o", tmp_path / "out", "--quiet")
    assert r.returncode == 1 and "la.png: a link that leads nowhere" in r.stderr, r.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["cat.aez"]


def test_a_latent_that_overflows_the_synthesis_is_a_damaged_file(tmp_path):
    """A checksummed file whose escape value is within the format's bound but makes the synthesis
    give NaN: a damaged file (exit 3), not a broken model (exit 4)."""
    from aecompress.compress import open_codec

    from .conftest import coded_with_escape

    bad = tmp_path / "bad.aez"
    bad.write_bytes(coded_with_escape(open_codec(None, "cpu", 1))[1])
    r = run("decode", bad)
    assert r.returncode == 3 and "far out of the model's range" in r.stderr, r.stderr
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_standard_output_on_a_full_disk(photo):
    """Writing to standard output fails with one line and a non-zero exit (it was a traceback, and
    a short write on a full disk even passed as success)."""
    assert run("encode", photo, "--quiet").returncode == 0
    for args in (("decode", photo.with_suffix(".aez")), ("encode", photo, "--quiet")):
        with open("/dev/full", "wb") as full:
            r = subprocess.run([sys.executable, "-m", "aecompress", *map(str, args), "-o", "-"], stdout=full,
                               stderr=subprocess.PIPE, text=True, timeout=120)
        assert r.returncode == 1 and r.stderr.strip() == \
            "aecompress: error: no space left on device while writing to standard output", r.stderr
    # the file goes to disk and only the report to the full stdout: it says so, in one line
    for extra in ((), ("--json",)):
        with open("/dev/full", "wb") as full:
            r = subprocess.run([sys.executable, "-m", "aecompress", "encode", str(photo), "-o",
                                str(photo.with_name("r.aez")), "--force", *extra], stdout=full,
                               stderr=subprocess.PIPE, text=True, timeout=120)
        assert r.returncode == 1 and r.stderr.strip().endswith(
            "r.aez was written, but its report could not be printed (No space left on device)"), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and photo.with_name("r.aez").stat().st_size > 0


def test_an_unreadable_input_fails_alone(tmp_path, photo):
    """A file the user may not read is one failure among the others (Typer used to refuse the whole
    run with a usage box). Run as an unprivileged user when the tests run as root."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp())
    try:
        os.chmod(d, 0o777)
        ok, locked = d / "ok.png", d / "locked.png"
        shutil.copy(photo, ok)
        shutil.copy(photo, locked)
        os.chmod(locked, 0)
        os.chmod(ok, 0o644)
        drop = None
        if os.geteuid() == 0:
            def drop():
                os.setgid(65534)
                os.setuid(65534)
        cmd = [sys.executable, "-m", "aecompress", "encode", str(locked), str(ok), "-o", str(d / "out"), "--quiet"]
        try:
            probe = subprocess.run([sys.executable, "-c", "import aecompress.cli"], preexec_fn=drop,
                                   capture_output=True).returncode
        except OSError:
            probe = -1
        if probe != 0:
            pytest.skip("the unprivileged user cannot run this checkout (see the in-process test below)")
        r = subprocess.run(cmd, preexec_fn=drop, capture_output=True, text=True, timeout=120, cwd=d)
        assert r.returncode == 1, r.stderr
        assert "locked.png" in r.stderr and "Usage" not in r.stderr and "1 done, 1 failed" in r.stderr
        assert [p.name for p in (d / "out").iterdir()] == ["ok.aez"]
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_an_unreadable_input_fails_alone_in_process(tmp_path, photo, monkeypatch):
    """The same as root can see it: the command line must not ask os.access first (Click's readable
    check refused the whole run), and the file that cannot be read fails alone."""
    from typer.testing import CliRunner

    from aecompress.cli import app

    assert run("encode", photo, "--quiet").returncode == 0
    locked = tmp_path / "locked.aez"
    locked.write_bytes(photo.with_suffix(".aez").read_bytes())
    real_access, real_read = os.access, Path.read_bytes
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: Path(p) != locked and real_access(p, mode, *a, **k))

    def read_bytes(self):
        if self == locked:
            raise PermissionError(13, "Permission denied")
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    r = CliRunner().invoke(app, ["decode", str(locked), str(photo.with_suffix(".aez")), "-o", str(tmp_path / "out"),
                                 "--quiet"])
    err = r.stderr
    assert r.exit_code == 1, (r.exit_code, err)
    assert "locked.aez: cannot read (Permission denied)" in err and "1 done, 1 failed" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["cat.png"]


def test_a_model_that_gives_nan_is_a_model_error(tmp_path, photo):
    """A diverged or damaged package whose graph outputs NaN: exit 4 with one line, no file (it made
    garbage pixels, or latents that overflowed the coder)."""
    import shutil

    import onnx
    from onnx import helper, numpy_helper

    from .conftest import ROOT

    pkg = tmp_path / "nanpkg"
    shutil.copytree(ROOT / "models" / "photo", pkg)
    g = onnx.load(pkg / "analysis.onnx")
    out = g.graph.output[0].name
    g.graph.node[-1].output[0] = out + "_pre"
    g.graph.initializer.append(numpy_helper.from_array(np.array(np.nan, dtype=np.float32), "nan_c"))
    g.graph.node.append(helper.make_node("Mul", [out + "_pre", "nan_c"], [out]))
    onnx.save(g, pkg / "analysis.onnx")
    r = run("encode", photo, "-m", pkg, "-o", tmp_path / "x.aez")
    assert r.returncode == 4 and "NaN" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "x.aez").exists()


def test_models_summarises_every_kind_of_measurement():
    """`aecompress models` says what each manifest measured: a dense codec's bpp and PSNR (it showed
    "-"), and where a denoiser was measured (it called training photos "val photos")."""
    from aecompress.cli.codec import _measured_summary

    dense = {"images": 12, "mean_file_bytes": 26.0, "mean_psnr": 18.25, "bits_per_pixel": 0.203,
             "set": "held-out validation images"}
    assert _measured_summary(dense) == "0.203 bpp (26 bytes a file), 18.25 dB on 12 held-out validation images"
    den = {"images": 4, "set": "4 training photos of mydata (no --val)", "psnr_sigma15": 24.66}
    assert _measured_summary(den) == "sigma 15: 24.66 dB (4 training photos of mydata (no --val), blind)"
    den = {"images": 28, "set": "data/val/photos", "psnr_sigma25": 31.36, "psnr_clean_input": 50.77}
    assert _measured_summary(den) == "sigma 25: 31.36 dB; clean input kept at 50.8 dB (28 photos of data/val/photos, blind)"
    assert _measured_summary({}) == "-"


def test_the_wrong_kind_of_model_is_a_model_error(photo):
    r = run("denoise", photo, "-m", "photo", "-o", photo.with_name("d.png"))
    assert r.returncode == 4 and "is a codec, not a denoiser" in r.stderr
    r = run("encode", photo, "-m", "denoise")
    assert r.returncode == 4 and "is a denoiser, not a codec" in r.stderr


def test_a_newline_in_a_file_name_keeps_errors_on_one_line(tmp_path):
    bad = tmp_path / "new\nline.aez"
    bad.write_bytes(b"not an aez")
    r = run("decode", bad)
    assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1 and "new\\nline.aez" in r.stderr
    r = run("decode", bad, tmp_path / "second\rone.aez")
    assert r.returncode == 1 and r.stderr.count("\n") == 3 and "second\\rone.aez" in r.stderr, r.stderr


def test_an_output_that_is_another_input_is_refused(tmp_path, photo):
    """An output that is, through a link, another input of the same run is refused even with --force
    (inputs are never modified)."""
    assert run("encode", photo, "--quiet").returncode == 0
    aez = photo.with_suffix(".aez")
    before = aez.read_bytes()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "cat.png").symlink_to(photo)       # decode's output, a link to an input
    r = run("decode", aez, photo, "-o", tmp_path / "out", "--force")
    assert r.returncode == 1 and "would replace an input of this run" in r.stderr, r.stderr
    assert (tmp_path / "out" / "cat.png").is_symlink() and photo.read_bytes()[:4] == b"\x89PNG"
    assert aez.read_bytes() == before



def test_colour_in_another_rgb_space_is_coded_as_srgb(tmp_path):
    """.aez files hold sRGB: an image tagged with another RGB profile is converted before coding
    (and the report says so), so it decodes with the colours it showed; an sRGB profile is not."""
    from PIL import ImageCms

    from .conftest import linear_rgb_profile

    grey = np.full((64, 96, 3), 128, np.uint8)                 # linear light 0.5: sRGB 188
    Image.fromarray(grey).save(tmp_path / "lin.png", icc_profile=linear_rgb_profile())
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(grey).save(tmp_path / "s.png", icc_profile=srgb)
    r = run("encode", tmp_path / "lin.png", tmp_path / "s.png", "-q", "90")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("colours converted from linear sRGB to sRGB") == 1, r.stdout
    assert run("decode", tmp_path / "lin.aez", tmp_path / "s.aez", "-o", tmp_path / "dec").returncode == 0
    assert abs(float(np.asarray(Image.open(tmp_path / "dec" / "lin.png")).mean()) - 188) < 3
    assert abs(float(np.asarray(Image.open(tmp_path / "dec" / "s.png")).mean()) - 128) < 3


def test_small_report_and_naming_details(photo, tmp_path):
    """-q 45 reports q 45 (the header stores the level to 1/4096: it read back as 45.01); a decode
    to a name without an extension is a PNG; an image too large for .aez is named in the error."""
    r = run("encode", photo, "-q", "45", "-o", tmp_path / "c.aez")
    assert r.returncode == 0 and " q 45 " in r.stdout.replace(",", " "), r.stdout
    assert run("decode", tmp_path / "c.aez", "-o", tmp_path / "noext").returncode == 0
    assert Image.open(tmp_path / "noext").format == "PNG"
    Image.fromarray(np.zeros((1, 262145, 3), np.uint8)).save(tmp_path / "wide.png")
    r = run("encode", tmp_path / "wide.png", "-o", tmp_path / "w.aez")
    assert r.returncode == 1 and r.stderr.startswith(f"aecompress: error: {tmp_path / 'wide.png'}: "), r.stderr


def _patch_tiff_tag(path, tag, value):
    """Overwrite the (inline, SHORT or LONG) value of one tag in a little-endian TIFF's first directory."""
    import struct

    b = bytearray(path.read_bytes())
    ifd = struct.unpack_from("<I", b, 4)[0]
    for i in range(struct.unpack_from("<H", b, ifd)[0]):
        at = ifd + 2 + 12 * i
        if struct.unpack_from("<H", b, at)[0] == tag:
            kind = struct.unpack_from("<H", b, at + 2)[0]
            struct.pack_into("<H" if kind == 3 else "<I", b, at + 8, value)
    path.write_bytes(bytes(b))


def test_image_libraries_print_nothing_of_their_own(tmp_path):
    """libtiff (inside Pillow) prints on descriptor 2 for damaged or odd TIFFs, and Pillow logs some
    read errors: the command line says one line of its own, or nothing on success."""
    import tifffile

    a = smooth_image(32, 48)
    tifffile.imwrite(tmp_path / "lzw.tif", a, photometric="rgb", compression="lzw", metadata=None,
                     resolution=(300, 300), resolutionunit="INCH")
    whole = (tmp_path / "lzw.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "unit.tif").write_bytes(whole)
    _patch_tiff_tag(tmp_path / "unit.tif", 296, 65535)              # ResolutionUnit: no such unit
    (tmp_path / "spp.tif").write_bytes(whole)
    _patch_tiff_tag(tmp_path / "spp.tif", 277, 5000)                # SamplesPerPixel
    r = run("encode", tmp_path / "cut.tif", "-o", tmp_path / "cut.aez")
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    r = run("encode", tmp_path / "spp.tif", "-o", tmp_path / "spp.aez")
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    r = run("encode", tmp_path / "unit.tif", "-o", tmp_path / "unit.aez")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = run("denoise", tmp_path / "unit.tif", "-o", tmp_path / "unit-d.tif")
    assert r.returncode == 0 and r.stderr == "", r.stderr


@pytest.mark.parametrize("args, words", [
    (["encode", "{photo}", "-q", "0"], "Invalid value for '-q' / '--quality'"),
    (["encode", "{photo}", "--threads", "0"], "Invalid value for '--threads'"),
    # onnxruntime starts every thread asked for (100,000 exhausted the memory); past 64 bits it raised a "bug"
    (["decode", "x.aez", "--threads", "1025"], "1025 is not in the range 1<=x<=1024"),
    (["encode", "{photo}", "--threads", str(10 ** 20)], "is not in the range 1<=x<=1024"),
    (["encode", "{photo}", "--frce"], "No such option: --frce"),
    (["encode"], "Missing argument"),
    (["encod", "{photo}"], "No such command 'encod'"),
    (["decode", "x.aez", "--device", "gpu"], "'gpu' is not one of auto, cpu, cuda"),
    (["encode", "{photo}", "-m", ""], "the model name is empty"),
    (["denoise", "{photo}", "-m", " "], "the model name is empty"),
    # values aecompress itself checks are usage errors too (they were exit 1, without the --help)
    (["encode", "{photo}", "-q", "nan"], "Invalid value for '-q': must be a finite number"),
    (["encode", "{photo}", "-q", "50", "--bpp", "1"], "use only one of -q, --bpp, --psnr and --size"),
    (["denoise", "{photo}", "--ensemble", "3"], "Invalid value for '--ensemble': must be one of 1, 2, 4, 8"),
    (["denoise", "{photo}", "--engine", "spark"], "Invalid value for '--engine'"),
    (["denoise", "{photo}", "--sigma", "loud"], "Invalid value for '--sigma'"),
    (["encode", "{photo}", "--skip-existing", "--force"], "choose one"),
    (["decode", "x.aez", "--skip-existing", "--force"], "choose one"),
    (["embed", "photo", "{photo}", "-o", "-"], "not standard output"),
    (["embed", "photo", "{photo}", "-o", "codes/"], "codes/ names a folder"),
])
def test_a_command_line_typer_rejects_is_one_line(photo, args, words):
    """Typer's own usage errors print one line, as every other error does, not a usage box; exit 2."""
    r = run(*[a.format(photo=photo) for a in args], cwd=photo.parent)     # nothing lands in the checkout
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("aecompress: error: ") and words in lines[0], r.stderr
    assert "--help' " not in lines[0] and lines[0].endswith("--help')"), lines[0]
    assert r.stdout == "" and sorted(p.name for p in photo.parent.iterdir()) == ["cat.png"]


def test_cuda_without_a_cuda_runtime_fails_once_before_any_file(tmp_path, photo):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    other = tmp_path / "dog.png"
    other.write_bytes(photo.read_bytes())
    r = run("encode", photo, other, "-o", tmp_path / "out", "--device", "cuda")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no CUDA provider" in r.stderr, r.stderr
    assert "failed" not in r.stderr and not (tmp_path / "out").exists()


def test_models_lists_the_good_packages_and_names_the_broken_ones(tmp_path):
    import shutil

    from .conftest import ROOT

    models = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "photo", models / "nosynth")
    (models / "nosynth" / "synthesis.onnx").unlink()
    (models / "junk").mkdir()
    (models / "junk" / "manifest.json").write_text("{")
    env = {**os.environ, "AECOMPRESS_MODELS": str(models)}
    r = subprocess.run([sys.executable, "-m", "aecompress", "models", "--json"], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(row["name"] for row in json.loads(r.stdout)) == ["denoise", "photo"]
    assert all(row["path"].startswith(str(ROOT)) for row in json.loads(r.stdout))
    warnings = r.stderr.splitlines()
    assert len(warnings) == 2 and all(w.startswith("aecompress: warning: skipped ") for w in warnings)
    assert "synthesis.onnx is missing" in r.stderr and "junk" in r.stderr and "unreadable manifest" in r.stderr


@pytest.mark.parametrize("table, change, words", [
    ("log_gain", lambda a: a[:1], "log_gain has shape (1, 128)"),
    ("log_inv_gain", lambda a: a * np.nan, "not one finite row"),
    ("y_length", lambda a: a[:-1], "offsets, lengths and minimums differ"),
    ("z_offset", lambda a: a + 10**6, "do not lie inside z_pmf"),
    ("log_scale_bounds", lambda a: a[:-1], "one y table more than log_scale_bounds"),
    ("hs_w0", lambda a: a.reshape(-1), "not a convolution's four axes"),
    ("z_length", lambda a: a[:-1], "offsets, lengths and minimums differ"),
])
def test_tables_that_do_not_fit_the_model_are_a_model_error(tmp_path, photo, table, change, words):
    """A damaged tables.npz used to code at level 0 whatever the quality (a gain table of one row)
    or fail later with an index error; it is refused by name before anything is written."""
    import shutil

    from .conftest import ROOT

    pkg = tmp_path / "pk"
    shutil.copytree(ROOT / "models" / "photo", pkg)
    t = dict(np.load(pkg / "tables.npz"))
    t[table] = change(t[table])
    np.savez(pkg / "tables.npz", **t)
    r = run("encode", photo, "-m", pkg, "-o", tmp_path / "x.aez")
    assert r.returncode == 4 and words in r.stderr and "tables do not fit" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and not (tmp_path / "x.aez").exists()


def test_onnxruntime_says_nothing_of_its_own_without_a_writable_home(tmp_path, photo):
    """onnxruntime warns on descriptor 2 while it loads when it cannot keep its telemetry id (a home
    folder that cannot be written); the report stays ours alone."""
    env = {**os.environ, "HOME": "/dev/null"}
    r = subprocess.run([sys.executable, "-m", "aecompress", "encode", str(photo), "-o", str(tmp_path / "x.aez"),
                        "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    json.loads(r.stdout)


def test_a_header_claiming_a_huge_image_over_a_short_stream_fails_at_once(tmp_path, photo, monkeypatch):
    """A forged or cut file that claims 20000x20000 pixels over a near-empty stream cannot hold that
    latent even at one likeliest symbol a value: refused before any decoding (it decoded zeros for
    minutes when the memory was there). Real files pass the same bound with room to spare."""
    import dataclasses
    import time

    import aecompress.codec as codec_mod
    from aecompress import container
    from aecompress.compress import open_codec

    aez = tmp_path / "cat.aez"
    assert run("encode", photo, "-o", aez, "-q", "1").returncode == 0
    header, payload = container.unpack(aez.read_bytes())
    codec = open_codec("photo", "cpu", 2)
    stream, _ = container.split_payload(payload)
    from aecompress.ladder import scaled_size

    cw, ch = scaled_size(header.width, header.height, header.scale)     # q1: coded at a smaller scale
    codec._check_stream_length(len(stream), ch + (-ch % 64), cw + (-cw % 64))   # the real file passes
    codec._check_stream_length(len(stream) // 20, ch + (-ch % 64), cw + (-cw % 64))   # with room to spare
    forged = tmp_path / "huge.aez"
    forged.write_bytes(container.pack(dataclasses.replace(header, width=20000, height=20000),
                                      container.join_payload(b"", b"")))
    monkeypatch.setattr(codec_mod, "_check_memory", lambda *a: None)   # as on a machine with the memory
    t = time.perf_counter()
    with pytest.raises(codec_mod.CorruptFileError, match=r"a stream of 0 bytes cannot hold the latent of a \d+x\d+ image"):
        codec.decode(forged.read_bytes())
    assert time.perf_counter() - t < 5
    r = run("decode", forged, "-o", tmp_path / "huge.png")
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and not (tmp_path / "huge.png").exists(), r.stderr


def test_version_and_short_help():
    from aecompress import __version__

    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith(f"aecompress {__version__} (Python ") and "onnxruntime" in r.stdout
    assert run("-V").stdout == r.stdout
    h = run("encode", "-h")
    assert h.returncode == 0 and "--skip-existing" in h.stdout and h.stdout == run("encode", "--help").stdout


def test_help_fits_80_columns():
    """No option's name is cut short ('--checkpoint-ev…') in an 80-column terminal: the flag column
    of `train --help` was widened by '--report/--no-report' until the names no longer fitted."""
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    for cmd in ("encode", "decode", "info", "models", "denoise", "gui", "train", "embed", "score"):
        r = subprocess.run([sys.executable, "-m", "aecompress", cmd, "--help"], capture_output=True, text=True,
                           env=env, timeout=120)
        assert r.returncode == 0 and "--help" in r.stdout, (cmd, r.stderr)
        assert "\u2026" not in r.stdout, f"{cmd} --help truncates:\n{r.stdout}"


def test_skip_existing_resumes_a_batch(tmp_path, photo):
    """encode and decode --skip-existing leave existing outputs alone (a rerun after an interrupt),
    as denoise does; without it an existing output is an error naming both ways out."""
    other = tmp_path / "dog.png"
    Image.open(photo).transpose(Image.FLIP_LEFT_RIGHT).save(other)
    out = tmp_path / "packed"
    assert run("encode", photo, "-o", f"{out}/", "-q", "30").returncode == 0
    first = (out / "cat.aez").read_bytes()
    r = run("encode", photo, other, "-o", out)
    assert r.returncode == 1 and "--skip-existing" in r.stderr and (out / "dog.aez").exists()
    (out / "dog.aez").unlink()
    r = run("encode", photo, other, "-o", out, "--skip-existing")
    assert r.returncode == 0, r.stderr
    assert f"{photo}: skipped ({out / 'cat.aez'} exists)" in r.stdout and "dog.aez:" in r.stdout
    assert (out / "cat.aez").read_bytes() == first             # left as it was: quality 30
    r = run("encode", photo, other, "-o", out, "--skip-existing", "--json")
    assert r.returncode == 0 and r.stdout == "" and r.stderr.count("skipped") == 2
    dec = tmp_path / "dec"
    assert run("decode", out / "cat.aez", "-o", f"{dec}/").returncode == 0
    before = (dec / "cat.png").stat().st_mtime_ns
    r = run("decode", out, "-o", dec, "--skip-existing")
    assert r.returncode == 0 and "skipped" in r.stdout and (dec / "dog.png").exists()
    assert (dec / "cat.png").stat().st_mtime_ns == before


def test_decode_quality_of_a_lossy_output(tmp_path, photo):
    aez = tmp_path / "c.aez"
    assert run("encode", photo, "-o", aez).returncode == 0
    for q in (20, 95):
        assert run("decode", aez, "-o", tmp_path / f"q{q}.jpg", "-q", q).returncode == 0
    assert run("decode", aez, "-o", tmp_path / "default.jpg").returncode == 0
    sizes = {k: (tmp_path / f"{k}.jpg").stat().st_size for k in ("q20", "q95", "default")}
    assert sizes["q20"] < sizes["q95"] / 2 and sizes["default"] == sizes["q95"], sizes


def test_info_takes_several_files(tmp_path, photo):
    a, b = tmp_path / "a.aez", tmp_path / "b.aez"
    assert run("encode", photo, "-o", a, "-q", "20").returncode == 0
    assert run("encode", photo, "-o", b, "-q", "90").returncode == 0
    r = run("info", a, b, "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["file"] for x in rows] == [str(a), str(b)] and rows[0]["bytes"] == a.stat().st_size
    r = run("info", a, tmp_path / "none.aez", b)
    assert r.returncode == 1 and r.stdout.count("quality_level:") == 2 and "none.aez" in r.stderr


def test_output_folder_names_that_do_not_fit(tmp_path, photo):
    """-o FILE/ over a file says it names a folder (not 'several inputs'); standard input into a
    folder is refused (it made a file named '-.aez', which the shell reads as an option)."""
    taken = tmp_path / "taken.aez"
    taken.write_bytes(b"mine")
    r = run("encode", photo, "-o", f"{taken}/")
    assert r.returncode == 1 and f"-o {taken}/ names a folder, and {taken} is a file" in r.stderr, r.stderr
    assert taken.read_bytes() == b"mine"
    folder = tmp_path / "sd"
    folder.mkdir()
    r = run_bytes("encode", "-", "-o", f"{folder}/", stdin=photo.read_bytes())
    assert r.returncode == 1 and b"standard input needs -o to name a file" in r.stderr
    assert list(folder.iterdir()) == []


def test_json_is_strict_when_a_psnr_is_infinite():
    from aecompress.cli.common import to_json

    line = to_json({"psnr": float("inf"), "x": [1.5, float("nan")], "n": {"m": -float("inf")}})
    assert json.loads(line, parse_constant=lambda c: pytest.fail(c)) == {"psnr": None, "x": [1.5, None],
                                                                       "n": {"m": None}}


def test_json_to_a_file_while_the_bar_shows_on_the_terminal(tmp_path, photo):
    """`encode DIR -o out/ --json > runs.jsonl` at a terminal: the progress bar on stderr took the
    JSON objects (and the report lines) with it to the terminal, and the file stayed empty."""
    src = tmp_path / "in"
    src.mkdir()
    for k in range(3):
        Image.open(photo).rotate(90 * k, expand=True).save(src / f"p{k}.png")
    code, text = run_on_terminal(["encode", src, "-o", f"{tmp_path / 'o'}/", "--json"], stdout_to=tmp_path / "runs.jsonl")
    assert code == 0, text
    rows = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert sorted(Path(r["input"]).name for r in rows) == ["p0.png", "p1.png", "p2.png"] and '"bpp"' not in text
    code, text = run_on_terminal(["decode", tmp_path / "o", "-o", f"{tmp_path / 'd'}/"], stdout_to=tmp_path / "rep.txt")
    assert code == 0 and (tmp_path / "rep.txt").read_text().count(" -> ") == 3, text


def test_an_output_a_killed_run_left_half_written_is_cleaned_up(tmp_path, photo):
    """kill -9 during a write leaves `.NAME.XXXXXXXX.part`; the next encode or decode of that
    output removes it (denoise did, encode and decode never did), but not one another process is
    writing now (it holds a lock on it)."""
    import fcntl

    out = tmp_path / "o"
    out.mkdir()
    dead = out / ".cat.aez.k1ll3d00.part"
    dead.write_bytes(b"half")
    busy = out / ".dog.aez.wr1t1ng0.part"
    busy.write_bytes(b"in progress")
    dog = tmp_path / "dog.png"
    Image.open(photo).transpose(Image.FLIP_LEFT_RIGHT).save(dog)
    with open(busy, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        r = run("encode", photo, dog, "-o", out)
    assert r.returncode == 0, r.stderr
    assert not dead.exists() and busy.exists() and (out / "cat.aez").exists()
    dec = tmp_path / "d"
    dec.mkdir()
    (dec / ".cat.png.k1ll3d00.part").write_bytes(b"half")
    assert run("decode", out / "cat.aez", out / "dog.aez", "-o", dec, "--skip-existing").returncode == 0
    assert sorted(p.name for p in dec.iterdir()) == ["cat.png", "dog.png"]


def test_an_output_written_meanwhile_by_another_run(tmp_path, photo, monkeypatch):
    """Two runs into one folder: a file that appears while this one works is never replaced without
    --force (a check, then a rename, left a moment for it), and --skip-existing skips it instead of
    failing with advice to use --force."""
    from typer.testing import CliRunner

    from aecompress import compress
    from aecompress.cli import app
    from aecompress.errors import OutputExists
    from aecompress.fsutil import atomic_output

    target = tmp_path / "w" / "x.aez"
    with pytest.raises(OutputExists):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"mine")
            target.write_bytes(b"theirs")            # the other run finished first
    assert target.read_bytes() == b"theirs" and [p.name for p in target.parent.iterdir()] == ["x.aez"]

    real = compress.encode_file

    def other_run_first(inp, out, *a, **k):
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(b"theirs")
        return real(inp, out, *a, **k)

    monkeypatch.setattr(compress, "encode_file", other_run_first)
    res = CliRunner().invoke(app, ["encode", str(photo), "-o", str(tmp_path / "o" / "c.aez"), "--skip-existing"])
    assert res.exit_code == 0 and "skipped" in res.output and (tmp_path / "o" / "c.aez").read_bytes() == b"theirs"
    res = CliRunner().invoke(app, ["encode", str(photo), "-o", str(tmp_path / "p" / "c.aez")])
    assert isinstance(res.exception, OutputExists)


def test_packages_are_found_by_the_name_models_shows_and_staging_folders_are_not_packages(tmp_path, photo):
    """`models` shows a manifest's name; -m took only folder names, so a package copied into a
    folder of another name (or trained with --name) was listed but 'unknown'. A training run's
    hidden staging folder (or one a killed export left) was listed as a package, and could not be used."""
    import shutil

    from .conftest import ROOT

    models = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "photo", models / "copied")
    m = json.loads((models / "copied" / "manifest.json").read_text())
    (models / "copied" / "manifest.json").write_text(json.dumps({**m, "name": "renamed"}))
    shutil.copytree(models / "copied", models / ".renamed.x1y2z3w4")
    env = {**os.environ, "AECOMPRESS_MODELS": str(models)}

    def aec(*args):
        return subprocess.run([sys.executable, "-m", "aecompress", *map(str, args)], capture_output=True, text=True,
                              timeout=120, env=env)

    rows = json.loads(aec("models", "--json").stdout)
    assert sorted(r["name"] for r in rows) == ["denoise", "photo", "renamed"]
    assert [r["path"] for r in rows if r["name"] == "renamed"] == [str(models / "copied")]
    r = aec("encode", photo, "-o", tmp_path / "r.aez", "-m", "renamed")
    assert r.returncode == 0, r.stderr
    shutil.copytree(models / "copied", models / "again")
    r = aec("encode", photo, "-o", tmp_path / "s.aez", "-m", "renamed")
    assert r.returncode == 4 and "2 installed packages are named 'renamed'" in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.parametrize("case", ["codec_list", "deep", "huge_int", "fifo_manifest", "graph_to_dev_zero",
                                  "graph_outside"])
def test_a_hostile_or_broken_package_on_the_search_path_is_skipped(tmp_path, photo, case):
    """One malformed package on the search path broke `models`, `decode` and `info` of every file
    ('unexpected TypeError... a bug'); a package file that is a named pipe hung them, one linked to
    /dev/zero read until memory ran out, one linked outside the package was read. Each is a model
    problem now: skipped with a warning, and the other packages work."""
    import shutil

    from .conftest import ROOT

    models = tmp_path / "models"
    bad = models / "bad"
    shutil.copytree(ROOT / "models" / "photo", bad)
    m = json.loads((bad / "manifest.json").read_text())
    if case == "codec_list":
        m["codec"] = ["hyperprior"]
    elif case == "huge_int":
        m = json.loads((ROOT / "models" / "denoise" / "manifest.json").read_text())
        shutil.rmtree(bad)
        shutil.copytree(ROOT / "models" / "denoise", bad)
        m["residual_gain"]["sigma"][0] = 10 ** 400
    if case in ("codec_list", "huge_int"):
        (bad / "manifest.json").write_text(json.dumps(m))
    elif case == "deep":
        (bad / "manifest.json").write_text(json.dumps(m)[:-1] + ', "deep": ' + "[" * 50_000 + "]" * 50_000 + "}")
    elif case == "fifo_manifest":
        (bad / "manifest.json").unlink()
        os.mkfifo(bad / "manifest.json")
    elif case == "graph_to_dev_zero":
        (bad / "synthesis.onnx").unlink()
        (bad / "synthesis.onnx").symlink_to("/dev/zero")
    elif case == "graph_outside":
        outside = tmp_path / "elsewhere.onnx"
        shutil.copy(bad / "synthesis.onnx", outside)
        (bad / "synthesis.onnx").unlink()
        (bad / "synthesis.onnx").symlink_to(outside)
    env = {**os.environ, "AECOMPRESS_MODELS": str(models)}

    def aec(*args):
        return subprocess.run([sys.executable, "-m", "aecompress", *map(str, args)], capture_output=True, text=True,
                              timeout=60, env=env)

    r = aec("models", "--json")
    assert r.returncode == 0 and sorted(x["name"] for x in json.loads(r.stdout)) == ["denoise", "photo"], r.stderr
    assert r.stderr.count("\n") == 1 and "aecompress: warning: skipped" in r.stderr and "unexpected" not in r.stderr
    aez = tmp_path / "c.aez"
    assert aec("encode", photo, "-o", aez).returncode == 0
    assert aec("decode", aez, "-o", tmp_path / "c.png").returncode == 0 and aec("info", aez).returncode == 0
    r = aec("encode", photo, "-o", tmp_path / "d.aez", "-m", bad)
    assert r.returncode == 4 and r.stderr.count("\n") == 1 and "unexpected" not in r.stderr, r.stderr


def test_control_characters_from_names_and_manifests_reach_no_terminal(tmp_path):
    """A manifest's name with escape codes (clear screen, cursor home) was printed raw by `models`,
    and error lines kept ESC: control characters are written as escapes."""
    import shutil

    from aecompress.cli.common import one_line

    from .conftest import ROOT

    assert one_line("a\nb\x1b[2J\x07\tc") == "a\\nb\\x1b[2J\\x07\\tc"
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "photo", models / "sneaky")
    m = json.loads((models / "sneaky" / "manifest.json").read_text())
    (models / "sneaky" / "manifest.json").write_text(json.dumps({**m, "name": "evil\x1b[2J\x1b[H"}))
    r = subprocess.run([sys.executable, "-m", "aecompress", "models"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "AECOMPRESS_MODELS": str(models), "COLUMNS": "200"})
    assert r.returncode == 0 and "\x1b" not in r.stdout and "evil\\x1b[2J" in r.stdout, r.stdout


def test_decode_to_gif_says_the_palette_took_colours(photo, tmp_path):
    """A GIF holds 256 colours: decoding a photo to .gif says so (it used to pass in silence); a PNG
    says nothing, and --json keeps its fields, the note going to standard error."""
    assert run("encode", photo, "-q", "40").returncode == 0
    aez = photo.with_suffix(".aez")
    r = run("decode", aez, "-o", tmp_path / "cat.gif")
    assert r.returncode == 0, r.stderr
    assert "note: a GIF holds 256 colours at most" in r.stdout
    with Image.open(tmp_path / "cat.gif") as im:
        assert im.mode == "P" and im.size == (451, 300)
    r = run("decode", aez, "-o", tmp_path / "back.png")
    assert r.returncode == 0 and "note" not in r.stdout + r.stderr
    r = run("decode", aez, "-o", tmp_path / "again.gif", "--json")
    assert r.returncode == 0
    assert set(json.loads(r.stdout)) == {"input", "output", "width", "height", "bpp", "model", "seconds", "provider"}
    assert "note: " in r.stderr and "256 colours" in r.stderr


@pytest.mark.parametrize("flag", ["--bpp", "--psnr"])
def test_rate_targets_of_zero_are_usage_errors_like_size_zero(photo, flag):
    for value in ("0", "-1"):
        r = run("encode", photo, flag, value)
        assert r.returncode == 2 and "must be above 0" in r.stderr and "Traceback" not in r.stderr
    assert not photo.with_suffix(".aez").exists()
