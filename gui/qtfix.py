"""A guard against a PySide6 6.12.0 bug on Python 3.11 and older that would crash the app.

In that combination every call of a Qt method that returns nothing (``label.setText``,
``painter.setPen``, ``widget.update``, ...) takes a reference to None without owning one, so None's
reference count falls by one per call until the interpreter aborts with "Fatal Python error:
none_dealloc" -- after a few thousand calls, that is seconds to minutes of use (dragging the compare
divider repaints 60 times a second). Python 3.12 made None immortal, and PySide6 6.11 is not
affected: the real fix is `pip install 'PySide6-Essentials!=6.12.0'` or Python >= 3.12.

When the bug is detected, None gets a cushion of references held by lists that are never freed
(not even at interpreter exit, where freeing them would hand the debt back), topped up by a timer.
Memory: 8 MB per million void calls.
"""

from __future__ import annotations

import ctypes
import sys

CUSHION = 1_000_000
_held: list[list] = []
_timer = None


def affected() -> bool:
    """True when Qt method calls returning nothing leak a reference to None (PySide6 6.12.0, Python < 3.12)."""
    if sys.version_info >= (3, 12):
        return False
    from PySide6.QtCore import QRectF

    r = QRectF()
    before = sys.getrefcount(None)
    for _ in range(32):
        r.adjust(0, 0, 0, 0)
    return sys.getrefcount(None) <= before - 16


def top_up() -> None:
    """Give None another million references when the cushion runs low."""
    if sys.getrefcount(None) < CUSHION // 2:
        chunk = [None] * CUSHION
        ctypes.pythonapi.Py_IncRef.argtypes = [ctypes.py_object]
        ctypes.pythonapi.Py_IncRef(chunk)            # never freed, even when the interpreter exits
        _held.append(chunk)


def install(app) -> bool:
    """Guard the running QApplication if this PySide6 has the bug; returns whether it does."""
    global _timer
    if _timer is not None:
        return True
    if not affected():
        return False
    from PySide6.QtCore import QTimer

    top_up()
    _timer = QTimer(app)
    _timer.setInterval(1000)
    _timer.timeout.connect(top_up)
    _timer.start()
    import PySide6

    print(f"aecompress: PySide6 {PySide6.__version__} on Python {sys.version_info.major}.{sys.version_info.minor} "
          "has a reference-counting bug; working around it (better: pip install 'PySide6-Essentials!=6.12.0')",
          file=sys.stderr)
    return True
