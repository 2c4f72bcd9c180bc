"""Fit a blind denoiser's strength to the noise level it estimates: the manifest's `residual_gain`.

    python -m aecompress.train.residual_gain PACKAGE OUT [--data ../shared/data/train/photos]
                                             [--pattern 'wiki_*,deb_*,pkg_*'] [--samples 600] [--crop 192]
                                             [--seed 0] [--threads N] [--val ../shared/data/val/photos]

A blind network trained on noise from none to heavy cannot tell weak noise from fine texture, so at
light noise it removes somewhat more than the noise. This tool runs the package through the runtime
(onnxruntime; torch only makes the training's noise) on training crops whose references are clean (by default the Wikimedia, Debian and
bundled photos: BSDS was decoded from JPEGs and keeps their grain, which the network learned to keep
too) with the training's own noise mix (`train.denoiser.degrade`: Gaussian,
Poisson-Gaussian, JPEG'd, greyscale; more light noise than training draws, so that the low end is
well measured), and for each crop records the estimated noise level s (`denoise.estimate_sigma`, as
the runtime sees it), the removed residual r = noisy - output and the true noise n = noisy - clean.
The gain curve g(s), piecewise linear on fixed knots, minimises sum ||n - g(s) r||^2 over all crops
(a small linear least-squares problem), is capped at 1 and made non-decreasing. The runtime then
removes g(s) of the residual (`denoise.residual_gain`). OUT is a copy of PACKAGE with the curve and
what it was fitted on in its manifest; the network is unchanged.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np

from ..denoise import denoise_array, estimate_sigma
from ..errors import AecError
from ..package import MANIFEST, load_package
from .export import write_package_copy
from .hardware import cpu_name

KNOTS = (0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0, 25.0, 30.0)


def hats(s: np.ndarray, knots=KNOTS) -> np.ndarray:
    """(N, K) weights of the piecewise-linear basis on the knots (held constant beyond the ends)."""
    k = np.asarray(knots, dtype=np.float64)
    s = np.clip(np.asarray(s, dtype=np.float64), k[0], k[-1])
    eye = np.eye(len(k))
    return np.stack([np.interp(s, k, eye[j]) for j in range(len(k))], axis=1)


def _non_decreasing(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted isotonic regression (pool adjacent violators)."""
    blocks: list[list[float]] = []          # [value, weight, count]
    for x, wt in zip(v.tolist(), w.tolist()):
        blocks.append([x, max(wt, 1e-12), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            b = blocks.pop()
            a = blocks[-1]
            a[0] = (a[0] * a[1] + b[0] * b[1]) / (a[1] + b[1])
            a[1] += b[1]
            a[2] += b[2]
    return np.concatenate([np.full(c, x) for x, _, c in blocks])


def fit_curve(sigma_hat: np.ndarray, num: np.ndarray, den: np.ndarray, knots=KNOTS) -> np.ndarray:
    """Gains at the knots minimising sum_i (den_i g(s_i)^2 - 2 num_i g(s_i)), with num_i = <n_i, r_i>
    and den_i = <r_i, r_i>; capped at 1, non-decreasing in the noise level."""
    phi = hats(sigma_hat, knots)
    a = (phi * den[:, None]).T @ phi
    b = phi.T @ num
    # a faint pull towards 1 (no change): a knot no crop fell near gets 1 from it, and then the
    # value of its neighbours from the monotone fit below, in which it weighs next to nothing
    eps = 1e-9 * max(np.trace(a), 1.0)
    a += np.eye(len(knots)) * eps
    b = b + eps
    g = np.linalg.solve(a, b)
    g = np.clip(g, 0.05, 1.0)
    return np.clip(_non_decreasing(g, np.diag(a)), 0.05, 1.0)


def collect(pkg, files: list[Path], samples: int, crop: int, seed: int, log=print) -> dict[str, np.ndarray]:
    """Per crop: estimated sigma, <n, r> and <r, r> (0-255 scale)."""
    import torch

    from ..imageio import read_image, to_rgb8
    from .denoiser import degrade

    rng = np.random.default_rng(seed)
    out = {k: np.zeros(samples) for k in ("sigma_hat", "num", "den")}
    images = {}
    t0 = time.time()
    for i in range(samples):
        f = files[int(rng.integers(len(files)))]
        if f not in images:
            images[f] = to_rgb8(read_image(f))
        im = images[f]
        h, w = im.shape[:2]
        c = min(crop, h, w)
        y0, x0 = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
        clean = torch.from_numpy(im[y0:y0 + c, x0:x0 + c].astype(np.float32) / 255).permute(2, 0, 1)[None]
        noisy, target = degrade(clean, rng, p_clean=0.05, p_low=0.35)
        noisy8 = np.round(noisy[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        clean8 = target[0].permute(1, 2, 0).numpy() * 255
        den_out, _ = denoise_array(noisy8, pkg, float_output=True, guard=False)
        r = noisy8.astype(np.float64) - den_out
        n = noisy8.astype(np.float64) - clean8
        out["sigma_hat"][i] = estimate_sigma(noisy8)
        out["num"][i] = float((n * r).sum())
        out["den"][i] = float((r * r).sum())
        if (i + 1) % 100 == 0:
            log(f"{i + 1}/{samples} crops, {time.time() - t0:.0f} s")
    return out


def gain_in_db(data: dict[str, np.ndarray], sigma: list[float], gain: list[float],
               crop: int, edges=(0, 4, 8, 12, 16, 20, 30, 60)) -> list[dict]:
    """Mean PSNR change on the fitting crops per band of estimated sigma (what the curve buys there)."""
    pixels = 3 * crop * crop
    g = np.interp(data["sigma_hat"], sigma, gain)
    # ||n - g r||^2 = ||n||^2 - 2 g <n,r> + g^2 <r,r>; the change against g = 1 needs no ||n||^2
    # but the PSNR does: keep it relative, as the MSE change per pixel against the residual at g = 1
    err1 = data["den"] - 2 * data["num"]
    errg = g * g * data["den"] - 2 * g * data["num"]
    rows = []
    for lo, hi in zip(edges, edges[1:]):
        m = (data["sigma_hat"] >= lo) & (data["sigma_hat"] < hi)
        if m.any():
            rows.append({"sigma_hat": [lo, hi], "crops": int(m.sum()),
                         "mse_change_per_pixel": round(float((errg[m] - err1[m]).mean() / pixels), 4)})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package")
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/train/photos"))
    ap.add_argument("--pattern", default="wiki_*,deb_*,pkg_*",
                    help="comma-separated file name patterns in DATA (default: the photos whose references are "
                         "clean; BSDS was decoded from JPEGs and Sun-Hays are JPEGs, whose grain the network keeps)")
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--val", type=Path, default=Path("../shared/data/val/photos"),
                    help="measure the new package here as the manifest's `measured` (none: a folder that does not exist)")
    args = ap.parse_args(argv)
    pkg = load_package(args.package, "cpu", args.threads)
    if pkg.kind != "denoiser":
        raise SystemExit(f"{args.package}: not a denoiser")
    if args.out.exists() and not args.force:
        raise SystemExit(f"{args.out} exists (use --force to replace it)")
    files = sorted({p for pat in args.pattern.split(",") for p in args.data.glob(pat.strip())
                    if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")})
    if not files:
        raise AecError(f"no images in {args.data}")
    t0 = time.time()
    pkg.manifest.pop("residual_gain", None)         # measure the network itself
    data = collect(pkg, files, args.samples, args.crop, args.seed)
    gain = fit_curve(data["sigma_hat"], data["num"], data["den"])
    sigma = [float(k) for k in KNOTS]
    gain_l = [round(float(v), 4) for v in gain]
    rows = gain_in_db(data, sigma, gain_l, args.crop)
    minutes = (time.time() - t0) / 60
    print("knots:", sigma)
    print("gains:", gain_l)
    for r in rows:
        print(r)
    man = copy.deepcopy(pkg.manifest)
    man["residual_gain"] = {"sigma": sigma, "gain": gain_l}
    man.setdefault("training", {})["residual_gain_fit"] = {
        "tool": "python -m aecompress.train.residual_gain",
        "data": f"{args.data} ({args.pattern})", "images": len(files), "crops": args.samples, "crop": args.crop, "seed": args.seed,
        "noise": "train.denoiser.degrade with p_clean 0.05, p_low 0.35 (Gaussian, Poisson-Gaussian, JPEG'd, greyscale)",
        "minutes": round(minutes, 1), "hardware": f"{cpu_name()}, onnxruntime on the CPU, {args.threads or 'all'} thread(s)",
        "fitting_crops": rows,
    }
    man.pop("measured", None)

    write_package_copy(pkg.path, args.out, man)
    print(f"wrote {args.out} ({minutes:.1f} min)")
    if args.val.is_dir():
        from ..fsutil import write_bytes_atomic
        from .denoiser import measure_package

        man["measured"] = measure_package(args.out, args.val.resolve(), sigmas=(5, 15, 25, 50), threads=args.threads)
        write_bytes_atomic(args.out / MANIFEST, (json.dumps(man, indent=2) + "\n").encode(), force=True)
        print("measured:", man["measured"])


if __name__ == "__main__":
    from ..entrypoint import configure_process

    configure_process()         # a program of its own, as the command line is (Pillow's limit, quiet library logs)
    main()
