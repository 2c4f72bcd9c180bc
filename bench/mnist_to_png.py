"""Write the MNIST subset (../shared/data/mnist5k/mnist_5k.csv.gz) out as PNG folders by class.

    python bench/mnist_to_png.py OUT_DIR [--csv PATH] [--limit N]

Each row of the CSV is 784 pixel values (0-255) and the label; digit i of class c becomes
OUT_DIR/c/i.png (28x28 greyscale). The folder names become the labels of `aecompress train`'s report.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_CSV = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist5k" / "mnist_5k.csv.gz"


def read_mnist_csv(path: Path = DEFAULT_CSV, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 digits and (N,) int labels."""
    with gzip.open(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64, max_rows=limit)
    rows = np.atleast_2d(rows)
    return rows[:, :784].reshape(-1, 28, 28).astype(np.uint8), rows[:, 784]


def write_pngs(images: np.ndarray, labels: np.ndarray, out: Path) -> int:
    out = Path(out)
    for i, (im, lab) in enumerate(zip(images, labels)):
        d = out / str(int(lab))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im, "L").save(d / f"{i:05d}.png", optimize=True)
    return len(images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--limit", type=int, default=None)
    a = ap.parse_args()
    if not a.csv.is_file():
        raise SystemExit(f"mnist_to_png: {a.csv} not found (the MNIST subset of ../shared/data; name it with --csv)")
    images, labels = read_mnist_csv(a.csv, a.limit)
    n = write_pngs(images, labels, a.out)
    print(f"{n} digits written to {a.out}/0..9/")


if __name__ == "__main__":
    main()
