"""Rate-distortion benchmark: our codec against JPEG, WebP and AVIF (all through Pillow), side by side.

    python bench/rd.py [FOLDER] [-m photo] [--limit N [--offset K]] [--refine STEPS] [--out bench/results]
    python bench/rd.py --merge A/rd.json B/rd.json --out DIR    (runs on disjoint images, as one)

For every image and setting it measures bpp from the real file bytes, RGB PSNR and MS-SSIM of the
decoded image (of a greyscale image, in grey: the CLI's figures), and encode/decode seconds. Every
codec codes the pixels `aecompress encode` codes (alpha dropped, 16 bits rounded to 8, sRGB); a file
that cannot be read, or that a codec reproduces exactly (an infinite PSNR), is named and skipped. Curves are averaged per setting over the images (as
CompressAI reports), and the headline BD-rate of ours against each codec is that of the averaged
curves (PSNR; log-rate as a cubic of PSNR, Bjontegaard's fit), over the PSNR interval both averaged
curves cover (printed with it). Beside it: the same with piecewise-cubic interpolation (PCHIP, the
JVET/CompressAI variant, which follows our curve's saturated top more closely), and the mean,
median and range of the per-image BD-rates, each over that image's own shared interval (images
whose curves share less than 1 dB are left out and counted). A JSON file and an RD plot (PNG) are
written.

The peers run as their command-line tools' users would run them at their best: JPEG with optimised
Huffman tables (cjpeg -optimize, 4:2:0 as cjpeg's default), WebP at method 6 (cwebp -m 6), AVIF at
speed 6 with 4:4:4 chroma (avifenc's defaults). It also times the whole `aecompress encode` +
`aecompress decode` processes on a 768x512 crop. When the model has a resolution ladder, the same
model restricted to full resolution ("ours-full") runs beside it, so the ladder's effect is measured
in the same run; when the ladder has an intermediate resolution (3/4), "ours-half" is the ladder
the same calibration gives with half and full resolution only. "ours-round" is the same model with
its latents plainly rounded instead of rate-distortion optimised rounding (the encoder's RDOQ,
docs/codec.md).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, features

from aecompress.codec import Codec
from aecompress.compress import coding_input, decode_bytes, in_mode, open_codec
from aecompress.errors import AecError
from aecompress.ladder import Ladder, calibrate, parse_points
from aecompress.imageio import read_image
from aecompress.metrics import bd_rate, ms_ssim, psnr

OUR_QUALITIES = [1, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 100]
PIL_QUALITIES = {"JPEG": [5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95],
                 "WEBP": [1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95],
                 "AVIF": [5, 15, 25, 35, 45, 55, 65, 75, 85, 95]}


def pil_roundtrip(img: np.ndarray, fmt: str, q: int) -> tuple[int, np.ndarray, float, float]:
    """(bytes, decoded pixels, encode and decode seconds) of an (H, W, 3) or, for a greyscale source,
    (H, W, 1) image: that is saved as a greyscale image, as cjpeg would code the file, and its decoded
    pixels come back as one channel, as `aecompress decode` writes ours (the mean of three)."""
    grey = img.shape[2] == 1
    buf = io.BytesIO()
    t0 = time.perf_counter()
    kw = {"quality": q}
    if fmt == "JPEG":
        kw.update(subsampling="4:2:0", optimize=True)
    if fmt == "WEBP":
        kw["method"] = 6
    if fmt == "AVIF":
        kw.update(speed=6, subsampling="4:4:4")
    Image.fromarray(img[:, :, 0] if grey else img).save(buf, format=fmt, **kw)
    te = time.perf_counter() - t0
    t0 = time.perf_counter()
    dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    td = time.perf_counter() - t0
    return len(buf.getvalue()), in_mode(dec, "L") if grey else dec, te, td


def measure_image(f: Path, codec: Codec, ours: dict[str, Codec], peers: list[str], settings: dict
                  ) -> tuple[dict, dict]:
    """One image's points ({codec: {setting: {bpp, psnr, ms_ssim}}}) and seconds ({codec: {encode: [...],
    decode: [...]}}). Every codec codes the pixels `aecompress encode` codes (alpha dropped, 16 bits
    rounded to 8, colour converted to sRGB); a greyscale image is coded and measured as greyscale,
    as the CLI does (ours codes three equal channels, its header says grey and the decoder writes
    their mean; the peers get a greyscale image). AecError, naming the file, when it cannot be read or
    when a codec reproduces it exactly (its infinite PSNR has no place in the averaged curves)."""
    pic = read_image(f)
    img, _ = coding_input(pic, codec)
    ref = in_mode(img, pic.mode)                       # (H, W, 1) for a greyscale source
    px = img.shape[0] * img.shape[1]
    points = {c: {} for c in [*ours, *peers]}
    took = {c: {"encode": [], "decode": []} for c in points}
    analysis = None
    if ours:
        t0 = time.perf_counter()
        analysis = codec.analyse(img)
        t_an = time.perf_counter() - t0
    for name, cod in ours.items():
        own, t_own = analysis, t_an
        if cod.pkg is not codec.pkg:
            t0 = time.perf_counter()
            own = cod.analyse(img)
            t_own = time.perf_counter() - t0
        for q in settings[name]:
            t0 = time.perf_counter()
            data, _ = cod.code(own, cod.quality_to_position(q), pic.mode, pic.bits, pic.has_alpha)  # cached per scale
            te = t_own + time.perf_counter() - t0
            t0 = time.perf_counter()
            dec, _, _ = decode_bytes(data, cod.pkg)      # in the source's layout, as `decode` writes it
            td = time.perf_counter() - t0
            points[name][q] = {"bpp": len(data) * 8 / px, "psnr": psnr(ref, dec), "ms_ssim": ms_ssim(ref, dec)}
            took[name]["encode"].append(te)
            took[name]["decode"].append(td)
    for fmt in peers:
        for q in settings[fmt]:
            size, dec, te, td = pil_roundtrip(ref, fmt, q)
            points[fmt][q] = {"bpp": size * 8 / px, "psnr": psnr(ref, dec), "ms_ssim": ms_ssim(ref, dec)}
            took[fmt]["encode"].append(te)
            took[fmt]["decode"].append(td)
    for c, pts in points.items():
        for q, p in pts.items():
            if not np.isfinite(p["psnr"]) or p["ms_ssim"] >= 1:
                raise AecError(f"{f}: {c} at setting {q} reproduces it exactly (an infinite PSNR cannot be "
                               "averaged into the curves)")
    return points, took


def measure_all(files: list[Path], codec: Codec, ours: dict[str, Codec], peers: list[str], settings: dict):
    """measure_image over the files: (rows[codec][setting] -> per-image dicts, times[codec] -> {encode,
    decode} lists, the files measured, {name: reason} of those skipped). A file that cannot be
    measured is named with its reason on standard error and left out; an error line when none is left."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import readable

    codecs = [*ours, *peers]
    rows: dict[str, dict[int, list[dict]]] = {c: {q: [] for q in settings[c]} for c in codecs}
    times: dict[str, dict[str, list[float]]] = {c: {"encode": [], "decode": []} for c in codecs}
    skipped: dict[str, str] = {}

    def measure(f: Path):
        out = measure_image(f, codec, ours, peers, settings)
        print(f"[{files.index(f) + 1}/{len(files)}] {f.name}", file=sys.stderr)
        return out

    measured = readable(files, measure, skipped)     # damaged, not an image, or not measurable: named, left out
    for _, (points, took) in measured:
        for c in codecs:
            for q in settings[c]:
                rows[c][q].append(points[c][q])
            for k in ("encode", "decode"):
                times[c][k].extend(took[c][k])
    done = [f for f, _ in measured]
    return rows, times, done, skipped


def whole_process_seconds(model: str, sample: Path) -> dict:
    """Median wall time of 3 runs of `aecompress encode` (with its report), `encode --quiet` and
    `decode` on a 768x512 crop, new processes (bench/speed.py, which also compares models)."""
    from speed import measure, summarise

    if Path(model).is_dir():              # measure runs in a temporary folder: a relative path would miss
        model = str(Path(model).resolve())
    s = summarise(measure({"ours": (model, None)}, sample, runs=3))["ours"]
    return {"encode_s": s["encode_median_s"], "encode_quiet_s": s["encode_quiet_median_s"],
            "decode_s": s["decode_median_s"], "total_s": s["encode_decode_median_s"],
            "quiet_total_s": s["quiet_encode_decode_median_s"], "size": [768, 512]}


def half_full_ladder(codec: Codec) -> Ladder | None:
    """The ladder the package's own calibration points give with half and full resolution only
    (None when the ladder has no other scale or the manifest keeps no points)."""
    if all(r.scale in (1, 2) for r in codec.ladder.rungs):
        return None
    raw = codec.pkg.manifest.get("training", {}).get("ladder_calibration", {}).get("points (scale:level -> bpp, PSNR)")
    if not raw:
        return None
    points = parse_points(raw)
    return calibrate(lambda sc, lv: points[(sc, lv)], codec.levels, scales=(1, 2))


def record(pkg_dir: Path, folder: str, files: list[Path], ours: list[dict], bd: dict, proc: dict) -> None:
    """Store what was measured in the package manifest (not part of the model id)."""
    from aecompress.fsutil import write_bytes_atomic

    mf = pkg_dir / "manifest.json"
    m = json.loads(mf.read_text())
    lo, hi = ours[0], ours[-1]
    bd_txt = ", ".join(f"{c} {v['psnr']:+.0f}%" for c, v in bd.items() if v["psnr"] is not None)
    m["measured"] = {
        "summary": f"{lo['bpp']:.2f}-{hi['bpp']:.2f} bpp, {lo['psnr']:.1f}-{hi['psnr']:.1f} dB; BD-rate {bd_txt}",
        "set": f"{folder} ({len(files)} images)", "date": time.strftime("%Y-%m-%d"),
        "points": [{k: round(v, 4) for k, v in p.items()} for p in ours],
        "bd_rate_psnr_vs": {c: v["psnr"] for c, v in bd.items()},
        "whole_process_768x512_s": round(proc["total_s"], 3),
        "whole_process_768x512_quiet_s": round(proc["quiet_total_s"], 3),
    }
    write_bytes_atomic(mf, (json.dumps(m, indent=2) + "\n").encode(), force=True)


def plot(result: dict, path: Path) -> None:
    """The RD plot (PSNR and MS-SSIM in dB against bpp) of a result; ours drawn last and thickest."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    curves = result["curves"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    order = [c for c in curves if c != "ours"] + ["ours"]
    # each codec keeps its colour from plot to plot, whatever other series a run adds
    palette = plt.get_cmap("tab10").colors
    fixed = {"JPEG": palette[0], "WEBP": palette[2], "AVIF": palette[3], "ours-full": palette[1],
             "ours-half": palette[4], "ours-round": palette[7]}
    spare = iter([palette[i] for i in (5, 6, 8, 9)] + list(plt.get_cmap("Dark2").colors))
    x_max = 2.2                          # the range the comparison is about; what lies beyond is counted
    hidden, seen_db = 0, ([], [])
    for c in order:
        bpp = np.array([p["bpp"] for p in curves[c]])
        psnr_db = np.array([p["psnr"] for p in curves[c]])
        ssim_db = -10 * np.log10(1 - np.array([p["ms_ssim"] for p in curves[c]]))
        style = (dict(lw=2.6, ms=4, zorder=10, color="black") if c == "ours"
                 else dict(lw=1.2, ms=3, color=fixed.get(c) or next(spare)))
        label = (f"aecompress ({result.get('model_name', result['model'])}, id {result['model_id'][:8]})"
                 if c == "ours" else c)
        axes[0].plot(bpp, psnr_db, "o-", label=label, **style)
        axes[1].plot(bpp, ssim_db, "o-", label=label, **style)
        inside = bpp <= x_max
        hidden += int((~inside).sum())
        seen_db[0].extend(psnr_db[inside])
        seen_db[1].extend(ssim_db[inside & np.isfinite(ssim_db)])
    axes[0].set(xlabel="bits per pixel (file bytes)", ylabel="PSNR (dB; RGB, or grey for greyscale images)",
                title=f"{len(result['images'])} images: {result['folder']}")
    axes[1].set(xlabel="bits per pixel (file bytes)", ylabel="MS-SSIM (dB)")
    for a, shown in zip(axes, seen_db):
        a.grid(alpha=0.3)
        a.set_xlim(0, x_max)
        if shown:                        # fitted to the points on the plot, not to those cut off at the right
            lo, hi = min(shown), max(shown)
            a.set_ylim(lo - 0.04 * (hi - lo), hi + 0.04 * (hi - lo))
    if hidden:
        axes[1].set_title(f"{hidden} points above {x_max} bpp not shown (in rd.json)", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    rows = 1 + (len(labels) - 1) // 5                       # below the panels, clear of the curves
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.045 * rows + 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def average_curves(rows: dict, codecs: list[str]) -> dict:
    """Per codec, the per-setting mean of the images' bpp, PSNR and MS-SSIM, sorted by bpp."""
    curves = {}
    for c in codecs:
        pts = []
        for q, lst in rows[c].items():
            pts.append({"setting": int(q), "bpp": float(np.mean([r["bpp"] for r in lst])),
                        "psnr": float(np.mean([r["psnr"] for r in lst])),
                        "ms_ssim": float(np.mean([r["ms_ssim"] for r in lst]))})
        curves[c] = sorted(pts, key=lambda p: p["bpp"])
    return curves


def bd_table(curves: dict, me: str, against: list[str], rows: dict | None = None,
             settings: dict | None = None, n_images: int = 0) -> dict:
    """BD-rates of codec `me` against each codec in `against`: of the averaged curves (cubic and
    PCHIP, PSNR and MS-SSIM) and, when the per-image rows are given, per image."""
    def arr(c, k):
        return np.array([p[k] for p in curves[c]])

    def per_image(c, i, k):
        return np.array([rows[c][q][i][k] for q in settings[c]])

    table = {}
    for c in against:
        v = {"psnr": bd_rate(arr(c, "bpp"), arr(c, "psnr"), arr(me, "bpp"), arr(me, "psnr")),
             "psnr_pchip": bd_rate(arr(c, "bpp"), arr(c, "psnr"), arr(me, "bpp"), arr(me, "psnr"), method="pchip"),
             "psnr_interval_db": [round(max(arr(c, "psnr").min(), arr(me, "psnr").min()), 2),
                                  round(min(arr(c, "psnr").max(), arr(me, "psnr").max()), 2)],
             "ms_ssim_db": bd_rate(arr(c, "bpp"), -10 * np.log10(1 - arr(c, "ms_ssim")),
                                   arr(me, "bpp"), -10 * np.log10(1 - arr(me, "ms_ssim")))}
        v["psnr_per_image"] = None
        if rows is not None:
            each = [bd_rate(per_image(c, i, "bpp"), per_image(c, i, "psnr"), per_image(me, i, "bpp"),
                            per_image(me, i, "psnr")) for i in range(n_images)]
            got = [x for x in each if x is not None]
            if got:
                v["psnr_per_image"] = {"mean": float(np.mean(got)), "median": float(np.median(got)),
                                       "min": float(np.min(got)), "max": float(np.max(got)),
                                       "images": len(got), "left_out": len(each) - len(got)}
        table[c] = v
    return table


def summarise(rows: dict, settings: dict, codecs: list[str], refined: str | None, n_images: int):
    """Averaged curves, BD-rates of ours against every other codec and, with a refined series, its own."""
    curves = average_curves(rows, codecs)
    bd = bd_table(curves, "ours", codecs[1:], rows, settings, n_images)
    bd_refined = (bd_table(curves, refined, [c for c in codecs if c not in ("ours", refined)], rows, settings,
                           n_images) if refined else None)
    return curves, bd, bd_refined


def report(result: dict) -> None:
    """Print a result's table, BD-rates and timings."""
    curves, proc = result["curves"], result["whole_process_768x512"]
    print(f"\n{len(result['images'])} images from {result['folder']}")
    for name, why in result.get("skipped", {}).items():
        print(f"  skipped {name}: {why}")
    print()
    print(f"{'codec':10} {'setting':>7} {'bpp':>7} {'PSNR':>7} {'MS-SSIM':>8}")
    for c, pts in curves.items():
        for p in pts:
            print(f"{c:10} {p['setting']:>7} {p['bpp']:7.3f} {p['psnr']:7.2f} {p['ms_ssim']:8.4f}")
    print("\nBD-rate of ours against (negative = ours needs fewer bits at equal quality), averaged curves;"
          "\nPCHIP: piecewise-cubic interpolation instead of one cubic; per image: mean / median (min to max):")
    fmt = lambda x: "n/a" if x is None else f"{x:+.1f}%"  # noqa: E731

    def show(table: dict) -> None:
        for c, v in table.items():
            lo, hi = v["psnr_interval_db"]
            e = v["psnr_per_image"]
            each = "n/a" if e is None else (f"{fmt(e['mean'])} / {fmt(e['median'])} ({fmt(e['min'])} to {fmt(e['max'])}"
                                            + (f", {e['left_out']} left out" if e["left_out"] else "") + ")")
            print(f"  {c:10}  PSNR {fmt(v['psnr'])} over {lo:.2f}-{hi:.2f} dB, PCHIP {fmt(v['psnr_pchip'])}, "
                  f"per image {each};  MS-SSIM(dB) {fmt(v['ms_ssim_db'])}")

    show(result["bd_rate_vs"])
    if result.get("refined"):
        print(f"\nBD-rate of {result['refined']} (encode --refine {result['refine_steps']}) against:")
        show(result["bd_rate_of_refined_vs"])
    print("\nmean seconds per image (in-process):")
    for c, v in result["seconds_per_image"].items():
        print(f"  {c:10}  encode {v['encode']:.3f}  decode {v['decode']:.3f}")
    for timing in (proc if isinstance(proc, list) else [proc]):
        print(f"\nwhole process, 768x512: encode {timing['encode_s']:.2f} s + decode {timing['decode_s']:.2f} s"
              f" = {timing['total_s']:.2f} s (encode --quiet, no reconstruction for the report: "
              f"{timing['encode_quiet_s']:.2f} s, {timing['quiet_total_s']:.2f} s in all)")


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "rd.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "rd.png")
    print(f"wrote {out / 'rd.json'} and, with matplotlib, {out / 'rd.png'}")


def merge(paths: list[Path]) -> dict:
    """One result from runs on disjoint images with the same model, codecs and settings. The averaged
    curves are exactly those of one run on all the images (each run's per-setting means weighted by
    its image count); per-image BD-rates need every run's per-image points (kept in rd.json since
    2026-12-07) and are left out otherwise. Timings: image-weighted means, and each run's
    whole-process measurement."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    first = runs[0]
    settings = {c: [pt["setting"] for pt in pts] for c, pts in first["curves"].items()}
    for path, r in zip(paths, runs):
        for key in ("model_id", "refined", "refine_steps"):
            if r.get(key) != first.get(key):
                raise SystemExit(f"{path}: {key} {r.get(key)!r} differs from {first.get(key)!r} in {paths[0]}")
        if {c: [pt["setting"] for pt in pts] for c, pts in r["curves"].items()} != settings:
            raise SystemExit(f"{path}: its codecs or settings differ from those of {paths[0]}")
    names = [n for r in runs for n in r["images"]]
    if len(set(names)) != len(names):
        raise SystemExit("an image appears in more than one run: the runs must cover disjoint images")
    codecs, refined, n = list(settings), first.get("refined"), len(names)
    if all("per_image" in r for r in runs):
        rows = {c: {q: sum((r["per_image"][c][str(q)] for r in runs), []) for q in settings[c]} for c in codecs}
        curves, bd, bd_refined = summarise(rows, settings, codecs, refined, n)
    else:
        curves = {}
        for c in codecs:
            pts = []
            for q in settings[c]:
                at = [(len(r["images"]), next(pt for pt in r["curves"][c] if pt["setting"] == q)) for r in runs]
                pts.append({"setting": q, **{k: sum(w * pt[k] for w, pt in at) / n for k in ("bpp", "psnr", "ms_ssim")}})
            curves[c] = sorted(pts, key=lambda p: p["bpp"])
        bd = bd_table(curves, "ours", codecs[1:])
        bd_refined = bd_table(curves, refined, [c for c in codecs if c not in ("ours", refined)]) if refined else None
    timing = {c: {k: sum(len(r["images"]) * r["seconds_per_image"][c][k] for r in runs) / n
                  for k in ("encode", "decode")} for c in codecs}
    result = {"folder": first["folder"], "images": names, "model": first["model"],
              "model_name": first.get("model_name"), "model_id": first["model_id"], "machine": first["machine"],
              "merged_from": [str(p) for p in paths], "curves": curves, "bd_rate_vs": bd,
              **({"skipped": skipped} if (skipped := {k: v for r in runs for k, v in r.get("skipped", {}).items()}) else {}),
              "seconds_per_image": timing, "whole_process_768x512": [r["whole_process_768x512"] for r in runs]}
    if refined:
        result.update(refine_steps=first["refine_steps"], refined=refined, bd_rate_of_refined_vs=bd_refined)
    return result


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import VAL_PHOTOS, images_in

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?", type=Path, default=VAL_PHOTOS)
    ap.add_argument("-m", "--model", default="photo")
    ap.add_argument("--limit", type=int, default=None, help="every (count // N)th image, N of them")
    ap.add_argument("--offset", type=int, default=0,
                    help="with --limit, start at this image (--limit 14 --offset 1 on 28 images: the other 14)")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                    help="only combine the rd.json files of runs on disjoint images of the same model and "
                         "settings into OUT/rd.json, as one run on all their images")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=MODEL",
                    help="also run another model package (e.g. the previous one: prev=runs/photo_prev), side by side")
    ap.add_argument("--record", action="store_true",
                    help="write the measured curve and BD-rates into the model package's manifest")
    ap.add_argument("--replot", action="store_true", help="only redraw OUT/rd.png from OUT/rd.json")
    ap.add_argument("--refine", type=int, default=0, metavar="STEPS",
                    help="also run the model with `encode --refine STEPS` (ours-refineSTEPS, same analysis), and "
                         "report its BD-rates against the other codecs too")
    args = ap.parse_args()
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be at least 1")
    if args.replot:
        if not (args.out / "rd.json").exists():
            ap.error(f"--replot needs {args.out / 'rd.json'} (from a run with --out {args.out})")
        plot(json.loads((args.out / "rd.json").read_text()), args.out / "rd.png")
        return

    if args.merge:
        result = merge(args.merge)
        report(result)
        write(result, args.out)
        return

    if args.offset and not args.limit:
        ap.error("--offset needs --limit (it picks the other images of a --limit run)")
    files = images_in(args.folder, kinds={".png", ".jpg", ".jpeg", ".bmp"})
    if args.folder == VAL_PHOTOS:          # recorded as before, relative to the checkout
        args.folder = Path("../shared/data/val/photos")
    if args.limit:
        files = files[args.offset:: max(1, len(files) // args.limit)][: args.limit]
    codec = open_codec(args.model, "cpu", args.threads)
    ours = {"ours": codec}
    if any(r.scale != 1 for r in codec.ladder.rungs):
        full = Codec(codec.pkg)
        full.ladder = Ladder.single(codec.levels)
        ours["ours-full"] = full
    half_full = half_full_ladder(codec)
    if half_full is not None:
        ours["ours-half"] = Codec(codec.pkg)
        ours["ours-half"].ladder = half_full
    if codec.rdoq_lambda > 0:
        ours["ours-round"] = Codec(codec.pkg, rdoq_lambda=0.0)   # the same model and ladder, plainly rounded
    refined = f"ours-refine{args.refine}" if args.refine > 0 else None
    if refined:
        ours[refined] = Codec(codec.pkg, refine=args.refine)
    for spec in args.compare:                                     # other packages, each with its own analysis
        name, _, model = spec.partition("=")
        ours[name] = open_codec(model or name, "cpu", args.threads)
    codecs = list(ours) + [f for f in ("JPEG", "WEBP", "AVIF") if f != "AVIF" or features.check("avif")]
    settings = {**{k: OUR_QUALITIES for k in ours}, **PIL_QUALITIES}
    rows, times, files, skipped = measure_all(files, codec, ours, codecs[len(ours):], settings)

    curves, bd, bd_refined = summarise(rows, settings, codecs, refined, len(files))
    timing = {c: {k: float(np.mean(v)) for k, v in times[c].items()} for c in codecs}
    proc = whole_process_seconds(args.model, files[0])

    result = {"folder": str(args.folder), "images": [f.name for f in files], "model": args.model,
              "model_name": codec.pkg.name, "model_id": codec.pkg.model_id[:8].hex(),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "curves": curves, "bd_rate_vs": bd, "seconds_per_image": timing, "whole_process_768x512": proc}
    if refined:
        result.update(refine_steps=args.refine, refined=refined, bd_rate_of_refined_vs=bd_refined)
    if skipped:
        result["skipped"] = skipped
    result["per_image"] = {c: {str(q): lst for q, lst in rows[c].items()} for c in codecs}
    report(result)

    if args.record:
        record(codec.pkg.path, args.folder, files, curves["ours"], bd, proc)
    write(result, args.out)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import run

    run(main)
