"""C libraries' messages kept off standard error.

libtiff, libpng and libjpeg print warnings and errors straight onto file descriptor 2 ("TIFFFillStrip:
Read error on strip 0", "PNG warning: IDAT: Extra compressed data"): a damaged file would get them
beside its one-line error, and a merely odd one (a bad ResolutionUnit) would print them on success.

`guard()`, called once by the command line, moves Python's own `sys.stderr` onto a duplicate of
descriptor 2. `quiet()` then points descriptor 2 itself at /dev/null while an image library works,
so the libraries' lines go nowhere while everything Python prints, from any thread, still reaches the
terminal. Windows may overlap (parallel batch workers): the last one out restores descriptor 2.
Without `guard()` (the library used from Python, the GUI, tests) `quiet()` changes nothing.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_real: int | None = None          # a duplicate of the original descriptor 2
_null: int | None = None


def guard() -> None:
    """Python's standard error onto its own duplicate of descriptor 2 (once; quietly not at all when
    descriptors cannot be duplicated or standard error is not a descriptor)."""
    global _real, _null
    if _real is not None:
        return
    try:
        sys.stderr.flush()
        real = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
    except (OSError, AttributeError, ValueError):
        return
    enc = getattr(sys.stderr, "encoding", None) or "utf-8"
    sys.stderr = os.fdopen(real, "w", buffering=1, encoding=enc, errors="backslashreplace", closefd=False)
    _real, _null = real, null


@contextmanager
def quiet():
    """Descriptor 2 on /dev/null for the duration (after guard())."""
    global _depth
    if _real is None:
        yield
        return
    with _lock:
        if _depth == 0:
            os.dup2(_null, 2)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                os.dup2(_real, 2)
