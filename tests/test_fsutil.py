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
