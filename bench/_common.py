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
    from aecompress.entrypoint import configure_process

    configure_process()         # a program of its own, as the command line is (Pillow's limit, quiet library logs)
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


def images_in(folder: Path, what: str = "images", kinds: set[str] | None = None) -> list[Path]:
    """The image files directly in a folder (of the suffixes in `kinds`, when given), sorted; an error
    naming the folder when there are none (of those kinds). What else the folder holds (files not named as images,
    images of another kind, subfolders, which are not searched) is named in one line on standard
    error, so that a user's folder is never cut short in silence."""
    from aecompress.imageio import is_image_name

    folder = Path(folder)
    if not folder.is_dir():
        raise SystemExit(f"{Path(sys.argv[0]).name}: error: {folder}: no such folder")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    images = [p for p in entries if p.is_file() and is_image_name(p)]
    if not images:
        raise SystemExit(f"{Path(sys.argv[0]).name}: error: no {what} in {folder}")
    found = [p for p in images if kinds is None or p.suffix.lower() in kinds]
    left = [p for p in entries if p not in found]
    if left:
        why = [("subfolder, not searched" if p.is_dir() else "another kind of image" if p in images
                else "not an image by its name") for p in left]
        groups = {w: [p.name for p, x in zip(left, why) if x == w] for w in dict.fromkeys(why)}
        print(f"{Path(sys.argv[0]).name}: leaving out " + "; ".join(
            f"{', '.join(names[:5])}{f' and {len(names) - 5} more' if len(names) > 5 else ''} ({w})"
            for w, names in groups.items()), file=sys.stderr)
    if not found:
        raise SystemExit(f"{Path(sys.argv[0]).name}: error: no {what} of the kinds it takes "
                         f"({', '.join(sorted(kinds))}) in {folder}")
    return found


def readable(files: list[Path], read: Callable[[Path], object],
             skipped: dict[str, str] | None = None) -> list[tuple[Path, object]]:
    """(file, read(file)) for the files that read; each that does not (read raises AecError: damaged,
    not really an image, not measurable) is named with its reason on standard error and left out (and
    in `skipped`, name -> reason, when given). An error line when none is left."""
    from aecompress.errors import AecError

    got = []
    for f in files:
        try:
            got.append((f, read(f)))
        except AecError as exc:
            print(f"{Path(sys.argv[0]).name}: skipping {exc}", file=sys.stderr)
            if skipped is not None:
                skipped[f.name] = str(exc).removeprefix(f"{f}: ")
    if files and not got:
        raise SystemExit(f"{Path(sys.argv[0]).name}: error: none of the {len(files)} images in "
                         f"{files[0].parent} could be used (each is named above with the reason)")
    return got
