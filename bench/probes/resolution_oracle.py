"""Probe: what choosing the coding resolution per image (instead of per quality) could win.

    python bench/probes/resolution_oracle.py [--every 2] [--model photo] [DIR]
                                             [--out bench/results/probe_resolution_oracle.json]

For each photo (every `--every`-th of DIR, default ../shared/data/val/photos) it codes real files at
every scale of the resolution ladder (1/2, 3/4, full) and every quality level 0-8, decodes them to
full size, and takes the photo's own lower envelope over the three curves (for each PSNR, the
fewest bits any scale needs; log-rate interpolated between levels). That is an oracle: the best any
per-image choice of resolution could do. It is compared with the shipped ladder's curve for the
same photo (25 positions along it), as a BD-rate (PSNR) over the range both cover, and over
27-34 dB, the range of the WebP comparison in bench/rd.py. Negative: the oracle needs fewer bits.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from aecompress.codec import Codec  # noqa: E402
from aecompress.ladder import SCALES, Ladder, Rung  # noqa: E402
from aecompress.metrics import psnr  # noqa: E402
from aecompress.package import load_package  # noqa: E402


def bd_rate(ref, new, lo=-np.inf, hi=np.inf) -> float:
    """Mean log-rate difference of `new` against `ref` ((bpp, PSNR) points) over their common PSNR range."""
    r = np.array(sorted(ref, key=lambda t: t[1]))
    n = np.array(sorted(new, key=lambda t: t[1]))
    lo, hi = max(r[0, 1], n[0, 1], lo), min(r[-1, 1], n[-1, 1], hi)
    if hi <= lo:
        return float("nan")
    ps = np.linspace(lo, hi, 200)
    diff = np.interp(ps, n[:, 1], np.log(n[:, 0])) - np.interp(ps, r[:, 1], np.log(r[:, 0]))
    return float(np.exp(diff.mean()) - 1)


def pct(v: float) -> str:
    return "n/a" if np.isnan(v) else f"{v:+.2%}"


def envelope(curves: dict) -> list[tuple[float, float]]:
    ps = np.linspace(min(c[:, 1].min() for c in curves.values()), max(c[:, 1].max() for c in curves.values()), 300)
    out = []
    for p in ps:
        bits = [np.exp(np.interp(p, c[:, 1], np.log(c[:, 0]))) for c in curves.values() if c[0, 1] <= p <= c[-1, 1]]
        if bits:
            out.append((min(bits), p))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?", type=Path, default=Path("../shared/data/val/photos"))
    ap.add_argument("--every", type=int, default=2)
    ap.add_argument("--model", default="photo")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results/probe_resolution_oracle.json"))
    args = ap.parse_args()
    codec = Codec(load_package(args.model, "cpu", args.threads))
    top = float(codec.levels - 1)
    at_scale = {}
    for s in SCALES:
        at_scale[s] = copy.copy(codec)
        at_scale[s].ladder = Ladder([Rung(s, 0.0, top)])       # position = level, at this scale
    rows = []
    print("| photo | oracle vs ladder, whole range | 27-34 dB |\n|---|---|---|")
    for f in sorted(args.folder.glob("*.png"))[::args.every]:
        im = np.asarray(Image.open(f).convert("RGB"))
        h, w = im.shape[:2]
        a = codec.analyse(im)

        def point(c: Codec, u: float) -> tuple[float, float]:
            data, st = c.code(a, u)
            return len(data) * 8 / (h * w), psnr(im, c.reconstruct(st, h, w))

        curves = {}
        for s, c in at_scale.items():
            pts = np.array([point(c, float(lv)) for lv in range(codec.levels)])
            if np.all(np.diff(pts[:, 1]) > 0):
                curves[s] = pts
        ladder = [point(codec, float(u)) for u in np.linspace(0, codec.span, 25)]
        env = envelope(curves)
        rows.append({"photo": f.name, "bd_rate": bd_rate(ladder, env), "bd_rate_27_34": bd_rate(ladder, env, 27, 34)})
        print(f"| {f.name} | {pct(rows[-1]['bd_rate'])} | {pct(rows[-1]['bd_rate_27_34'])} |", flush=True)
    whole = float(np.nanmean([r["bd_rate"] for r in rows]))
    mid = float(np.nanmean([r["bd_rate_27_34"] for r in rows]))
    print(f"| mean | {pct(whole)} | {pct(mid)} |")
    for r in rows:                  # no common range (a photo whose curve tops out below 27 dB): null
        r.update({k: None for k, v in r.items() if isinstance(v, float) and np.isnan(v)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": codec.pkg.name, "model_id": codec.pkg.model_id.hex()[:8],
                                    "mean_bd_rate": whole, "mean_bd_rate_27_34": mid, "photos": rows},
                                   indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
