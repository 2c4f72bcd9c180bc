"""Resuming a training run: the options a checkpoint's steps ran with, against the command's.

A checkpoint records its options (`train_config`); a resumed run must use the same ones, except
those that only say how long to run, how often to save or check, and on what hardware, so that the
manifest never records an option no step ran with.
"""

from __future__ import annotations

from pathlib import Path

PATH_OPTIONS = ("data", "val", "init")


def resolved(path) -> str:
    """A folder or file as the absolute path checkpoints and manifests record."""
    return str(Path(path).expanduser().resolve())


def _moved(key: str, recorded) -> bool:
    """A recorded folder that no longer exists: the data were moved, and the new path is taken
    (its images are the user's to vouch for) rather than refusing the run."""
    return key in PATH_OPTIONS and bool(recorded) and not Path(str(recorded)).exists()


def _norm(key: str, value):
    if isinstance(value, tuple):
        return list(value)
    if key in PATH_OPTIONS and value and Path(str(value)).exists():    # an --init may be a model's name
        return resolved(value)
    return value


def _show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "none"
    return str(value)


def differing_options(theirs: dict, ours: dict, skip=()) -> str:
    """'--crop 128 (now 64), --lr 0.0002 (now 0.0005)': the options recorded in `theirs` (a
    checkpoint's) that `ours` sets otherwise ('' when none differ), named as command-line flags
    (settings without a flag of their own show under their recorded names). Keys in skip, options an
    older checkpoint does not record, and folders that were moved away are not compared."""
    out = []
    for key, value in theirs.items():
        if key in skip or key not in ours or _moved(key, value):
            continue
        a, b = _norm(key, value), _norm(key, ours[key])
        if a == b:
            continue
        out.append(f"--{key.replace('_', '-')} {_show(a)} (now {_show(b)})")
    return ", ".join(out)


def refusal(path: Path, differ: str) -> str:
    """The one-line message refusing to resume a checkpoint with other options."""
    return (f"cannot resume {path} with other options: {differ}; resume with the options it ran with (only "
            "the run's length and hardware may change), or start over with --force instead of --resume")
