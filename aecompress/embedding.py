"""The files `aecompress embed` writes: codes.npy (one row of codes per image) and codes.json beside
it (the package, the array's shape and the SHA-256 of codes.npy's bytes, the images in row order).

The two are one result: `write_codes` writes both to temporary files before it replaces either,
replaces codes.json first and puts the old one back if codes.npy then cannot be placed, and
`read_codes` refuses a codes.npy whose digest or shape is not the one its codes.json records (what
a run killed outright, or a power cut, between the two replaces leaves), so a reader never pairs
one run's codes with another's list of images.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from .errors import AecError
from .fsutil import atomic_output, interrupts_deferred, write_bytes_atomic

DIGEST = "npy_sha256"       # the key in codes.json: the SHA-256 of the whole codes.npy file, hex


def names_path(npy: Path) -> Path:
    """The codes.json that belongs to a codes.npy."""
    return Path(npy).with_suffix(".json")


def write_codes(npy: Path, codes: np.ndarray, package: str, images: list[str], force: bool = False) -> Path:
    """Write `codes` to `npy` and the .json beside it (the package, the array's shape and digest, the
    images of its rows) as one pair: nothing is replaced until both are fully written; returns the
    .json's path."""
    npy = Path(npy)
    names = names_path(npy)
    buf = io.BytesIO()
    np.save(buf, codes)
    data = buf.getvalue()
    text = json.dumps({"package": package, "shape": list(codes.shape), DIGEST: hashlib.sha256(data).hexdigest(),
                       "images": list(images)}, indent=1) + "\n"
    try:
        old = names.read_bytes() if force and names.is_file() else None   # to put back if codes.npy fails
    except OSError:
        old = None
    placed = None
    try:
        with atomic_output(npy, force) as tmp:
            tmp.write_bytes(data)
            with atomic_output(names, force) as tmp_names:      # the .json goes first: it names the .npy
                tmp_names.write_text(text)                      # it belongs to, not the other way round
            placed = os.stat(names)
    except BaseException:
        if placed is not None:
            _undo(names, placed, old)
        raise
    return names


def _undo(names: Path, placed: os.stat_result, old: bytes | None) -> None:
    """codes.npy could not be placed after its codes.json was: the previous codes.json back (or none,
    where there was none), if the file there is still the one this write placed. Should that fail too,
    the digest tells readers that the pair does not match."""
    with interrupts_deferred():
        try:
            now = os.stat(names)
            if (now.st_dev, now.st_ino) != (placed.st_dev, placed.st_ino):
                return
            if old is None:
                names.unlink()
            else:
                write_bytes_atomic(names, old, force=True)
        except (OSError, AecError):
            pass


def read_codes(npy: Path) -> tuple[np.ndarray, dict]:
    """The codes `aecompress embed` wrote to `npy`, and its .json (a dict: `images`, `package`, `shape`,
    `npy_sha256`); AecError (one line) when either is missing or unreadable or they do not belong
    together. A .json written before the digest was recorded is checked by its shape only."""
    npy = Path(npy)
    names = names_path(npy)
    try:
        meta = json.loads(names.read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("images"), list):
            raise ValueError("no list of images")
    except FileNotFoundError:
        raise AecError(f"{names} is missing (embed writes it beside {npy.name}): run embed again") from None
    except (OSError, ValueError) as exc:
        raise AecError(f"{names} is not a list of images from embed ({exc}): run embed again") from None
    try:
        data = npy.read_bytes()
        codes = np.load(io.BytesIO(data), allow_pickle=False)
    except FileNotFoundError:
        raise AecError(f"{npy} is missing: run embed again") from None
    except (OSError, ValueError, EOFError) as exc:
        raise AecError(f"{npy} is not an array from embed ({exc}): run embed again") from None
    digest = meta.get(DIGEST)
    if ((digest is not None and hashlib.sha256(data).hexdigest() != digest) or codes.ndim != 2
            or list(codes.shape) != meta.get("shape") or codes.shape[0] != len(meta["images"])):
        raise AecError(f"{npy} does not belong to {names}: run embed again")
    return codes, meta
