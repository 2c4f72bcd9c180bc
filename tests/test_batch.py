"""Batch denoising: mirroring, resume, bad files, interruption without partial files, -j, Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aecompress.batch import plan_jobs, run_batch
from tests.test_denoise import ROOT, make_denoiser_package, noisy, run_cli, smooth_image
from tests.conftest import run_on_terminal


@pytest.fixture(scope="module")
def pkg_dir(tmp_path_factory) -> Path:
    return make_denoiser_package(tmp_path_factory.mktemp("models"))


@pytest.fixture
def env(pkg_dir, monkeypatch):
    monkeypatch.setenv("AECOMPRESS_MODELS", str(pkg_dir.parent))
    return {**os.environ, "AECOMPRESS_MODELS": str(pkg_dir.parent)}


RELS = ["a.png", "b.jpg", "sub/c.png", "sub/deeper/d.png", "other/e.png"]


def make_tree(root: Path, rels=RELS, size=(40, 48)) -> list[Path]:
    out = []
    for i, rel in enumerate(rels):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy(smooth_image(*size, seed=i), 20, seed=i)).save(p)
        out.append(p)
    (root / "notes.txt").write_text("not an image")
    return out


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_recursive_mirrors_structure_and_ignores_non_images(tmp_path, env):
    make_tree(tmp_path / "in")
    before = snapshot(tmp_path / "in")
    r = run_cli(["denoise", tmp_path / "in", "-r", "-o", tmp_path / "out"], env)
    assert r.exit_code == 0, r.output
    assert files_under(tmp_path / "out") == set(RELS)
    assert snapshot(tmp_path / "in") == before                    # inputs never modified
    r = run_cli(["denoise", tmp_path / "in", "-o", tmp_path / "flat"], env)   # no -r: top level only
    assert r.exit_code == 0 and files_under(tmp_path / "flat") == {"a.png", "b.jpg"}


def test_output_folder_inside_input_is_not_rescanned(tmp_path, env):
    make_tree(tmp_path / "in")
    for _ in range(2):
        r = run_cli(["denoise", tmp_path / "in", "-r", "-o", tmp_path / "in" / "out", "--skip-existing"], env)
        assert r.exit_code == 0, r.output
    assert files_under(tmp_path / "in" / "out") == set(RELS)


def test_default_folder_output_is_sibling(tmp_path, env):
    make_tree(tmp_path / "in", RELS[:2])
    r = run_cli(["denoise", tmp_path / "in"], env)
    assert r.exit_code == 0, r.output
    assert files_under(tmp_path / "in.denoised") == {"a.png", "b.jpg"}


def test_skip_existing_resumes(tmp_path, env):
    make_tree(tmp_path / "in")
    out = tmp_path / "out"
    assert run_cli(["denoise", tmp_path / "in", "-r", "-o", out], env).exit_code == 0
    full = snapshot(out)
    (out / "sub" / "c.png").unlink()
    (out / "a.png").write_bytes(b"marker")                      # existing outputs are left alone
    (out / ".b.jpg.k3j9x_2a.part").write_bytes(b"half")          # a killed --force rerun's leftover
    r = run_cli(["denoise", tmp_path / "in", "-r", "-o", out, "--skip-existing", "--json"], env)
    assert r.exit_code == 0, r.output
    assert (out / "a.png").read_bytes() == b"marker"
    assert not list(out.glob(".*.part"))                        # removed beside a skipped output too
    assert (out / "sub" / "c.png").read_bytes() == full["sub/c.png"]
    assert '"skipped": 4' in r.stdout and '"done": 1' in r.stdout
    # without skip/force: refused in one line before any work, not once per file
    (out / "sub" / "c.png").unlink()
    r = subprocess.run([sys.executable, "-m", "aecompress", "denoise", str(tmp_path / "in"), "-r", "-o", str(out)],
                       capture_output=True, text=True, env={**os.environ, **env}, timeout=120)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "4 of the 5 outputs exist already" in r.stderr and "--skip-existing" in r.stderr
    assert (out / "a.png").read_bytes() == b"marker" and not (out / "sub" / "c.png").exists()
    r = run_cli(["denoise", tmp_path / "in", "-r", "-o", out, "--skip-existing", "--force"], env)
    assert r.exit_code == 2 and "choose one" in r.output


def test_a_killed_runs_temporary_file_goes_when_the_output_is_written(tmp_path, env):
    """kill -9 leaves the temporary file of the output being written; the next run that writes that
    output removes it, with --force as without (it used to take --skip-existing)."""
    make_tree(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".a.png.k3j9x_2a.part").write_bytes(b"half")
    (out / ".a.png.x.png.abcdefgh.part").write_bytes(b"another output's")
    assert run_cli(["denoise", tmp_path / "in" / "a.png", "-o", out / "a.png"], env).exit_code == 0
    assert [p.name for p in out.glob(".*.part")] == [".a.png.x.png.abcdefgh.part"]
    (out / ".a.png.k3j9x_2b.part").write_bytes(b"half")
    assert run_cli(["denoise", tmp_path / "in" / "a.png", "-o", out / "a.png", "--force"], env).exit_code == 0
    assert [p.name for p in out.glob(".*.part")] == [".a.png.x.png.abcdefgh.part"]


def test_an_interrupted_batch_reports_what_it_did(tmp_path, env, monkeypatch):
    """Ctrl-C in the middle of a batch: the summary of what was done (with --json its object, marked
    cancelled), then the one-line notice."""
    import aecompress.batch as batch

    make_tree(tmp_path / "in")
    real, calls = batch.denoise_file, []

    def interrupt_on_the_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(batch, "denoise_file", interrupt_on_the_third)
    r = run_cli(["denoise", tmp_path / "in", "-r", "-o", tmp_path / "out", "--json"], env)
    assert r.exit_code == 130
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    summary = lines[-1]["summary"]
    assert summary["cancelled"] is True and summary["done"] == 2 and summary["not_started"] == 3, summary
    assert "interrupted; no partial files were left" in r.output


def test_corrupt_file_is_skipped_others_complete(tmp_path, env):
    make_tree(tmp_path / "in")
    (tmp_path / "in" / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    good = np.asarray(Image.open(tmp_path / "in" / "a.png"))
    Image.fromarray(good).save(tmp_path / "in" / "trunc.png")
    data = (tmp_path / "in" / "trunc.png").read_bytes()
    (tmp_path / "in" / "trunc.png").write_bytes(data[: len(data) // 2])
    frames = [Image.fromarray(smooth_image(40, 48, seed=i)) for i in range(2)]   # one frame back would lose one
    frames[0].save(tmp_path / "in" / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "in" / "scan.tif", save_all=True, append_images=frames[1:])  # a scan's 2 pages
    r = run_cli(["denoise", tmp_path / "in", "-r", "-o", tmp_path / "out", "-j", "2"], env)
    assert r.exit_code == 1
    assert files_under(tmp_path / "out") == set(RELS)
    assert "broken.png" in r.output and "trunc.png" in r.output
    assert "anim.gif: animated images are not supported (2 frames)" in " ".join(r.output.split())
    assert "scan.tif: multi-page TIFFs are not supported (2 pages)" in " ".join(r.output.split())
    assert "5 denoised, 0 skipped, 4 failed" in r.output


def test_jobs_give_identical_outputs(tmp_path, env):
    make_tree(tmp_path / "in")
    s1 = run_batch([tmp_path / "in"], tmp_path / "o1", recursive=True, jobs=1)
    s2 = run_batch([tmp_path / "in"], tmp_path / "o2", recursive=True, jobs=3)
    assert (s1.done, s2.done, s2.failed) == (5, 5, 0)
    assert snapshot(tmp_path / "o1") == snapshot(tmp_path / "o2")


def test_progress_and_cancel_callbacks(tmp_path, env):
    make_tree(tmp_path / "in")
    seen = []
    stop = threading.Event()

    def progress(result, summary):
        seen.append((result.status, len(summary.results), summary.total))
        if len(summary.results) == 2:
            stop.set()

    s = run_batch([tmp_path / "in"], tmp_path / "out", recursive=True, progress=progress, cancel=stop)
    assert seen == [("done", 1, 5), ("done", 2, 5)]
    assert s.cancelled and s.done == 2 and s.not_started == 3
    assert len(files_under(tmp_path / "out")) == 2
    s = run_batch([tmp_path / "in"], tmp_path / "out", recursive=True, skip_existing=True)
    assert (s.done, s.skipped, s.failed) == (3, 2, 0)


@pytest.mark.parametrize("jobs", [1, 2])
def test_interrupt_mid_write_leaves_no_partial_files(tmp_path, env, monkeypatch, jobs):
    """Ctrl-C while the third image is half written: no partial file, the rest resumes with --skip-existing."""
    make_tree(tmp_path / "in")
    import aecompress.fsutil as fsutil

    calls = {"n": 0}
    real_fsync = fsutil.os.fsync
    lock = threading.Lock()

    def flaky_fsync(fd):                       # the third output's bytes are in its temporary file
        with lock:
            calls["n"] += 1
            n = calls["n"]
        if n == 3:
            raise KeyboardInterrupt
        return real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", flaky_fsync)
    with pytest.raises(KeyboardInterrupt):
        run_batch([tmp_path / "in"], tmp_path / "out", recursive=True, jobs=jobs)
    monkeypatch.setattr(fsutil.os, "fsync", real_fsync)
    assert calls["n"] >= 3
    written = files_under(tmp_path / "out")
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".") or p.suffix == ".part"]
    assert 2 <= len(written) < len(RELS)
    for rel in written:                                           # every file that exists is complete
        Image.open(tmp_path / "out" / rel).load()
    s = run_batch([tmp_path / "in"], tmp_path / "out", recursive=True, skip_existing=True)
    assert s.failed == 0 and s.done + s.skipped == len(RELS) and s.skipped == len(written)
    assert files_under(tmp_path / "out") == set(RELS)


def test_sigterm_mid_batch_leaves_no_partial_files(tmp_path, env):
    make_tree(tmp_path / "in", [f"img{i:02d}.png" for i in range(40)], size=(160, 160))
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-m", "aecompress", "denoise", str(tmp_path / "in"), "-o", str(out)],
                         env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out.is_dir() and len(list(out.glob("*.png"))) >= 2):
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    done = sorted(out.glob("*.png"))
    if len(done) == 40:
        pytest.skip("the batch finished before the signal arrived")
    assert p.returncode == 143, err            # `kill`: 143, as for encode and decode (Ctrl-C: 130)
    assert "terminated" in err and "Traceback" not in err
    assert not [x for x in out.iterdir() if x.name.startswith(".")]
    for f in done:
        Image.open(f).load()
    r = run_cli(["denoise", tmp_path / "in", "-o", out, "--skip-existing"], env)
    assert r.exit_code == 0 and len(list(out.glob("*.png"))) == 40


def test_plan_rejects_duplicate_outputs_and_missing_inputs(tmp_path, env, monkeypatch):
    from aecompress.errors import AecError

    make_tree(tmp_path / "x", ["a.png"])
    make_tree(tmp_path / "y", ["a.png"])
    s = run_batch([tmp_path / "x", tmp_path / "y"], tmp_path / "out")
    assert (s.done, s.failed) == (1, 1) and "also the output" in s.results[0].error
    with pytest.raises(AecError):
        plan_jobs([tmp_path / "nope"])
    # the same folder twice is one set of jobs; -o naming the input folder is refused once, up front
    monkeypatch.chdir(tmp_path)
    jobs = plan_jobs([tmp_path / "x", Path("x"), tmp_path / "x" / ".." / "x"], tmp_path / "o")
    assert [j.rel for j in jobs] == [Path("a.png")]
    with pytest.raises(AecError, match="would replace the inputs themselves"):
        plan_jobs([tmp_path / "x"], tmp_path / "x")
    # -o - made a folder named "-" (a name without an extension is a folder): refused, as is /dev/stdout
    for out in ("-", "/dev/stdout"):
        with pytest.raises(AecError, match="not standard output"):
            plan_jobs([tmp_path / "x" / "a.png"], out)


def test_ray_start_keeps_our_signal_handlers_and_the_ray_loggers_level(tmp_path, env, monkeypatch):
    """Ray installs its own SIGTERM handler in ray.init; the batch puts the command's back, so
    `kill` stops a Ray batch like a local one (exit 143, no stack dump). The batch quiets the `ray`
    logger while Ray runs (its notices on standard error) and left it at ERROR for the rest of the
    process: a program that runs the batch as a library gets its own level back."""
    import logging
    import signal as sig

    ray = pytest.importorskip("ray")
    make_tree(tmp_path / "in", ["a.png"])
    old = sig.getsignal(sig.SIGTERM)
    seen, levels = [], []
    real_init = ray.init
    ray_log = logging.getLogger("ray")
    saved = ray_log.level

    def init(*a, **k):
        levels.append(ray_log.level)
        out = real_init(*a, **k)
        seen.append(sig.getsignal(sig.SIGTERM))
        return out

    monkeypatch.setattr(ray, "init", init)
    ran = []
    mine = lambda signum, frame: ran.append(signum)      # noqa: E731
    sig.signal(sig.SIGTERM, mine)
    try:
        ray_log.setLevel(logging.INFO)
        s = run_batch([tmp_path / "in"], tmp_path / "out", jobs=1, engine="ray")
        assert s.done == 1 and sig.getsignal(sig.SIGTERM) is mine
        assert levels == [logging.ERROR] and ray_log.level == logging.INFO
        assert seen and seen[0] is not mine                # Ray did replace it during init
        # ray.shutdown() resets SIGTERM to the default action behind Python's back: ours must really run
        sig.raise_signal(sig.SIGTERM)
        assert ran == [sig.SIGTERM]
    finally:
        sig.signal(sig.SIGTERM, old)
        ray_log.setLevel(saved)


def test_a_ray_start_that_fails_gives_the_ray_logger_its_level_back(tmp_path, env, monkeypatch):
    """The same when ray.init fails (an address where no cluster answers): no Ray is started here."""
    import logging

    ray = pytest.importorskip("ray")
    make_tree(tmp_path / "in", ["a.png"])
    ray_log, levels = logging.getLogger("ray"), []
    saved = ray_log.level

    def init(*a, **k):
        levels.append(ray_log.level)
        raise ConnectionError("no cluster there")

    monkeypatch.setattr(ray, "init", init)
    try:
        ray_log.setLevel(logging.WARNING)
        with pytest.raises(ConnectionError):
            run_batch([tmp_path / "in"], tmp_path / "out", jobs=1, engine="ray", address="10.0.0.1:6379")
        assert levels == [logging.ERROR] and ray_log.level == logging.WARNING
    finally:
        ray_log.setLevel(saved)


def _icon(path: Path) -> None:
    """An ICO of three sizes whose 16x16 is its own picture (solid red), not a copy of the 64x64."""
    big = Image.fromarray(noisy(smooth_image(64, 64), 20))
    big.save(path, sizes=[(16, 16), (32, 32), (64, 64)], append_images=[Image.new("RGB", (16, 16), (255, 0, 0))])
    with Image.open(path) as im:
        im.size = (16, 16)
        assert im.convert("RGB").getpixel((0, 0)) == (255, 0, 0)


def test_an_icon_named_on_the_command_line_is_denoised_with_a_note_and_a_folder_scan_leaves_it(tmp_path, env):
    """Pillow reads an ICO's largest size; the copy keeps the set of sizes but makes the smaller ones
    again from the denoised largest (the 16x16's own pixels were replaced without a word): a note says
    so, or that they are not written when the output is another format. A folder scan leaves .ico
    out (an icon's sizes cannot all come back as they were), which is what docs/denoise.md says."""
    src = tmp_path / "in"
    src.mkdir()
    _icon(src / "m.ico")
    s = run_batch([src / "m.ico"], tmp_path / "out.ico")
    assert s.done == 1, [r.error for r in s.results]
    assert s.results[0].notes == ["an icon of 3 sizes: the largest, 64x64, is denoised, and the smaller ones "
                                  "(16x16, 32x32) are made again from it"]
    with Image.open(tmp_path / "out.ico") as out:
        assert out.format == "ICO" and sorted(out.info["sizes"]) == [(16, 16), (32, 32), (64, 64)]
    s = run_batch([src / "m.ico"], tmp_path / "out.png")
    assert s.done == 1 and s.results[0].notes[0].endswith("the smaller ones (16x16, 32x32) are not written")
    Image.fromarray(smooth_image(40, 48)).save(src / "one.ico", sizes=[(48, 40)])     # one size: nothing to say
    assert run_batch([src / "one.ico"], tmp_path / "one.ico").results[0].notes == []
    (src / "a.png").write_bytes((tmp_path / "out.png").read_bytes())
    s = run_batch([src], tmp_path / "scan")
    assert [Path(r.src).name for r in s.results] == ["a.png"]


def ray_scratch() -> set[str]:
    import glob
    import tempfile
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "aec-ray-*")))


def test_ray_engine_matches_local(tmp_path, env, capfd):
    pytest.importorskip("ray")
    scratch = ray_scratch()
    make_tree(tmp_path / "in")
    (tmp_path / "in" / "bad.png").write_bytes(b"garbage")
    local = run_batch([tmp_path / "in"], tmp_path / "local", recursive=True, jobs=1)
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "a.png").write_bytes((tmp_path / "local" / "a.png").read_bytes())   # resume: kept
    s = run_batch([tmp_path / "in"], tmp_path / "ray", recursive=True, jobs=2, engine="ray", skip_existing=True)
    assert (local.done, local.failed) == (5, 1)
    assert (s.done, s.skipped, s.failed) == (4, 1, 1)
    assert "bad.png" in [r for r in s.results if r.status == "failed"][0].error
    assert snapshot(tmp_path / "ray") == snapshot(tmp_path / "local")
    # each worker's copy of the model is removed at the end (they piled up in /tmp, 1.8 MB a worker)
    assert ray_scratch() <= scratch
    # Ray's notices (token authentication, at every local start) stay off standard error
    assert "Ray" not in capfd.readouterr().err


def test_second_ctrl_c_while_workers_stop_does_not_abort(tmp_path, env):
    """Two Ctrl-C in a row during `-j 2`: the second must not end the process while worker threads
    are inside onnxruntime (that aborted with "terminate called without an active exception")."""
    make_tree(tmp_path / "in", [f"img{i:02d}.png" for i in range(16)], size=(768, 768))
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-m", "aecompress", "denoise", str(tmp_path / "in"), "-o", str(out),
                          "-j", "2", "--tile", "0"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         # a background job's children start with SIGINT ignored; a terminal's do not
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline and not (out.is_dir() and len(list(out.glob("*.png"))) >= 2):
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    if len(list(out.glob("*.png"))) == 16:
        pytest.skip("the batch finished before the signals arrived")
    # 130 from our handler, or death by SIGINT when the second signal lands after the cleanup: both
    # are a clean stop; an abort (SIGABRT, "terminate called ...") is not
    assert p.returncode in (130, -signal.SIGINT), (p.returncode, err)
    assert "terminate called" not in err and "Traceback" not in err
    assert not [x for x in out.iterdir() if x.name.startswith(".")]


def test_progress_bar_counts_work_not_skipped_files(tmp_path, env):
    """Resuming with --skip-existing: the bar's total is the files left to do, so its rate and time
    left are those of real work (skipped files used to count as done in no time)."""
    rels = [f"img{i:02d}.png" for i in range(10)]
    make_tree(tmp_path / "in", rels)
    out = tmp_path / "out"
    assert run_batch([tmp_path / "in"], out, jobs=1).done == 10
    for r in rels[6:]:
        (out / r).unlink()
    code, text = run_on_terminal(["denoise", tmp_path / "in", "-o", out, "--skip-existing"], env, ROOT)
    assert code == 0, text
    assert "4/4" in text and "/10" not in text and "/9" not in text, text


def test_json_to_a_file_while_the_bar_shows_on_the_terminal(tmp_path, env):
    """`denoise DIR -o out --json > runs.jsonl` at a terminal: the objects went to the terminal with
    the bar, and the file got only the summary."""
    make_tree(tmp_path / "in", ["a.png", "b.png", "c.png"])
    code, text = run_on_terminal(["denoise", tmp_path / "in", "-o", tmp_path / "out", "--json"], env, ROOT,
                                 stdout_to=tmp_path / "runs.jsonl")
    assert code == 0, text
    rows = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert [r.get("status") for r in rows[:3]] == ["done"] * 3 and rows[3]["summary"]["done"] == 3
    assert '"status"' not in text


def test_a_tree_with_pipes_loops_and_an_unreadable_folder(tmp_path, env, monkeypatch):
    """-r over a tree holding a named pipe (it blocked the batch forever), a loop of links (it
    aborted the batch as 'a bug') and a folder it cannot read (skipped in silence): the pipe and the
    loop are not inputs (as for encode), the folder fails alone, and every image is denoised."""
    make_tree(tmp_path / "in", ["a.png", "sub/b.png"])
    os.mkfifo(tmp_path / "in" / "pipe.png")
    (tmp_path / "in" / "x.png").symlink_to("y.png")
    (tmp_path / "in" / "y.png").symlink_to("x.png")
    (tmp_path / "in" / "locked").mkdir()
    real_walk = os.walk

    def walk(top, onerror=None, **kw):               # root reads every folder: fail one as a user would
        for entry in real_walk(top, onerror=onerror, **kw):
            yield entry
            if Path(entry[0]) == tmp_path / "in" and onerror is not None:
                onerror(PermissionError(13, "Permission denied", str(tmp_path / "in" / "locked")))
                entry[1][:] = [d for d in entry[1] if d != "locked"]

    monkeypatch.setattr(os, "walk", walk)
    s = run_batch([tmp_path / "in"], tmp_path / "out", recursive=True)
    errors = sorted(r.error for r in s.results if r.status == "failed")
    assert s.done == 2 and s.failed == 1, errors
    assert errors == [f"{tmp_path / 'in' / 'locked'}: cannot read this folder (Permission denied)"]
    # the same tree named twice: the folder still fails once
    s = run_batch([tmp_path / "in", Path(os.path.relpath(tmp_path / "in"))], tmp_path / "out2", recursive=True)
    assert s.done == 2 and s.failed == 1
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == \
        ["a.png", "sub/b.png"]


def test_an_output_link_to_another_input_is_refused(tmp_path, env):
    """Inputs are never modified: out/a.png, a link to in/b.png, was written through with --force,
    replacing an input of the same run before it was read."""
    make_tree(tmp_path / "in", ["a.png", "b.png"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.png").symlink_to(tmp_path / "in" / "b.png")
    before = (tmp_path / "in" / "b.png").read_bytes()
    s = run_batch([tmp_path / "in"], tmp_path / "out", force=True)
    assert (s.done, s.failed) == (1, 1) and "an input of this run" in s.results[0].error
    assert (tmp_path / "in" / "b.png").read_bytes() == before


def test_an_unreadable_input_folder_fails_alone_without_r(tmp_path, env, monkeypatch):
    """Without -r too, a folder that cannot be listed is one failure and the other inputs go on (it
    stopped the whole run)."""
    make_tree(tmp_path / "ok", ["a.png"])
    (tmp_path / "locked").mkdir()
    real = Path.iterdir

    def iterdir(self):                                   # root lists every folder: fail one as a user would
        if self == tmp_path / "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    s = run_batch([tmp_path / "locked", tmp_path / "ok"], tmp_path / "out")
    assert (s.done, s.failed) == (1, 1)
    assert [r.error for r in s.results if r.status == "failed"] == [
        f"{tmp_path / 'locked'}: cannot read this folder (Permission denied)"]


def test_an_interrupt_reports_the_jobs_that_finished_during_it(tmp_path, env, monkeypatch):
    """Ctrl-C with -j 2: the jobs already past their last check finish and write their outputs;
    they are reported as done (they were dropped, so the summary said nothing was done)."""
    import aecompress.batch as batch

    make_tree(tmp_path / "in")

    main = threading.main_thread().ident
    started = []

    def slow_copy(src, dst, *a, **k):
        started.append(src)
        if len(started) == 2:                 # Ctrl-C once both jobs run (a timer raced the jobs' start)
            signal.pthread_kill(main, signal.SIGINT)
        time.sleep(1.0)                       # past every cancel check: the job runs to its end
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        Path(dst).write_bytes(Path(src).read_bytes())
        return {}

    monkeypatch.setattr(batch, "denoise_file", slow_copy)
    seen = []
    # a suite started as a background job (`.ci/run &`) may run with SIGINT ignored, and the signal
    # would never arrive as Ctrl-C: its handler here
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        s = run_batch([tmp_path / "in"], tmp_path / "out", recursive=True, jobs=2,
                      progress=lambda r, s: seen.append((r.status, Path(r.dst))))
        pytest.fail(f"the batch was not interrupted: {[(r.status, r.error) for r in s.results]}")
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, old)
    written = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert len(written) == 2 and sorted(d for _, d in seen) == written and {s for s, _ in seen} == {"done"}


def test_a_ray_worker_writes_the_format_the_output_is_named_for(pkg_dir, tmp_path, monkeypatch):
    """The Ray engine's workers get the output's extension, so `-o b.jpg --engine ray` writes a JPEG
    as the local engine does (they wrote the input's format)."""
    import io

    from aecompress import entrypoint
    from aecompress.batch import _package_files, _RayWorker

    # a worker sets up its process as the command line does (the next test, in a process of its
    # own): made here, it would set up this test process, and the tests after it would run with the
    # command line's Pillow limit and logging instead of a library caller's
    monkeypatch.setattr(entrypoint, "configure_process", lambda: None)
    src = tmp_path / "a.png"
    Image.fromarray(noisy(smooth_image(40, 48), 20)).save(src)
    name, files = _package_files(pkg_dir)
    worker = _RayWorker(name, files, "cpu", 1)
    try:
        for suffix, fmt in ((".jpg", "JPEG"), (None, "PNG"), (".webp", "WEBP")):
            res = worker.process(str(src), src.read_bytes(), None, None, 512, None, 1, None, suffix)
            assert Image.open(io.BytesIO(res["data"])).format == fmt, suffix
    finally:
        worker.close()


def test_a_ray_worker_reads_images_as_large_as_the_command_line_does(pkg_dir):
    """A Ray worker's process is set up as the command line's (entrypoint.configure_process): with
    Pillow's default limit it refused images from 179 million pixels that the local engine reads."""
    code = (
        "import sys\n"
        "from PIL import Image\n"
        "from aecompress.batch import _package_files, _RayWorker\n"
        "from aecompress.imageio import MAX_PIXELS\n"
        "before = Image.MAX_IMAGE_PIXELS\n"
        "name, files = _package_files(sys.argv[1])\n"
        "w = _RayWorker(name, files, 'cpu', 1)\n"
        "w.close()\n"
        "print(before != MAX_PIXELS, Image.MAX_IMAGE_PIXELS == MAX_PIXELS)\n")
    out = subprocess.run([sys.executable, "-c", code, str(pkg_dir)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]


def test_an_output_that_is_an_input_does_not_stop_the_others(tmp_path, env):
    """out/a.png, a link to in/b.png, is an output that is an input of this run: refused by itself;
    the up-front refusal of existing outputs does not count it, so the other image is still
    denoised. (`denoise a.png a.denoised.png` after an earlier run was this case until an earlier
    run's default outputs were left out: test_a_rerun_over_a_glob_leaves_the_first_runs_outputs_alone.)"""
    make_tree(tmp_path / "in", ["a.png", "b.png"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.png").symlink_to(tmp_path / "in" / "b.png")
    r = run_cli(["denoise", tmp_path / "in", "-o", tmp_path / "out"], env)
    assert r.exit_code == 1 and "refusing to write over an input of this run" in r.output, r.output
    assert (tmp_path / "out" / "b.png").is_file() and (tmp_path / "out" / "a.png").is_symlink()


def test_a_folder_named_dot_or_dot_dot_gets_a_sibling_output_folder(tmp_path, env, monkeypatch):
    """`denoise .` failed with a ValueError (an empty name), and `denoise ..` wrote into a hidden
    `...denoised` folder inside the input: both are named by the folder they are."""
    make_tree(tmp_path / "shoot", ["a.png", "sub/b.png"])
    monkeypatch.chdir(tmp_path / "shoot")
    r = run_cli(["denoise", ".", "--quiet"], env)
    assert r.exit_code == 0, r.output
    assert files_under(tmp_path / "shoot.denoised") == {"a.png"}
    monkeypatch.chdir(tmp_path / "shoot" / "sub")
    r = run_cli(["denoise", "..", "-r", "--skip-existing", "--quiet"], env)
    assert r.exit_code == 0, r.output
    assert files_under(tmp_path / "shoot.denoised") == {"a.png", "sub/b.png"}
    assert files_under(tmp_path / "shoot") == {"a.png", "sub/b.png", "notes.txt"}
    r = run_cli(["denoise", "/"], env)
    assert r.exit_code == 1 and "name one with -o" in str(r.exception)


def test_a_rerun_over_a_glob_leaves_the_first_runs_outputs_alone(tmp_path, env, monkeypatch):
    """`denoise *.png` run again names a.png and a.denoised.png: the second is the first's output,
    not an image to denoise again (it made a.denoised.denoised.png, and a.png failed as writing over
    an input), so --skip-existing resumes as with a folder; the same for FOLDER and FOLDER.denoised."""
    make_tree(tmp_path, ["a.png", "b.png"])
    monkeypatch.chdir(tmp_path)
    assert run_cli(["denoise", "a.png", "b.png", "--quiet"], env).exit_code == 0
    make_tree(tmp_path / "new", ["c.png"])
    os.replace(tmp_path / "new" / "c.png", tmp_path / "c.png")
    glob = sorted(p.name for p in tmp_path.glob("*.png"))
    assert glob == ["a.denoised.png", "a.png", "b.denoised.png", "b.png", "c.png"]
    first = snapshot(tmp_path)
    r = run_cli(["denoise", *glob], env)               # refused in one line, before any work
    assert r.exit_code == 1 and "2 of the 3 outputs exist already" in str(r.exception), r.output
    assert snapshot(tmp_path) == first
    r = run_cli(["denoise", *glob, "--skip-existing"], env)
    assert r.exit_code == 0, r.output
    assert "a.denoised.png (and 1 more) left out: the output of a.png" in r.output
    assert "1 denoised, 2 skipped, 0 failed" in r.output
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(glob + ["c.denoised.png"])
    # a folder and its default output folder
    make_tree(tmp_path / "shoot", ["x.png"])
    assert run_cli(["denoise", "shoot", "--quiet"], env).exit_code == 0
    r = run_cli(["denoise", "shoot", "shoot.denoised", "--skip-existing"], env)
    assert r.exit_code == 0 and "shoot/x.png: skipped" in r.output, r.output
    assert not (tmp_path / "shoot.denoised.denoised").exists()
    # named alone, a .denoised file is an image like any other
    r = run_cli(["denoise", "a.denoised.png", "--quiet"], env)
    assert r.exit_code == 0 and (tmp_path / "a.denoised.denoised.png").exists()


def test_a_reference_is_the_same_name_under_another_extension_not_a_pattern(tmp_path, env):
    """cat.jpg was scored against cat.backup.png (a glob of cat.*, sorted), and shot[1].jpg against
    shot1.png ([1] read as a pattern)."""
    clean = smooth_image(40, 48, seed=3)
    (tmp_path / "in").mkdir()
    (tmp_path / "ref").mkdir()
    for name in ("cat.jpg", "shot[1].jpg"):
        Image.fromarray(noisy(clean, 20)).save(tmp_path / "in" / name, quality=95)
    Image.fromarray(clean).save(tmp_path / "ref" / "cat.png")
    Image.fromarray(clean[::-1]).save(tmp_path / "ref" / "cat.backup.png")
    Image.fromarray(clean).save(tmp_path / "ref" / "shot1.png")
    jobs = plan_jobs([tmp_path / "in"], tmp_path / "out", reference=tmp_path / "ref")
    assert {j.rel.name: j.ref for j in jobs} == {"cat.jpg": tmp_path / "ref" / "cat.png", "shot[1].jpg": None}


def test_a_file_reached_through_several_inputs_runs_once(tmp_path, env):
    """Under -r a file was denoised once for each input that reached it (`shoot -r` and
    `shoot/sub/c.png` wrote out/sub/c.png and out/c.png; `shoot/sub shoot` both out/c.png and
    out/sub/c.png): it runs once, to the output of its first naming, as a file given twice does."""
    make_tree(tmp_path / "shoot")
    s = run_batch([tmp_path / "shoot", tmp_path / "shoot" / "sub" / "c.png"], tmp_path / "o1", recursive=True)
    assert (s.total, s.done) == (5, 5)
    assert files_under(tmp_path / "o1") == set(RELS)
    s = run_batch([tmp_path / "shoot" / "sub", tmp_path / "shoot"], tmp_path / "o2", recursive=True)
    assert (s.total, s.done) == (5, 5)
    assert files_under(tmp_path / "o2") == {"c.png", "deeper/d.png", "a.png", "b.jpg", "other/e.png"}
    # two links to one file stay two inputs with two outputs
    (tmp_path / "shoot" / "link.png").symlink_to(tmp_path / "shoot" / "a.png")
    jobs = plan_jobs([tmp_path / "shoot"], tmp_path / "o3")
    assert sorted(j.rel.name for j in jobs) == ["a.png", "b.jpg", "link.png"]


def test_a_folder_that_cannot_take_the_outputs_fails_each_file_before_its_work(tmp_path, env, monkeypatch):
    """Every image was denoised before its write failed (permission denied): hours of work for a
    batch of thousands into a read-only folder. Each now fails before it is read, and the batch
    goes on (the folder may be made writable meanwhile; a file where a folder should be still
    fails at its write, as before). Root writes anywhere, so the permission is os.access's say."""
    import tempfile

    import aecompress.denoise

    make_tree(tmp_path / "in")
    (tmp_path / "out" / "sub").mkdir(parents=True)
    locked = {str(tmp_path / "out"), str(tmp_path / "out" / "sub")}
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: str(p) not in locked and real_access(p, mode, **kw))
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):                 # the write, as it fails for a user who is not root
        if str(dir) in locked:
            raise PermissionError(13, "Permission denied", str(dir))
        return real_mkstemp(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    calls = []
    real_denoise = aecompress.denoise.denoise_array
    monkeypatch.setattr(aecompress.denoise, "denoise_array", lambda *a, **k: calls.append(1) or real_denoise(*a, **k))
    s = run_batch([tmp_path / "in"], tmp_path / "out", recursive=True)
    assert (s.done, s.failed) == (0, 5) and len(calls) == 0
    assert all("permission denied" in r.error for r in s.results)
    assert files_under(tmp_path / "out") == set()


def test_a_photo_denoised_into_a_gif_says_the_palette_took_colours(tmp_path, pkg_dir):
    """`denoise photo.png -o photo.gif` reduces the picture to 256 colours: a note says so, as decode's
    does; a GIF source keeps its own palette and gets none."""
    from aecompress.batch import denoise_file
    from aecompress.package import load_package

    pkg = load_package(str(pkg_dir), "cpu", 1)
    src = tmp_path / "photo.png"
    Image.fromarray(noisy(smooth_image(40, 48), 20)).save(src)
    info = denoise_file(src, tmp_path / "photo.gif", pkg)
    assert any("a GIF holds 256 colours at most" in n for n in info.get("notes", []))
    assert Image.open(tmp_path / "photo.gif").mode == "P"
    info = denoise_file(tmp_path / "photo.gif", tmp_path / "again.gif", pkg)
    assert not any("GIF" in n for n in info.get("notes", []))
    assert "notes" not in denoise_file(src, tmp_path / "photo_out.png", pkg)
