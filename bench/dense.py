"""Dense autoencoder benchmark on 28x28 digits (../shared/data/mnist5k).

1. Digit codec: trains `aecompress train dense` (latent 32; its defaults unless --epochs) on 90% of the 5000
   digits, then codes the 500 held-out digits with the torch-free runtime: PSNR and bytes per .aez
   file (header and CRC included, payload alone too), against PNG (lossless, optimised) and JPEG
   (libjpeg via Pillow at several qualities, and at the lowest quality that reaches the codec's PSNR
   on each digit) of the same digits.
2. Linear autoencoder vs PCA: held-out reconstruction MSE of `--linear --rate 0 --hidden none` at
   N code units against PCA with N components fitted on the same training digits.

    python bench/dense.py [--out bench/results] [--linear-n 8,16,32]

Writes dense.json, dense.md and dense.png under --out.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mnist_to_png import read_mnist_csv, write_pngs  # noqa: E402

JPEG_QUALITIES = (10, 25, 50, 75, 90)


def png_bytes(im: np.ndarray) -> int:
    b = io.BytesIO()
    Image.fromarray(im[:, :, 0], "L").save(b, format="PNG", optimize=True)
    return b.tell()


def jpeg(im: np.ndarray, q: int) -> tuple[int, np.ndarray]:
    b = io.BytesIO()
    Image.fromarray(im[:, :, 0], "L").save(b, format="JPEG", quality=q, optimize=True)
    n = b.tell()
    b.seek(0)
    return n, np.asarray(Image.open(b).convert("L"))[:, :, None]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    m = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if m == 0 else 10 * np.log10(255.0**2 / m)


def digit_codec(data: Path, out: Path, epochs: int | None, log) -> dict:
    from aecompress.cli.train import export_and_report_dense
    from aecompress.codec import Codec
    from aecompress.container import unpack
    from aecompress.package import load_package
    from aecompress.train.fit_dense import DenseTrainConfig, train_dense

    cfg = DenseTrainConfig(data=str(data), out=str(out), latent=32, epochs=epochs)
    t0 = time.time()
    res = train_dense(cfg, progress=False, log=log)
    train_s = time.time() - t0
    export_and_report_dense(res, out, "digits", "", True, log)
    codec = Codec(load_package(out))
    val = res.val_images
    rows = []
    for im in val:
        data_, st = codec.code(codec.analyse(im), 0, "L")
        rec, _ = codec.decode(data_)
        _, payload = unpack(data_)
        p = psnr(rec, im)
        row = {"aez": len(data_), "payload": len(payload), "psnr": p, "mse": float(np.mean((rec.astype(float) - im) ** 2)),
               "png": png_bytes(im)}
        for q in JPEG_QUALITIES:
            n, dec = jpeg(im, q)
            row[f"jpeg{q}"] = n
            row[f"jpeg{q}_psnr"] = psnr(dec, im)
        # lowest JPEG quality reaching the codec's PSNR on this digit
        match = None
        for q in [1, 2, 3, 4, *range(5, 101, 5)]:      # from the lowest: most digits match below 5
            n, dec = jpeg(im, q)
            if psnr(dec, im) >= p:
                match = (q, n)
                break
        row["jpeg_match_q"], row["jpeg_match_bytes"] = match if match else (None, None)
        rows.append(row)

    def mean(k):
        v = [r[k] for r in rows if r[k] is not None]
        return float(np.mean(v)) if v else None

    summary = {
        "train_seconds": round(train_s, 1), "steps": res.steps, "train_images": int(len(res.train_images)),
        "held_out_images": int(len(val)),
        "aez_mean_bytes": mean("aez"), "aez_max_bytes": int(max(r["aez"] for r in rows)),
        "aez_payload_mean_bytes": mean("payload"), "aez_header_crc_bytes": mean("aez") - mean("payload"),
        "aez_mean_psnr": mean("psnr"), "aez_psnr_of_mean_mse": float(10 * np.log10(255**2 / mean("mse"))),
        "png_mean_bytes": mean("png"),
        "jpeg": {q: {"mean_bytes": mean(f"jpeg{q}"), "mean_psnr": mean(f"jpeg{q}_psnr")} for q in JPEG_QUALITIES},
        "jpeg_at_codec_psnr": {"mean_bytes": mean("jpeg_match_bytes"), "mean_quality": mean("jpeg_match_q"),
                               "digits_reached": sum(r["jpeg_match_q"] is not None for r in rows)},
        "package": str(out),
    }
    return summary


def linear_vs_pca(data: Path, work: Path, ns: list[int], steps: int, log) -> list[dict]:
    import torch

    from aecompress.train.fit_dense import DenseTrainConfig, to_tensor, train_dense

    out = []
    for n in ns:
        cfg = DenseTrainConfig(data=str(data), out=str(work / f"linear{n}"), latent=n, hidden=(), linear=True, rate=0,
                               steps=steps, lr=1e-2, batch=256, patience=0, eb_steps=50)
        t0 = time.time()
        r = train_dense(cfg, progress=False, log=lambda *a: None)
        secs = time.time() - t0
        tr = r.train_images.reshape(len(r.train_images), -1) / 255.0
        va = r.val_images.reshape(len(r.val_images), -1) / 255.0
        mu = tr.mean(0)
        _, _, vt = np.linalg.svd(tr - mu, full_matrices=False)
        p = vt[:n]
        pca = float((((va - mu) @ p.T @ p + mu - va) ** 2).mean())
        x = to_tensor(r.val_images)
        with torch.no_grad():
            ae = float(((r.model.decode(r.model.encode(x)["code"]) - x) ** 2).mean())
        row = {"n": n, "pca_mse": pca, "linear_ae_mse": ae, "ratio": ae / pca, "steps": steps, "seconds": round(secs, 1)}
        log(json.dumps(row))
        out.append(row)
    return out


def write_outputs(res: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "dense.json").write_text(json.dumps(res, indent=2))
    d = res["digit_codec"]
    lines = ["# Dense autoencoder benchmark (28x28 digits, mnist5k)", "",
             f"Machine: {res['machine']}. Digit codec: `aecompress train dense` (latent 32), "
             f"{d['steps']} steps in {d['train_seconds']} s on {d['train_images']} digits; "
             f"{d['held_out_images']} held-out digits coded by the runtime.", "",
             "| format | mean bytes per digit | mean PSNR (dB) |", "|---|---:|---:|",
             f"| .aez (file) | {d['aez_mean_bytes']:.1f} (max {d['aez_max_bytes']}) | {d['aez_mean_psnr']:.2f} |",
             f"| .aez payload only (no header/CRC) | {d['aez_payload_mean_bytes']:.1f} | {d['aez_mean_psnr']:.2f} |",
             f"| PNG (lossless, optimised) | {d['png_mean_bytes']:.1f} | inf |"]
    for q, v in d["jpeg"].items():
        lines.append(f"| JPEG q{q} | {v['mean_bytes']:.1f} | {v['mean_psnr']:.2f} |")
    j = d["jpeg_at_codec_psnr"]
    lines.append(f"| JPEG at the codec's PSNR (per digit, mean q {j['mean_quality']:.0f}) | {j['mean_bytes']:.1f} | "
                 f">= .aez |")
    lines += ["", f"PSNR of the mean MSE over held-out digits: {d['aez_psnr_of_mean_mse']:.2f} dB. "
              f"Container overhead (header + CRC): {d['aez_header_crc_bytes']:.0f} bytes per file.", "",
              "## Linear autoencoder vs PCA (held-out MSE, pixels in [0, 1])", "",
              "| N | PCA | linear AE | AE / PCA |", "|---:|---:|---:|---:|"]
    for r in res["linear_vs_pca"]:
        lines.append(f"| {r['n']} | {r['pca_mse']:.5f} | {r['linear_ae_mse']:.5f} | {r['ratio']:.4f} |")
    (out / "dense.md").write_text("\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = [".aez", "PNG"] + [f"JPEG q{q}" for q in d["jpeg"]]
    sizes = [d["aez_mean_bytes"], d["png_mean_bytes"]] + [v["mean_bytes"] for v in d["jpeg"].values()]
    ps = [d["aez_mean_psnr"], None] + [v["mean_psnr"] for v in d["jpeg"].values()]
    axes[0].bar(names, sizes, color=["C3", "C0"] + ["C1"] * len(d["jpeg"]))
    for i, (s, p) in enumerate(zip(sizes, ps)):
        axes[0].text(i, s, f"{s:.0f} B" + (f"\n{p:.1f} dB" if p else "\nlossless"), ha="center", va="bottom", fontsize=8)
    axes[0].set_ylabel("mean bytes per 28x28 digit")
    axes[0].set_yscale("log")
    axes[0].set_title("held-out digits", fontsize=10)
    axes[0].tick_params(axis="x", labelsize=8)
    ns = [r["n"] for r in res["linear_vs_pca"]]
    axes[1].plot(ns, [r["pca_mse"] for r in res["linear_vs_pca"]], "o-", label="PCA")
    axes[1].plot(ns, [r["linear_ae_mse"] for r in res["linear_vs_pca"]], "s--", label="linear autoencoder")
    axes[1].set_xlabel("N (components / code units)")
    axes[1].set_ylabel("held-out MSE")
    axes[1].legend()
    axes[1].grid(alpha=0.3)
    axes[1].set_title("linear autoencoder vs PCA", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "dense.png", dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--linear-n", default="8,16,32")
    ap.add_argument("--linear-steps", type=int, default=1500)
    ap.add_argument("--epochs", type=int, default=None, help="digit codec epochs (default: the trainer's)")
    ap.add_argument("--package", type=Path, default=None, help="where to keep the digit codec package")
    a = ap.parse_args()
    import torch

    log = (lambda msg: print(msg, file=sys.stderr, flush=True))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images, labels = read_mnist_csv()
        write_pngs(images, labels, tmp / "digits")
        pkg = a.package or tmp / "digits-codec"
        res = {"machine": ""}
        res["digit_codec"] = digit_codec(tmp / "digits", pkg, a.epochs, log)
        res["machine"] = (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} on "
                          f"{torch.get_num_threads()} thread(s)")
        log(json.dumps(res["digit_codec"]))
        res["linear_vs_pca"] = linear_vs_pca(tmp / "digits", tmp, [int(n) for n in a.linear_n.split(",")],
                                             a.linear_steps, log)
    write_outputs(res, a.out)
    print((a.out / "dense.md").read_text())


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import run

    run(main)
