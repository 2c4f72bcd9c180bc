"""Atomic output: permissions like a plain open(), no clobbering, nothing left on failure."""

import os
from pathlib import Path

import pytest

from aecompress.errors import AecError
from aecompress.fsutil import atomic_output, first_writers, read_stdin, write_bytes_atomic, write_stdout


def test_output_gets_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "a.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644


def test_refuses_to_overwrite_and_cleans_up_on_failure(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"keep")
    with pytest.raises(AecError, match="exists"):
        write_bytes_atomic(f, b"new")
    assert f.read_bytes() == b"keep"
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_a_failed_write_removes_the_folders_it_made(tmp_path):
    (tmp_path / "keep").mkdir()
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "keep" / "new" / "deeper" / "a.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("full disk")
    assert [p.name for p in tmp_path.iterdir()] == ["keep"] and list((tmp_path / "keep").iterdir()) == []
    (tmp_path / "keep" / "new").mkdir()
    (tmp_path / "keep" / "new" / "other.bin").write_bytes(b"x")      # a folder with other files stays
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "keep" / "new" / "deeper" / "a.bin"):
            raise RuntimeError("full disk")
    assert sorted(p.name for p in (tmp_path / "keep" / "new").iterdir()) == ["other.bin"]
    write_bytes_atomic(tmp_path / "made" / "b.bin", b"ok")             # a write that succeeds keeps them
    assert (tmp_path / "made" / "b.bin").read_bytes() == b"ok"


def test_a_file_where_a_folder_should_be_is_named(tmp_path):
    (tmp_path / "notdir").write_bytes(b"x")
    with pytest.raises(AecError, match=r"notdir is not a folder$"):
        write_bytes_atomic(tmp_path / "notdir" / "sub" / "a.bin", b"data")
    with pytest.raises(AecError, match=r"notdir is not a folder$"):
        write_bytes_atomic(tmp_path / "notdir" / "a.bin", b"data")


def test_write_errors_say_what_went_wrong(tmp_path):
    import errno

    from aecompress.fsutil import _describe

    f = tmp_path / "a.bin"
    assert _describe(OSError(errno.EROFS, "Read-only file system"), f) == f"cannot write {f}: read-only file system"
    assert _describe(OSError(errno.EACCES, "Permission denied"), f) == f"cannot write {f}: permission denied"
    assert _describe(OSError(errno.ENOSPC, "No space left"), f) == f"no space left on device while writing {f}"


def test_first_writers_of_one_run(tmp_path):
    (tmp_path / "out").mkdir()
    outs = [tmp_path / "out" / "a.aez", tmp_path / "out" / "b.aez", tmp_path / "out" / ".." / "out" / "a.aez", None,
            tmp_path / "out" / "b.aez"]
    assert first_writers(outs) == [0, 1, 0, None, 1]
    assert first_writers([Path("-"), tmp_path / "-", "-"]) == [0, 1, 0]       # standard output is not ./-


class _Tty:
    def isatty(self):
        return True


def test_standard_streams_refuse_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stdout", _Tty())
    monkeypatch.setattr("sys.stdin", _Tty())
    with pytest.raises(AecError, match="terminal"):
        write_stdout(b"AEZ...")
    with pytest.raises(AecError, match="terminal"):
        read_stdin()


def test_a_second_interrupt_does_not_cut_the_cleanup_short(tmp_path, monkeypatch):
    """Ctrl-C while writing, then another Ctrl-C while the temporary file is being removed: the
    second one waits until the file is gone (it used to leave a .part behind)."""
    import signal

    import aecompress.fsutil as fsutil

    real_unlink = Path.unlink
    seen = []

    def unlink(self, *a, **k):                 # the second Ctrl-C lands during the removal
        signal.raise_signal(signal.SIGINT)
        seen.append(self.name)
        return real_unlink(self, *a, **k)

    monkeypatch.setattr(fsutil.Path, "unlink", unlink)
    # (CI may start the tests with SIGINT ignored, as for a background job: Ctrl-C's handler here)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with atomic_output(tmp_path / "out.png") as tmp:
                tmp.write_bytes(b"half")
                raise KeyboardInterrupt            # the first Ctrl-C
        assert seen and list(tmp_path.iterdir()) == []
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, old)


def test_long_names_get_short_temporary_names(tmp_path):
    """A 250-byte name is legal; its temporary file must not need 15 bytes more."""
    from aecompress.fsutil import part_prefix

    name = "x" * 246 + ".png"
    write_bytes_atomic(tmp_path / name, b"data")
    assert (tmp_path / name).read_bytes() == b"data"
    assert len(os.fsencode(part_prefix(tmp_path / name))) + 13 <= 255
    uni = "\u0436" * 120 + ".png"                  # 244 bytes of Cyrillic
    write_bytes_atomic(tmp_path / uni, b"d")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, uni])     # no .part left


def test_a_jpeg_that_does_not_fit_is_an_error(tmp_path):
    """Pillow's JPEG encoder, writing to a file that cannot grow (a full disk; here a file-size
    limit 10 bytes short), returned as if all was well and left a truncated file. Images are now
    encoded in memory and written by write_bytes_atomic: an error, and nothing left."""
    import subprocess
    import sys

    script = f"""
import io, resource, signal, sys
import numpy as np
from PIL import Image
from aecompress.errors import AecError
from aecompress.imageio import save_image
px = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
buf = io.BytesIO(); Image.fromarray(px).save(buf, "JPEG", quality=95)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)          # writes past the limit fail with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (len(buf.getvalue()) - 10, resource.RLIM_INFINITY))
try:
    save_image({str(tmp_path / "a.jpg")!r}, px)
except AecError as exc:
    print("error:", exc)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("error: cannot write") and "too large" in r.stdout.lower(), r.stdout
    assert list(tmp_path.iterdir()) == []


def test_a_signal_while_the_temporary_file_is_made_leaves_nothing(tmp_path, monkeypatch):
    import signal
    import tempfile

    import aecompress.fsutil as fsutil

    real = tempfile.mkstemp

    def mkstemp(*a, **k):                      # Ctrl-C lands just after the file is created
        out = real(*a, **k)
        signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(fsutil.tempfile, "mkstemp", mkstemp)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            write_bytes_atomic(tmp_path / "out.png", b"data")
    finally:
        signal.signal(signal.SIGINT, old)
    assert list(tmp_path.iterdir()) == []
