"""Probe: denoiser packages side by side on the noise that is not plain Gaussian.

    python bench/probes/denoise_noise_kinds.py NAME=PACKAGE [NAME=PACKAGE ...] [--data DIR] [--limit N]
                                               [--out bench/results/probe_denoise_noise_kinds.json]

bench/denoise.py measures Gaussian noise against the peers; this measures what else the blind model
is trained for, on full images (default: the 28 validation photos), every package on the same noisy
inputs (seeded by file name and kind):

- Poisson-Gaussian noise, variance a x + b with three quarters of it signal-dependent, at a standard
  deviation of 4, 10 and 25 (0-255 scale) at mid-grey (the heteroscedastic model the trainer uses);
- Gaussian noise then JPEG, as a noisy photo saved by a camera or an app: sigma 5 at quality 75 and
  sigma 10 at quality 90 (Pillow, 4:2:0);
- a clean photo saved as JPEG quality 75 (JPEG artefacts only).

It prints the mean PSNR against the clean photo per kind and package, and the noisy input's, and
writes a JSON file.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from aecompress.denoise import denoise_array  # noqa: E402
from aecompress.imageio import read_image, to_rgb8  # noqa: E402
from aecompress.metrics import psnr  # noqa: E402
from aecompress.package import load_package  # noqa: E402

KINDS = {"pg4": ("pg", 4, None), "pg10": ("pg", 10, None), "pg25": ("pg", 25, None),
         "g5_jpeg75": ("gauss", 5, 75), "g10_jpeg90": ("gauss", 10, 90), "clean_jpeg75": ("gauss", 0, 75)}


def noisy_version(clean: np.ndarray, kind: str, name: str) -> np.ndarray:
    model, sigma, quality = KINDS[kind]
    rng = np.random.default_rng(zlib.crc32(f"{name}/{kind}".encode()))
    x = clean.astype(np.float32) / 255
    n = rng.standard_normal(clean.shape).astype(np.float32)
    s = sigma / 255
    if model == "pg":
        a, b = 0.75 * s * s / 0.5, 0.25 * s * s
        y = x + np.sqrt(a * x + b) * n
    else:
        y = x + s * n
    y = np.clip(np.round(y * 255), 0, 255).astype(np.uint8)
    if quality:
        buf = io.BytesIO()
        Image.fromarray(y).save(buf, format="JPEG", quality=quality)
        y = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("packages", nargs="+", metavar="NAME=PACKAGE")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "val" / "photos")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "probe_denoise_noise_kinds.json")
    a = ap.parse_args()
    pkgs = {}
    for spec in a.packages:
        name, _, path = spec.partition("=")
        pkgs[name] = load_package(path or name, device="cpu", threads=a.threads)
    files = sorted(p for p in a.data.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".tif", ".bmp"})
    if a.limit and a.limit < len(files):
        files = [files[i] for i in np.linspace(0, len(files) - 1, a.limit).round().astype(int)]
    scores = {k: {m: [] for m in ["noisy", *pkgs]} for k in KINDS}
    t0 = time.time()
    for i, f in enumerate(files):
        clean = to_rgb8(read_image(f))
        for kind in KINDS:
            noisy = noisy_version(clean, kind, f.name)
            scores[kind]["noisy"].append(psnr(clean, noisy))
            for m, pkg in pkgs.items():
                scores[kind][m].append(psnr(clean, denoise_array(noisy, pkg)[0]))
        print(f"[{i + 1}/{len(files)}] {f.name} ({time.time() - t0:.0f} s)", file=sys.stderr)
    means = {k: {m: float(np.mean(v)) for m, v in row.items()} for k, row in scores.items()}
    print(f"\nmean PSNR (dB) over {len(files)} images of {a.data}")
    print(f"{'kind':14}" + "".join(f"{m:>12}" for m in ["noisy", *pkgs]))
    for k, row in means.items():
        print(f"{k:14}" + "".join(f"{row[m]:12.3f}" for m in ["noisy", *pkgs]))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"data": str(a.data), "images": [f.name for f in files],
                                 "packages": {n: s.partition("=")[2] or n for n, s in zip(pkgs, a.packages)},
                                 "mean_psnr": means, "per_image": scores}, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
