"""Large-image benchmark: encode and decode a 24-megapixel photo, peak memory and seconds, seam check.

    python bench/large.py [--size 6000x4000] [--source IMAGE] [-q 75] [--out bench/results]

The test photo is an upscaled validation photo (smooth content makes tile seams easy to see). Each
step runs in a fresh process so its peak resident memory (ru_maxrss) is its own. The seam check
compares the reconstruction's pixel differences across tile borders with those inside tiles, beside
the same score of the photo itself (its content alone does not give 1.0: the upscaled photo scores
about 1.7 across rows, so a decode at 1.7 has no seams).
Writes large.json and large.png (large_qN.* for another quality than the default 75: from about 79
the photo codec codes a 24-megapixel photo upsampled to 3/2, 54 million pixels, from about 89 to
5/3, 66.7 million).
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


def _borders(step: float, n: int) -> np.ndarray:
    """Indices into an n-long gradient of the borders every `step` pixels (not an integer when the
    image was coded at another resolution: at 5/3 a 1024-pixel tile is 614.4 pixels of the output,
    and rounding the step once let the borders drift 6 pixels off across a 24-megapixel photo)."""
    k = np.arange(1, int(n / step) + 2)
    idx = np.round(k * step).astype(np.int64) - 1
    return np.unique(idx[(idx >= 0) & (idx < n)])


def seam_score(img: np.ndarray, tile: float = 1024, grid: float = 16, axis: int = 1) -> float:
    """Mean |gradient| across tile borders divided by that across the other borders of the codec's
    16-pixel latent grid (1.0 = tile borders look like any other position of the grid); axis 1:
    across the vertical borders (between columns), axis 0: across the horizontal ones (rows).
    tile and grid: their sizes in pixels of img, fractions included."""
    g = np.abs(np.diff(img.astype(np.float32), axis=axis)).mean(axis=(1 - axis, 2))
    cols = _borders(tile, len(g))
    control = np.setdiff1d(_borders(grid, len(g)), cols)
    return float(g[cols].mean() / g[control].mean())


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import ROOT, VAL_PHOTOS

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="6000x4000")
    ap.add_argument("--source", type=Path, default=VAL_PHOTOS / "wiki_041.png")
    ap.add_argument("--model", default="photo")
    ap.add_argument("-q", "--quality", type=int, default=75)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    try:
        w, h = map(int, args.size.lower().split("x"))
        assert w > 0 and h > 0
    except (ValueError, AssertionError):
        ap.error(f"--size '{args.size}': use WIDTHxHEIGHT, e.g. 6000x4000")
    if not args.source.is_file():
        ap.error(f"--source {args.source}: no such file")
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
        q = str(args.quality)
        enc_report = measured("encode", str(src), "-q", q)
        enc = measured("encode", str(src), "-q", q, "--quiet")
        dec = measured("decode", str(src.with_suffix(".aez")), "-o", str(Path(d) / "dec.png"), "--quiet")
        out = np.asarray(Image.open(Path(d) / "dec.png"))
        original = np.asarray(Image.open(src))
        size = src.with_suffix(".aez").stat().st_size
        from aecompress.container import read_header

        # tiles and the latent grid are laid on the coded image: at another resolution, their
        # borders land every 1024 x scale and 16 x scale pixels of the output (768 and 12 at 4/3,
        # 614.4 and 9.6 at 5/3: seam_score places them at fractions)
        scale = read_header(src.with_suffix(".aez").read_bytes()).scale
        tile, grid = 1024 * scale, 16 * scale
    result = {"size": [w, h], "megapixels": w * h / 1e6, "quality": args.quality, "bytes": size, "bpp": size * 8 / (w * h),
              "encode_seconds": enc_report["seconds"], "encode_peak_rss_mb": enc_report["peak_rss_mb"],
              "encode_quiet_seconds": enc["seconds"], "encode_quiet_peak_rss_mb": enc["peak_rss_mb"],
              "decode_seconds": dec["seconds"], "decode_peak_rss_mb": dec["peak_rss_mb"],
              "coded_scale": scale, "seam_score": seam_score(out, tile, grid),
              "seam_score_rows": seam_score(out, tile, grid, axis=0),
              # the same scores of the photo itself: what its content gives at those rows and columns
              "source_seam_score": seam_score(original, tile, grid),
              "source_seam_score_rows": seam_score(original, tile, grid, axis=0)}
    steps = (("encode (with the report)", "encode"), ("encode --quiet", "encode_quiet"), ("decode", "decode"))
    print(f"{w}x{h} ({w * h / 1e6:.0f} MP) from {args.source.name} at -q {args.quality}: {size:,} bytes, "
          f"{result['bpp']:.3f} bpp; "
          f"seam score {result['seam_score']:.3f} across columns, {result['seam_score_rows']:.3f} across rows "
          f"(1.0: tile borders like the rest of the latent grid; the photo itself: "
          f"{result['source_seam_score']:.3f} and {result['source_seam_score_rows']:.3f})\n")
    print("| step | seconds | peak RSS (MB) |\n|---|---:|---:|")
    for label, key in steps:
        print(f"| {label} | {result[key + '_seconds']:.1f} | {result[key + '_peak_rss_mb']:.0f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    name = "large" if args.quality == 75 else f"large_q{args.quality}"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2))
    plot(result, steps, args.out / f"{name}.png")
    print(f"\nwrote {args.out / (name + '.json')} and {args.out / (name + '.png')}")


def plot(result: dict, steps, path: Path) -> None:
    """Seconds and peak memory of each step, side by side."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    w, h = result["size"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    labels = [label for label, _ in steps]
    a.barh(labels, [result[k + "_seconds"] for _, k in steps], color="#2d6cdf")
    a.set_xlabel("seconds, whole process")
    b.barh(labels, [result[k + "_peak_rss_mb"] for _, k in steps], color="#8fb3ef")
    b.set_xlabel("peak resident memory (MB)")
    b.set_yticks([])
    fig.suptitle(f"{w}x{h} photo ({w * h / 1e6:.0f} MP), -q {result.get('quality', 75)}, {result['bpp']:.3f} bpp")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import run

    run(main)
