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
    assert [p.name for p in tmp_path.iterdir()] and (tmp_path / uni).exists()


def test_save_image_writes_through_the_checked_writer(tmp_path, monkeypatch):
    """Images are encoded in memory and written by write_bytes_atomic: a full disk is an error and
    leaves nothing (Pillow's JPEG encoder writing to a full disk could return as if all was well)."""
    import errno

    import numpy as np

    import aecompress.fsutil as fsutil
    from aecompress.imageio import save_image

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil.os, "fsync", full)
    with pytest.raises(AecError, match="no space left"):
        save_image(tmp_path / "a.jpg", np.zeros((16, 16, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []
