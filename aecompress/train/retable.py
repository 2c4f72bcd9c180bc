"""Refit a codec package's entropy tables to the symbols its encoder really writes.

    python -m aecompress.train.retable PACKAGE OUT --data ../shared/data/train/photos [--images 150]

The y tables of a hyperprior codec are discretised Gaussians, one per scale of the scale table; the
z tables are the trained factorized prior. Both are what training believed about the latents. The
encoder then codes them with rate-distortion optimised rounding (Codec._round), which rounds towards
the likelier integer and so makes the symbols more peaked than the Gaussians say. This step runs the
shipped encoder over training photos at qualities spread over the whole scale, counts the symbols
each table codes, and replaces every table with

    p = (counts + kappa * model) / (total + kappa)

(the model's own probabilities as a prior of kappa pseudo-symbols, so rarely used tables and
values stay as they were). Graphs, gains and the integer hyper-synthesis are untouched; the new
package has a new model id, as any change to what the decoder computes must. Needs only numpy and
the runtime (no torch). Measured effects are in docs/codec.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from ..codec import Codec
from ..entropy import TableSet, quantize_pmf
from ..imageio import IMAGE_SUFFIXES, read_image, to_rgb8
from ..package import MANIFEST, load_package

QUALITIES = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
KAPPA = 1000.0
TOTAL_BITS = 20          # the precision of the shipped tables (aecompress.train.export)


def symbol_counts(values: np.ndarray, table_index: np.ndarray, tables: TableSet) -> np.ndarray:
    """Counts of every entry of `tables.pmf` (escape included) for values coded with these tables."""
    entry, _ = tables.entries(np.ravel(values), np.ravel(table_index))
    return np.bincount(entry, minlength=len(tables.pmf))


def refit(tables: TableSet, counts: np.ndarray, kappa: float = KAPPA) -> TableSet:
    """Each table mixed with its counts (the escape entry keeps its fixed share, see quantize_pmf)."""
    pmfs = []
    for t in range(len(tables)):
        sl = slice(int(tables.offset[t]), int(tables.offset[t] + tables.length[t]))
        model = tables.pmf[sl].astype(np.float64)
        prior = model[:-1] / model.sum()
        c = counts[sl][:-1].astype(np.float64)
        pmfs.append(quantize_pmf((c + kappa * prior) / (c.sum() + kappa), total_bits=TOTAL_BITS))
    return TableSet.from_pmfs(pmfs, [int(m) for m in tables.minimum])


def collect(codec: Codec, images: list[np.ndarray], qualities=QUALITIES) -> tuple[np.ndarray, np.ndarray, int]:
    """Symbol counts of the y and z tables over `images` coded at `qualities`, and the bytes written."""
    yc = np.zeros(len(codec.y_tables.pmf), np.int64)
    zc = np.zeros(len(codec.z_tables.pmf), np.int64)
    total = 0
    for px in images:
        a = codec.analyse(px)
        for q in qualities:
            data, st = codec.code(a, codec.quality_to_position(q))
            total += len(data)
            yc += symbol_counts(st["q"], st["idx"], codec.y_tables)
            zc += symbol_counts(st["z"], codec._channel_index(st["z"].shape), codec.z_tables)
    return yc, zc, total


def retable(package: Path, out: Path, images: list[np.ndarray], note: str, kappa: float = KAPPA,
            log=print) -> dict:
    """Write a copy of `package` with refitted y and z tables to `out`; returns what was done."""
    pkg = load_package(package, "cpu")
    codec = Codec(pkg)
    if codec.kind != "hyperprior":
        raise SystemExit(f"{package}: only hyperprior codecs have tables to refit")
    t0 = time.time()
    yc, zc, before = collect(codec, images)
    log(f"counted {int(yc.sum()):,} y and {int(zc.sum()):,} z symbols in {time.time() - t0:.0f} s")
    arrays = dict(pkg.tables)
    arrays.update(refit(codec.y_tables, yc, kappa).to_arrays("y"))
    arrays.update(refit(codec.z_tables, zc, kappa).to_arrays("z"))
    out = Path(out)
    if out.exists():
        raise SystemExit(f"{out} exists")
    tmp = out.with_name(f".{out.name}.retable")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(pkg.path, tmp)
    try:
        np.savez_compressed(tmp / pkg.manifest.get("tables", "tables.npz"), **arrays)   # the copy is private
        # the same images coded with the new tables (the encoder's rounding reads them too)
        new_codec = Codec(load_package(tmp, "cpu"))
        _, _, after = collect(new_codec, images)
        record = {"step": "entropy tables refitted to the encoder's symbols (python -m aecompress.train.retable)",
                  "images": len(images), "qualities": list(QUALITIES), "kappa": kappa, "data": note,
                  "bytes_on_fitting_images": {"before": before, "after": after,
                                              "change_percent": round(100 * (after / before - 1), 2)}}
        manifest = json.loads((tmp / MANIFEST).read_text())
        manifest.setdefault("training", {}).setdefault("stages", []).append(record)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"wrote {out}: {before:,} -> {after:,} bytes on the fitting images ({record['bytes_on_fitting_images']['change_percent']:+.2f}%)")
    return record


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, required=True, help="folder of training photos")
    ap.add_argument("--images", type=int, default=150, help="photos used: every Nth of the folder sorted by name, N = photos // images "
                    "(so the sample follows the folder's name order)")
    ap.add_argument("--kappa", type=float, default=KAPPA, help="pseudo-symbols of the model's own tables")
    args = ap.parse_args(argv)
    files = sorted(p for p in args.data.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no images in {args.data}")
    step = max(1, len(files) // args.images)
    files = files[::step][:args.images]
    images = [to_rgb8(read_image(p)) for p in files]
    retable(args.package, args.out, images, f"{args.data}: {len(files)} photos (every {step}th, sorted by name)",
            args.kappa)


if __name__ == "__main__":
    from ..entrypoint import configure_process

    configure_process()         # a program of its own, as the command line is (Pillow's limit, quiet library logs)
    sys.exit(main())
