"""`aecompress gui`: open the desktop app (the optional PySide6 dependency is imported only here)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import app


@app.command()
def gui(files: Optional[List[Path]] = typer.Argument(
        None, help="Images or .aez files to open (several go to the batch queue).")) -> None:
    """Open the desktop app: drop photos on it to compress, decompress or denoise them."""
    from ..errors import AecError, extra_hint

    try:
        import PySide6  # noqa: F401
    except ImportError:
        raise AecError(f"the desktop app needs PySide6: {extra_hint('gui')}") from None
    import signal

    from gui.app import main

    signal.signal(signal.SIGTERM, signal.SIG_DFL)       # the app's own temporary files are written atomically
    raise typer.Exit(main([str(f) for f in files or []]))
