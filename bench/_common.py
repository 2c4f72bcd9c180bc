"""What the benchmark scripts share: running a script's main so that a mistake is one line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
VAL_PHOTOS = ROOT.parent / "shared" / "data" / "val" / "photos"     # the default set, wherever the script runs from


def run(main: Callable[[], object]) -> None:
    """Run a benchmark's main: a bad argument, a missing folder or an unknown model ends with one line
    (`rd.py: error: ...`) and exit status 1, as the CLI's errors do, instead of a traceback;
    AECOMPRESS_DEBUG=1 lets the traceback through."""
    name = Path(sys.argv[0]).name
    try:
        main()
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one line for whatever went wrong
        from aecompress.errors import AecError, env_flag

        if env_flag("AECOMPRESS_DEBUG"):
            raise

        text = str(exc).splitlines()[0] if str(exc) else ""
        what = text if isinstance(exc, AecError) else f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        print(f"{name}: error: {what}", file=sys.stderr)
        sys.exit(1)


def images_in(folder: Path, what: str = "images") -> list[Path]:
    """The image files directly in a folder, sorted; an error naming the folder when there are none."""
    from aecompress.imageio import is_image_name

    folder = Path(folder)
    if not folder.is_dir():
        raise SystemExit(f"{Path(sys.argv[0]).name}: error: {folder}: no such folder")
    found = sorted(p for p in folder.iterdir() if p.is_file() and is_image_name(p))
    if not found:
        raise SystemExit(f"{Path(sys.argv[0]).name}: error: no {what} in {folder}")
    return found
