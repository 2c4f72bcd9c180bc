"""Large-image benchmark: encode and decode a 24-megapixel photo, peak memory and seconds, seam check.

    python bench/large.py [--size 6000x4000] [--source IMAGE] [--out bench/results]

The test photo is an upscaled validation photo (smooth content makes tile seams easy to see). Each
step runs in a fresh process so its peak resident memory (ru_maxrss) is its own. The seam check
compares the reconstruction's pixel differences across tile borders with those inside tiles.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

Image.MAX_IMAGE_PIXELS = None


def seam_score(img: np.ndarray, tile: int = 1024, grid: int = 16) -> float:
    """Mean |horizontal gradient| across tile borders divided by that across the other borders of the
    codec's 16-pixel latent grid (1.0 = tile borders look like any other position of the grid)."""
    g = np.abs(np.diff(img.astype(np.float32), axis=1)).mean(axis=(0, 2))
    cols = np.arange(tile - 1, len(g), tile)
    control = np.setdiff1d(np.arange(grid - 1, len(g), grid), cols)
    return float(g[cols].mean() / g[control].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="6000x4000")
    ap.add_argument("--source", default="../shared/data/val/photos/wiki_041.png")
    ap.add_argument("--model", default="photo")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()
    w, h = map(int, args.size.split("x"))
    exe = [sys.executable, "-m", "aecompress"]
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "big.png"
        Image.open(args.source).convert("RGB").resize((w, h), Image.BICUBIC).save(src, compress_level=1)
        # ru_maxrss of children is a running maximum: each step in its own measurement process
        probe = ("import resource,subprocess,sys; subprocess.run(sys.argv[1:],check=True,stdout=subprocess.DEVNULL); "
                 "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")

        def measured(*cmd: str) -> dict:
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-c", probe, *exe, *cmd, "-m", args.model, "--force"],
                               check=True, capture_output=True, text=True)
            return {"seconds": time.perf_counter() - t0, "peak_rss_mb": int(r.stdout.split()[-1]) / 1024}

        # as a user runs it (reconstruction, PSNR and MS-SSIM for the report), then without the report
        enc_report = measured("encode", str(src), "-q", "75")
        enc = measured("encode", str(src), "-q", "75", "--quiet")
        dec = measured("decode", str(src.with_suffix(".aez")), "-o", str(Path(d) / "dec.png"), "--quiet")
        out = np.asarray(Image.open(Path(d) / "dec.png"))
        size = src.with_suffix(".aez").stat().st_size
    result = {"size": [w, h], "megapixels": w * h / 1e6, "bytes": size, "bpp": size * 8 / (w * h),
              "encode_seconds": enc_report["seconds"], "encode_peak_rss_mb": enc_report["peak_rss_mb"],
              "encode_quiet_seconds": enc["seconds"], "encode_quiet_peak_rss_mb": enc["peak_rss_mb"],
              "decode_seconds": dec["seconds"], "decode_peak_rss_mb": dec["peak_rss_mb"],
              "seam_score": seam_score(out)}
    print(json.dumps(result, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "large.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
