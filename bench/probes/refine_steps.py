"""Probe: how many `encode --refine` steps pay, and with which search schedule, against WebP and
against plain encoding.

    python bench/probes/refine_steps.py [DIR] [--limit 4] [--start 0 | --images NAME ...] [--steps 0 50 100 200]
                                        [--qualities 5 10 20 30 50 70 90 100] [--model photo]
                                        [--schedule NAME=LR,cos|const,TAU0,DECAY ...] [--no-webp]
                                        [--out bench/results/probe_refine_steps.json]

Each step count runs with the shipped schedule for it (aecompress.refine.schedule_for), and with every
`--schedule` beside it (`old=0.01,const,0.5,5` is the one used until 2026-12-07), as
"refineSTEPS-NAME".

Every photo is analysed once; each step count codes it at every quality (real files, decoded by the
runtime's decoder), beside WebP at method 6 (bench/rd.py's settings). Curves are averaged per
setting over the photos, and BD-rates (PSNR) are those of the averaged curves, as bench/rd.py
reports them (Bjontegaard's cubic and PCHIP), against WebP and against 0 steps (plain encoding
with RDOQ). Encode seconds are in-process means per photo and quality. Writes JSON and a plot
beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aecompress import refine  # noqa: E402
from aecompress.codec import Codec  # noqa: E402
from aecompress.compress import decode_bytes, open_codec  # noqa: E402
from aecompress.imageio import read_image, to_rgb8  # noqa: E402
from aecompress.metrics import bd_rate, psnr  # noqa: E402
from rd import PIL_QUALITIES, pil_roundtrip  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?", default="../shared/data/val/photos")
    ap.add_argument("-m", "--model", default="photo")
    ap.add_argument("--limit", type=int, default=4)
    ap.add_argument("--start", type=int, default=0, help="take every len/limit-th photo from this index on "
                    "(another sample of the folder)")
    ap.add_argument("--images", nargs="+", default=None, metavar="NAME", help="these photos of DIR instead")
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 50, 100, 200])
    ap.add_argument("--qualities", type=int, nargs="+", default=[5, 10, 20, 30, 50, 70, 90, 100])
    ap.add_argument("--schedule", action="append", default=[], metavar="NAME=LR,cos|const,TAU0,DECAY")
    ap.add_argument("--no-webp", action="store_true", help="leave WebP out (BD-rates against 0 steps only)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/probe_refine_steps.json"))
    args = ap.parse_args()

    files = sorted(p for p in Path(args.folder).iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp"})
    if args.images:
        files = [f for f in files if f.name in args.images]
    else:
        files = files[args.start:: max(1, len(files) // args.limit)][: args.limit]
    base = open_codec(args.model, "cpu", None)
    schedules: dict[str, refine.Schedule | None] = {"": None}
    for spec in args.schedule:
        name, _, v = spec.partition("=")
        lr, kind, tau0, decay = v.split(",")
        schedules[f"-{name}"] = refine.Schedule(float(lr), kind == "cos", float(tau0), float(decay))
    codecs: dict[str, Codec] = {}
    for s in args.steps:
        for suffix, sched in schedules.items() if s else [("", None)]:
            codecs[f"refine{s}{suffix}"] = cod = base if s == 0 else Codec(base.pkg, refine=s)
            if s:
                cod.refine_schedule = sched
    names = list(codecs) + ([] if args.no_webp else ["WEBP"])
    rows: dict[str, dict[int, list[tuple[float, float]]]] = {n: {} for n in names}
    secs: dict[str, list[float]] = {n: [] for n in names}
    for i, f in enumerate(files):
        img = to_rgb8(read_image(f))
        px = img.shape[0] * img.shape[1]
        analysis = base.analyse(img)
        for n, cod in codecs.items():
            for q in args.qualities:
                t0 = time.perf_counter()
                data, _ = cod.code(analysis, cod.quality_to_position(q))
                secs[n].append(time.perf_counter() - t0)
                dec, _, _ = decode_bytes(data, cod.pkg)
                rows[n].setdefault(q, []).append((len(data) * 8 / px, psnr(img, dec)))
            print(f"[{i + 1}/{len(files)}] {f.name} {n}: {np.mean(secs[n][-len(args.qualities):]):.1f} s "
                  "per quality", file=sys.stderr, flush=True)
        if args.no_webp:
            continue
        for q in PIL_QUALITIES["WEBP"]:
            size, dec, te, _ = pil_roundtrip(img, "WEBP", q)
            rows["WEBP"].setdefault(q, []).append((size * 8 / px, psnr(img, dec)))
            secs["WEBP"].append(te)

    curves = {n: sorted((float(np.mean([b for b, _ in v])), float(np.mean([p for _, p in v]))) for v in rows[n].values())
              for n in names}

    def bd(me: str, ref: str, method: str = "cubic") -> float | None:
        r, m = np.array(curves[ref]), np.array(curves[me])
        return bd_rate(r[:, 0], r[:, 1], m[:, 0], m[:, 1], **({} if method == "cubic" else {"method": method}))

    result = {"folder": args.folder, "images": [f.name for f in files], "qualities": args.qualities,
              "schedules": {**{f"shipped{n}": vars(refine.schedule_for(n)) for n in args.steps if n},
                            **{k[1:]: vars(v) for k, v in schedules.items() if v is not None}},
              "curves": curves, "encode_seconds_mean": {n: float(np.mean(secs[n])) for n in names}, "bd_rate": {}}
    print(f"\n{len(files)} photos; BD-rate (PSNR, averaged curves) against WebP and against 0 steps")
    print(f"{'':>16} {'vs WebP':>9} {'(PCHIP)':>9} {'vs 0 steps':>11} {'encode s':>9}")
    fmt = lambda x: "n/a" if x is None else f"{x:+.1f}%"        # noqa: E731
    for n in codecs:
        v = {"webp": None if args.no_webp else bd(n, "WEBP"),
             "webp_pchip": None if args.no_webp else bd(n, "WEBP", "pchip"),
             "refine0": bd(n, "refine0") if n != "refine0" and "refine0" in curves else None}
        result["bd_rate"][n] = v
        print(f"{n:>16} {fmt(v['webp']):>9} {fmt(v['webp_pchip']):>9} {fmt(v['refine0']):>11} "
              f"{result['encode_seconds_mean'][n]:>9.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"wrote {args.out} (no matplotlib: no plot)")
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for n in names:
        c = np.array(curves[n])
        ax.plot(c[:, 0], c[:, 1], "o-" if n != "WEBP" else "s--", ms=3, label=n)
    ax.set(xlabel="bits per pixel (file bytes)", ylabel="PSNR RGB (dB)",
           title=f"encode --refine STEPS, {len(files)} photos")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = args.out.with_suffix(".png")
    fig.savefig(png, dpi=110)
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
