"""Training reports: PNG figures and one HTML page in PACKAGE_DIR/report/.

* curves.png: training and validation loss, validation PSNR (and bits, mean code activation,
  greedy pretraining losses when they apply) against the step;
* recon.png: validation originals above their reconstructions, decoded from real .aez files by the
  torch-free runtime, with the file size of each;
* latent.png (dense): the validation codes projected on their first two principal components,
  coloured by label (the folder names), or the first two code units when the code has two;
* features.png (dense): the first layer's weights as an image grid (what each unit looks for).

Everything here works from numpy arrays and the exported package, so a report shows what the
package really does.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np

REPORT_DIR = "report"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def code_images(pkg_dir: Path, images: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Code and decode (N, H, W, C) uint8 images with the runtime: reconstructions and file sizes."""
    from ..codec import Codec
    from ..package import load_package

    codec = Codec(load_package(pkg_dir))
    mode = "L" if codec.channels == 1 else "RGB"
    recs, sizes = [], []
    for im in images:
        a = codec.analyse(im)
        data, _ = codec.code(a, codec.span, mode)
        rec, _ = codec.decode(data)
        recs.append(rec)
        sizes.append(len(data))
    return np.stack(recs), sizes


def runtime_codes(pkg_dir: Path, images: np.ndarray) -> np.ndarray:
    """The analysis graph's output for each image, flattened: (N, D)."""
    from ..package import load_package

    pkg = load_package(pkg_dir)
    g_a = pkg.session("analysis")
    return np.stack([g_a(im.transpose(2, 0, 1)[None].astype(np.float32) / 255.0).reshape(-1) for im in images])


def pca_2d(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projection on the first two principal components and the variance share of each."""
    c = codes - codes.mean(0)
    if c.shape[1] == 1:
        return np.concatenate([c, np.zeros_like(c)], 1), np.array([1.0, 0.0])
    u, s, vt = np.linalg.svd(c, full_matrices=False)
    var = s**2 / max((s**2).sum(), 1e-12)
    xy, var = c @ vt[:2].T, var[:2]
    if xy.shape[1] < 2:                     # a single image (or identical ones) has one direction at most
        xy = np.concatenate([xy, np.zeros((len(xy), 2 - xy.shape[1]))], 1)
        var = np.concatenate([var, np.zeros(2 - len(var))])
    return xy, var


def _curves(history: list[dict], path: Path, greedy: list[dict] | None = None, sparse_target: float | None = None,
            title: str = "") -> None:
    plt = _plt()
    steps = [h["step"] for h in history]
    panels = [("loss", [("train_loss", "training loss"), ("val_loss", "validation loss")]),
              ("validation PSNR (dB)", [("val_psnr", "PSNR")])]
    if any(h.get("val_bits") for h in history):
        panels.append(("validation code size (bytes, estimated)", [("val_bytes", "bytes")]))
    if sparse_target is not None or any("train_mean_activation" in h for h in history):
        panels.append(("mean code activation", [("train_mean_activation", "training batch"),
                                                ("val_mean_activation", "validation")]))
    fig, axes = plt.subplots(1, len(panels) + (1 if greedy else 0), figsize=(4.2 * (len(panels) + bool(greedy)), 3.4))
    axes = np.atleast_1d(axes)
    for ax, (label, series) in zip(axes, panels):
        for key, name in series:
            if key == "val_bytes":
                ys = [h.get("val_bits", float("nan")) / 8 for h in history]
            else:
                ys = [h.get(key, float("nan")) for h in history]
            if any(y == y for y in ys):
                ax.plot(steps, ys, label=name, marker="." if len(steps) < 30 else None)
        if label == "loss" and all(h.get("train_loss", 1) > 0 for h in history):
            ax.set_yscale("log")
        if label == "mean code activation" and sparse_target is not None:
            ax.axhline(sparse_target, color="k", ls="--", lw=1, label=f"target {sparse_target}")
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        if len(series) > 1 or label == "mean code activation":
            ax.legend(fontsize=8)
    if greedy:
        ax = axes[-1]
        layers = [g for g in greedy if "layer" in g]
        ax.bar([f"layer {g['layer']}\n{g['inputs']}->{g['units']}" for g in layers],
               [g.get("relative_mse", g["mse"]) for g in layers])
        ax.set_title("greedy pretraining: MSE / variance of the layer's input", fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def corrupt_uint8(images: np.ndarray, noise: str, seed: int = 0) -> np.ndarray:
    """The training corruption (gaussian:STD or mask:RATE, on [0, 1] pixels) applied to uint8 images."""
    rng = np.random.default_rng(seed)
    kind, _, v = noise.partition(":")
    x = images.astype(np.float64) / 255.0
    if kind == "gaussian":
        x = np.clip(x + float(v) * rng.standard_normal(x.shape), 0, 1)
    else:
        x = x * (rng.random(x.shape) >= float(v))
    return np.round(x * 255).astype(np.uint8)


def _recon(originals: np.ndarray, recons: np.ndarray, sizes: list[int], path: Path,
           title: str = "originals (upper rows) and decoded .aez files (lower rows)") -> None:
    plt = _plt()
    n = len(originals)
    cols = min(n, 8)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(1.5 * cols, 3.2 * rows), squeeze=False)
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        for k, arr in enumerate((originals, recons)):
            ax = axes[2 * r + k, c]
            ax.axis("off")
            if i >= n:
                continue
            im = arr[i]
            ax.imshow(im[:, :, 0] if im.shape[2] == 1 else im, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            if k == 1:
                ax.set_title(f"{sizes[i]} B", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _latent(codes: np.ndarray, labels: list[str], path: Path) -> str:
    plt = _plt()
    if codes.shape[1] == 2:
        xy, how = codes, "first two code units"
    else:
        xy, var = pca_2d(codes)
        how = f"PCA of the codes (PC1 {var[0]:.0%}, PC2 {var[1]:.0%} of the variance)"
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    names = sorted(set(labels), key=lambda s: (len(s), s))
    if len(names) > 1 and len(names) <= 40:
        cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
        for i, name in enumerate(names):
            m = np.array([lab == name for lab in labels])
            ax.scatter(xy[m, 0], xy[m, 1], s=6, color=cmap(i % cmap.N), label=name or "(top)")
        ax.legend(fontsize=7, markerscale=2, ncol=2 if len(names) > 10 else 1)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=6)
    ax.set_title(how, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return how


def _features(weights: np.ndarray, shape: tuple[int, int, int], path: Path, limit: int = 64,
              what: str = "weights") -> None:
    """weights: (units, C*H*W) of the first layer; the units that changed most are shown first."""
    plt = _plt()
    c, h, w = shape
    weights = weights[np.argsort(-np.linalg.norm(weights.reshape(len(weights), -1), axis=1), kind="stable")]
    n = min(len(weights), limit)
    cols = min(n, 8)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.1 * rows), squeeze=False)
    for i in range(rows * cols):
        ax = axes[i // cols, i % cols]
        ax.axis("off")
        if i >= n:
            continue
        f = weights[i].reshape(c, h, w).transpose(1, 2, 0)
        f = f - f.mean()                           # show the pattern, not a uniform shift
        lim = max(float(np.abs(f).max()), 1e-12)
        if c == 1:
            ax.imshow(f[:, :, 0], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        else:
            ax.imshow(np.clip(f / (2 * lim) + 0.5, 0, 1), interpolation="nearest")
    fig.suptitle(f"first layer, {n} of {len(weights)} units: {what}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and len(v) > 12:
        return "[" + ", ".join(_fmt(x) for x in v[:12]) + ", ...]"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    return str(v)


def _html(path: Path, title: str, sections: list[tuple[str, str]], table: dict) -> None:
    rows = "\n".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in table.items())
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{content}" for h, content in sections)
    path.write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:14px}}th,td{{border-bottom:1px solid #ddd;padding:3px 10px;text-align:left;
vertical-align:top}}img{{max-width:100%}}</style></head>
<body><h1>{html.escape(title)}</h1>
<table>{rows}</table>
{body}
</body></html>
""")


def _img(name: str, caption: str = "") -> str:
    cap = f"<p>{html.escape(caption)}</p>" if caption else ""
    return f'<img src="{name}" alt="{html.escape(name)}">{cap}'


def report_dense(pkg_dir: Path, result, samples: int = 16) -> Path:
    """Write the report of a fit_dense.DenseResult whose package is in pkg_dir. Returns the HTML path."""
    pkg_dir = Path(pkg_dir)
    out = pkg_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((pkg_dir / "manifest.json").read_text())
    cfg, obj, stats = result.model_cfg, result.obj, result.stats
    val = result.val_images if len(result.val_images) else result.train_images[:256]
    labels = result.val_labels if len(result.val_images) else [""] * len(val)
    sparse_target = obj.sparse[1] if obj.sparse and obj.sparse[0] == "kl" else None
    title = f"{manifest['name']}: {manifest.get('description') or 'dense autoencoder'}"
    _curves(result.history, out / "curves.png", result.greedy_history, sparse_target)
    recons, sizes = code_images(pkg_dir, val[:samples])
    _recon(val[:samples], recons, sizes, out / "recon.png")
    codes = runtime_codes(pkg_dir, val[:2000])
    how = _latent(codes, labels[:2000], out / "latent.png")
    w = result.model.enc[0].weight.detach().cpu().numpy()
    init = getattr(result, "first_layer_init", None)
    learned = init is not None and init.shape == w.shape
    _features(w - init if learned else w, (cfg.channels, cfg.height, cfg.width), out / "features.png",
              what="learned change of the weights (final - random initialisation)" if learned else "weights")
    np.save(out / "val_codes.npy", codes)
    noise = getattr(result.cfg, "noise", "")
    if noise:
        noisy = corrupt_uint8(val[:samples], noise, seed=0)
        dn, dn_sizes = code_images(pkg_dir, noisy)
        _recon(noisy, dn, dn_sizes, out / "denoise.png",
               title=f"corrupted inputs ({noise}, upper rows) and the decoded .aez files (lower rows)")
        clean_err = float(np.mean((dn.astype(np.float64) - val[:samples]) ** 2))
        noisy_err = float(np.mean((noisy.astype(np.float64) - val[:samples]) ** 2))
    meas = manifest.get("measured", {})
    table = {"architecture": manifest.get("description", ""), "steps": result.steps,
             "training time": f"{result.seconds:.1f} s on {manifest['training'].get('hardware', '')}",
             "images": f"{len(result.train_images)} training, {len(result.val_images)} validation, "
                       f"{len(result.skipped)} unreadable skipped",
             "validation PSNR (runtime, mean per image)": f"{meas.get('mean_psnr', float('nan')):.2f} dB",
             "file size (runtime, mean)": f"{meas.get('mean_file_bytes', float('nan')):.1f} bytes "
                                          f"({meas.get('mean_payload_bytes', float('nan')):.1f} payload + "
                                          f"{meas.get('container_overhead_bytes', float('nan')):.0f} header/CRC)"}
    if obj.sparse:
        table["mean code activation (validation)"] = stats.get("mean_activation")
        if sparse_target is not None:
            table["sparsity target"] = sparse_target
        table["codes below 0.05"] = f"{stats.get('near_zero_fraction', 0):.0%}"
    table["encoder Jacobian, mean squared Frobenius norm"] = stats.get("jacobian_frobenius_sq")
    if cfg.variational:
        table["active latent dimensions (KL > 0.05 nats)"] = stats.get("active_dims")
        table["KL per dimension (nats)"] = stats.get("kl_per_dim")
    if result.greedy_history:
        after = [g for g in result.greedy_history if "after_pretraining" in g]
        if after:
            table["validation PSNR after greedy pretraining, before fine-tuning"] = f"{after[0]['after_pretraining']['psnr']:.2f} dB"
    if noise:
        table[f"denoising ({noise}): PSNR of corrupted input / of its decoding, vs the clean image"] = (
            f"{10 * np.log10(255**2 / max(noisy_err, 1e-10)):.2f} dB / {10 * np.log10(255**2 / max(clean_err, 1e-10)):.2f} dB")
    table["quantization gain per code unit"] = stats.get("gain")
    sections = [("Training curves", _img("curves.png")),
                ("Originals and reconstructions", _img("recon.png", "Decoded by the torch-free runtime from real .aez files.")),
                *([("Denoising", _img("denoise.png", "Corrupted validation images coded by the package: "
                                                     "the decoder was trained to output the clean image."))]
                  if noise else []),
                ("Latent space", _img("latent.png", how + "; colours are the folder names.")),
                ("First-layer features", _img("features.png", "Each tile is one unit's input weights, what training changed in "
                                                             "them (mean removed; red positive, blue negative), largest first."))]
    _html(out / "report.html", title, sections, table)
    return out / "report.html"


def report_conv(pkg_dir: Path, history: list[dict], images: list[np.ndarray], crop: int = 256) -> Path:
    """Report of a convolutional codec: curves from the checkpoint history, reconstructions."""
    pkg_dir = Path(pkg_dir)
    out = pkg_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((pkg_dir / "manifest.json").read_text())
    plt = _plt()
    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(steps, [h["train"]["loss"] for h in history], marker=".")
    axes[0].set_title("training loss (running mean)", fontsize=10)
    validated = [h for h in history if "val" in h]      # a timed run's lines between validations have none
    levels = len(validated[-1]["val"]) if validated else 0
    marker = "o" if len(validated) < 30 else None      # a short run has a point or two: drawn, not lost
    for k in range(levels):
        axes[1].plot([h["step"] for h in validated], [h["val"][k]["psnr"] for h in validated], label=f"level {k}",
                     marker=marker)
        axes[2].plot([h["step"] for h in validated], [h["val"][k]["bpp"] for h in validated], label=f"level {k}",
                     marker=marker)
    axes[1].set_title("validation PSNR (dB)", fontsize=10)
    axes[2].set_title("validation bits per pixel (estimated)", fontsize=10)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if levels:
        axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
    crops = [im[:crop, :crop] for im in images[:4]]
    recons, sizes = [], []
    from ..codec import Codec
    from ..package import load_package

    codec = Codec(load_package(pkg_dir))
    mode = "L" if codec.channels == 1 else "RGB"
    for im in crops:
        a = codec.analyse(im)
        data, _ = codec.code(a, codec.span / 2, mode)
        rec, _ = codec.decode(data)
        recons.append(rec)
        sizes.append(len(data))
    if crops:
        fig, axes = plt.subplots(2, len(crops), figsize=(3 * len(crops), 6.2), squeeze=False)
        for i, (a, b) in enumerate(zip(crops, recons)):
            for r, im in enumerate((a, b)):
                axes[r, i].imshow(im[:, :, 0] if im.shape[2] == 1 else im, cmap="gray", vmin=0, vmax=255)
                axes[r, i].axis("off")
            bpp = sizes[i] * 8 / (a.shape[0] * a.shape[1])
            axes[1, i].set_title(f"{sizes[i]} B, {bpp:.2f} bpp", fontsize=8)
        fig.suptitle("originals (top) and decoded .aez files at the middle quality level (bottom)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "recon.png", dpi=110)
        plt.close(fig)
    last = history[-1] if history else {}
    checked = validated[-1] if validated else {}
    table = {"architecture": _fmt(manifest.get("architecture", {})), "steps": last.get("step"),
             "training time": f"{last.get('seconds', 0):.0f} s",
             "final validation (level: bpp, PSNR)": "; ".join(f"{v['level']}: {v['bpp']:.3f}, {v['psnr']:.2f} dB"
                                                             for v in checked.get("val", []))}
    sections = [("Training curves", _img("curves.png"))]
    if crops:
        sections.append(("Originals and reconstructions", _img("recon.png")))
    _html(out / "report.html", f"{manifest['name']}: convolutional codec", sections, table)
    return out / "report.html"
