"""Denoising benchmark: our blind model vs OpenCV NLM, scikit-image NLM and CBM3D (when `bm3d` is installed).

Clean images (a folder's PNG, JPEG, TIFF and BMP files; default ../shared/data/val/photos) get
seeded Gaussian noise at sigma 15, 25 and 50 (0-255 scale), clipped and rounded to 8 bits as a noisy
photo file is: *clipped* Gaussian noise, not the unclipped float noise of the denoising literature.
At sigma 50 clipping hits about a sixth of the values, so the noise left is weaker than 50 and
biased near black and white; CBM3D, which assumes unclipped Gaussian noise of the sigma it is told,
loses about 2 dB to this, so published margins over it do not carry over at sigma 50
(docs/denoise.md). Each image's noise is seeded by its file name and sigma, so runs with another
--limit see the same noise. Every method sees the same noisy image; PSNR is against the clean image;
seconds are per image, in this process, single run. The peers are told the true sigma (non-blind,
their best case); our model is blind. ours_x2 and ours_x8 are the same model with `--ensemble 2` and
`8` (averaged over flipped and rotated runs). As `aecompress denoise` reads them, a greyscale image
stays greyscale (one channel of noise, as a noisy greyscale file has; every method denoises and is
measured in grey), an alpha channel is left out; 16-bit images are rounded to 8 bits like every
image here. Files that cannot be read are named and skipped. Also measures the whole-process time of
`python -m aecompress denoise` on a 512x512 colour image (median of 7 runs, before the methods run).

CBM3D (`pip install bm3d`) is a benchmark peer only, never a dependency: its licence is non-commercial.

    python bench/denoise.py [DIR | --data DIR] [--limit N] [--crop N] [--sigmas 15 25 50] [--out bench/out/denoise]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aecompress.denoise import denoise_array  # noqa: E402
from aecompress.imageio import read_image, to_rgb8  # noqa: E402
from aecompress.metrics import psnr  # noqa: E402
from speed import compile_bytecode  # noqa: E402  (bench/speed.py, beside this file)
from aecompress.package import DEFAULT_DENOISER, load_package  # noqa: E402


def noise_seed(name: str, sigma: float) -> int:
    # whole sigmas keep the seeds of every earlier run; a fractional one gets its own (15.5 had 15's)
    base = int(sigma) if float(sigma).is_integer() else zlib.crc32(f"sigma {sigma:g}".encode())
    return base * 1_000_003 + zlib.crc32(name.encode())


def add_noise(clean: np.ndarray, sigma: float, seed: int, clip: bool = True) -> np.ndarray:
    """The noisy image as an 8-bit file holds it (clip=True), or the same noise unclipped (float32)."""
    rng = np.random.default_rng(seed)
    y = clean.astype(np.float32) + rng.standard_normal(clean.shape).astype(np.float32) * sigma
    return np.clip(np.round(y), 0, 255).astype(np.uint8) if clip else y


def method_ours(pkg, ensemble: int = 1):
    def run(noisy, sigma):
        return denoise_array(noisy, pkg, ensemble=ensemble)[0]
    return run


def method_ours_limit(pkg, k: float):
    """Ours with the removed residual limited to k x the estimated sigma instead of the runtime's
    RESIDUAL_LIMIT (to measure that limit side by side)."""
    from aecompress.denoise import estimate_sigma, limit_residual

    def run(noisy, sigma):
        out = denoise_array(noisy, pkg, guard=False)[0]
        limit_residual(noisy, out, estimate_sigma(noisy), 255.0, k=k)
        return out
    return run


def method_ours_unclipped(pkg):
    """Our network given the unclipped float noise (the literature's protocol): the image as floats
    straight into the graph, whole (crops are small), no residual limit. Not something a file can
    carry, so not a path of `aecompress denoise`; for comparing with published numbers only."""
    sess = pkg.session("denoise")
    align = int(pkg.manifest.get("align", 8))

    def run(noisy, sigma):
        h, w, c = noisy.shape
        x = np.pad(noisy, ((0, -h % align), (0, -w % align), (0, 0)), mode="reflect")
        x = np.repeat(x, 3, axis=2) if c == 1 else x           # grey as three equal channels, as the runtime
        y = sess(np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255))[0]
        y = y.mean(axis=0, keepdims=True) if c == 1 else y       # and their mean back
        return np.clip(np.round(y.transpose(1, 2, 0)[:h, :w] * 255), 0, 255).astype(np.uint8)
    return run


def method_opencv_nlm():
    import cv2

    def run(noisy, sigma):
        h = 0.8 * sigma                      # filter strength tracking the known noise level
        if noisy.shape[2] == 1:              # greyscale: OpenCV's grey variant
            return cv2.fastNlMeansDenoising(np.ascontiguousarray(noisy[:, :, 0]), None, h, 7, 21)[:, :, None]
        bgr = np.ascontiguousarray(noisy[:, :, ::-1])
        out = cv2.fastNlMeansDenoisingColored(bgr, None, h, h, 7, 21)
        return out[:, :, ::-1]
    return run


def method_skimage_nlm():
    from skimage.restoration import denoise_nl_means

    def run(noisy, sigma):
        s = sigma / 255.0
        out = denoise_nl_means(noisy.astype(np.float32) / 255, h=0.8 * s, sigma=s, fast_mode=True,
                               patch_size=5, patch_distance=6, channel_axis=-1)
        return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)
    return run


def method_cbm3d():
    import bm3d

    def run(noisy, sigma):
        x = noisy.astype(np.float64) / 255
        out = bm3d.bm3d(x[:, :, 0], sigma / 255)[:, :, None] if x.shape[2] == 1 else bm3d.bm3d_rgb(x, sigma / 255)
        return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)
    return run


def whole_process_seconds(img: np.ndarray, model: str, runs: int = 7) -> float:
    from PIL import Image

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "noisy512.png"
        Image.fromarray(img).save(src)
        times = []
        for i in range(runs):
            dst = Path(d) / f"out{i}.png"
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "aecompress", "denoise", str(src), "-o", str(dst), "-m", model,
                            "--quiet"], check=True, cwd=ROOT)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def clean_pixels(pic) -> np.ndarray:
    """A picture's 8-bit pixels as `aecompress denoise` sees its colour: (H, W, 1) for a greyscale
    image (its noise is then grey too), else (H, W, 3); alpha left out."""
    rgb = to_rgb8(pic)
    return np.ascontiguousarray(rgb[:, :, :1]) if pic.mode in ("L", "LA") else rgb


def centre_crop(a: np.ndarray, size: int | None) -> np.ndarray:
    if not size:
        return a
    h, w = a.shape[:2]
    ch, cw = min(h, size), min(w, size)
    y, x = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(a[y:y + ch, x:x + cw])


KNOWN_METHODS = ("ours", "ours_x2", "ours_x8", "opencv_nlm", "skimage_nlm", "cbm3d", "cbm3d_unclipped",
                 "ours_unclipped")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", type=Path, help="the clean images (the same as --data)")
    ap.add_argument("--data", type=Path, default=None, help="the clean images (default ../shared/data/val/photos)")
    ap.add_argument("--limit", type=int, default=None, help="first N images (sorted by name, spread evenly)")
    ap.add_argument("--crop", type=int, default=None, help="centre-crop each image to at most N x N")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[15, 25, 50])
    ap.add_argument("--model", default=DEFAULT_DENOISER)
    ap.add_argument("--methods", default="ours,ours_x2,ours_x8,opencv_nlm,skimage_nlm,cbm3d",
                    help="ours_xN: our model with `aecompress denoise --ensemble N`; not run by default: "
                         "ours_limitK, ours with the removed residual limited to K x the estimated sigma, and "
                         "cbm3d_unclipped and ours_unclipped, CBM3D and our network given the same noise "
                         "unclipped (the literature's protocol; an 8-bit file cannot hold it)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=MODEL",
                    help="also run another denoiser package (e.g. the previous one: prev=runs/denoise_prev)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "denoise")
    a = ap.parse_args(argv)
    if a.folder is not None and a.data is not None and a.folder != a.data:
        ap.error("give the folder once: as an argument or as --data")
    a.data = a.folder or a.data or ROOT.parent / "shared" / "data" / "val" / "photos"
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import images_in, readable

    unknown = [m for m in a.methods.split(",") if m not in KNOWN_METHODS and not m.startswith("ours_limit")]
    if unknown:
        ap.error(f"unknown method {unknown[0]} (choose from {', '.join(KNOWN_METHODS)}, ours_limitK)")
    if a.limit is not None and a.limit < 1:
        ap.error("--limit must be at least 1")
    files = images_in(a.data, kinds={".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
    if a.limit and a.limit < len(files):
        files = [files[i] for i in np.linspace(0, len(files) - 1, a.limit).round().astype(int)]
    skipped: dict[str, str] = {}
    files, images = map(list, zip(*readable(files, lambda p: centre_crop(clean_pixels(read_image(p)), a.crop),
                                            skipped)))
    pkg = load_package(a.model, device="cpu", threads=a.threads)
    makers = {"ours": lambda: method_ours(pkg), "ours_x2": lambda: method_ours(pkg, 2),
              "ours_x8": lambda: method_ours(pkg, 8), "opencv_nlm": method_opencv_nlm,
              "skimage_nlm": method_skimage_nlm, "cbm3d": method_cbm3d, "cbm3d_unclipped": method_cbm3d,
              "ours_unclipped": lambda: method_ours_unclipped(pkg)}
    for name in a.methods.split(","):
        if name.startswith("ours_limit"):
            makers[name] = (lambda k: lambda: method_ours_limit(pkg, k))(float(name[len("ours_limit"):]))
    for spec in a.compare:                     # other packages, side by side in the same run
        name, _, model = spec.partition("=")
        makers[name] = (lambda m: lambda: method_ours(load_package(m, device="cpu", threads=a.threads)))(model)
    methods = {}
    for name in a.methods.split(",") + [spec.partition("=")[0] for spec in a.compare]:
        try:
            methods[name] = makers[name]()
        except ImportError as exc:
            print(f"skipping {name}: {exc}", file=sys.stderr)
    res: dict = {"data": str(a.data), "images": [p.name for p in files], "crop": a.crop, "sigmas": a.sigmas,
                 "model": pkg.name, "model_training": pkg.manifest.get("training", {}),
                 "machine": f"{platform.machine()} {platform.processor()}, {os.cpu_count()} cores",
                 "note": "clipped Gaussian noise (8-bit files); peers get the true sigma (non-blind); ours is blind", "results": {}}
    if skipped:
        res["skipped"] = skipped
    # timed first, on a machine not yet warmed and fragmented by CBM3D's minutes of work (a run
    # after it read 0.77 s where a quiet run reads 0.46), with bytecode compiled as an install has it
    full = (to_rgb8(read_image(p)) for p in files)
    big = next((c for c in full if min(c.shape[:2]) >= 512), None)
    if big is not None:
        compile_bytecode()
        img512 = add_noise(centre_crop(big, 512), 25, 7)
        res["whole_process_512x512_seconds"] = round(whole_process_seconds(img512, str(pkg.path)), 3)
    for sigma in a.sigmas:
        row = res["results"].setdefault(f"{sigma:g}", {})          # 15 -> "15", as before; 15.5 its own row
        for name, fn in methods.items():
            ps, ts = [], []
            for name_k, clean in zip(res["images"], images):
                noisy = add_noise(clean, sigma, noise_seed(name_k, sigma), clip=not name.endswith("_unclipped"))
                t = time.perf_counter()
                out = fn(noisy, sigma)
                ts.append(time.perf_counter() - t)
                ps.append(psnr(out, clean))
            row[name] = {"psnr": round(float(np.mean(ps)), 3), "seconds": round(float(np.mean(ts)), 3),
                         "megapixels": round(float(np.mean([c.shape[0] * c.shape[1] for c in images])) / 1e6, 3)}
            row.setdefault("noisy", {"psnr": round(float(np.mean(
                [psnr(add_noise(c, sigma, noise_seed(n, sigma)), c) for n, c in zip(res["images"], images)])), 3)})
            print(f"sigma {sigma:g} {name:12s} PSNR {row[name]['psnr']:.2f} dB  {row[name]['seconds']:.2f} s/img",
                  flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "denoise.json").write_text(json.dumps(res, indent=2) + "\n")
    table = table_text(res)
    (a.out / "denoise.md").write_text(table + "\n")
    print(table)
    plot(res, a.out / "denoise.png")
    return res


def table_text(res: dict) -> str:
    names = [n for n in next(iter(res["results"].values())) if n != "noisy"] + ["noisy"]
    head = "| sigma | " + " | ".join(f"{n} PSNR dB (s/img)" for n in names) + " |"
    lines = [head, "|" + "---|" * (len(names) + 1)]
    for s, row in res["results"].items():
        cells = [f"{row[n]['psnr']:.2f}" + (f" ({row[n]['seconds']:.2f})" if "seconds" in row[n] else "")
                 for n in names]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    if "whole_process_512x512_seconds" in res:
        lines.append(f"\nwhole process, 512x512 colour, `aecompress denoise`: {res['whole_process_512x512_seconds']:.2f} s")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    sig = [float(s) for s in res["results"]]
    names = [n for n in next(iter(res["results"].values())) if n != "noisy"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for n in names + ["noisy"]:
        ax1.plot(sig, [res["results"][s][n]["psnr"] for s in res["results"]], "o-" if n != "noisy" else "k--",
                 label=n)
    ax1.set_xlabel("sigma (0-255)")
    ax1.set_ylabel("PSNR dB")
    ax1.set_ylim(bottom=ax1.get_ylim()[0] - 3)             # room for the legend below the noisy line
    ax1.legend(loc="lower left", fontsize=8, ncol=2)
    ax1.grid(alpha=0.3)
    secs = [np.mean([res["results"][s][n]["seconds"] for s in res["results"]]) for n in names]
    ax2.bar(names, secs)
    ax2.tick_params(axis="x", labelrotation=30)
    ax2.set_yscale("log")
    ax2.set_ylabel("seconds per image")
    fig.suptitle(f"{len(res['images'])} images from {Path(res['data']).name}" + (f", crop {res['crop']}" if res["crop"] else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import run

    run(main)
