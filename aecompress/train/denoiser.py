"""The blind denoiser: a small residual UNet, its noise synthesis, training loop and package export.

Architecture (input H and W multiples of 8; the runtime pads): pixel-unshuffle by 2 (3 -> 12 channels
at half resolution, as in FFDNet), a three-level encoder-decoder with 48/64/96 channels, skip
connections by addition, transposed-convolution upsampling, and a residual output: the network
predicts the noise and the graph returns input - noise. About 6 GMAC for a 512x512 colour image.

Training is blind: every crop gets a random degradation (Gaussian sigma uniform 0-50 on the 0-255
scale, signal-dependent Poisson-Gaussian noise, or noisy-then-JPEG), inputs are clipped and rounded
to 8 bits like real files, and some crops are greyscale replicated to 3 channels with identical
noise per channel (how the runtime feeds greyscale images).

    python -m aecompress.train.denoiser train --minutes 65 --out runs/denoise
    python -m aecompress.train.denoiser export runs/denoise/checkpoint.pt models/denoise
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from ..errors import AecError, Terminated
from ..package import FORMAT, MANIFEST
from .data import load_folder, random_crops
from .fit_conv import device_name, resolve_device
from .from_package import denoiser_from_package, package_for_init
from .hardware import describe, machine
from .resume import differing_options, refusal, resolved

ALIGN = 8                # input sizes must be multiples of this
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SIGMA_MAX = 50.0
DESCRIPTION = ("Blind residual-UNet denoiser: Gaussian sigma 0-50, Poisson-Gaussian and JPEG'd noise; "
               "colour, greyscale replicated to 3 channels at run time.")
LOSSES = ("mse", "psnr")
PSNR_EPS = 1e-4          # the "psnr" loss: log(MSE + eps), so near-perfect (clean) crops cannot take over
BF16_UNTIL = 0.85        # share of the time budget trained in mixed precision when bf16 is on
# what a checkpoint records that a resumed run must use again (the budget, --max-steps, the threads,
# the device and the batch workers may change: they say how long and on what the steps run)
RESUME_OPTIONS = ("data", "widths", "batch", "crop", "lr", "seed", "init", "p_clean", "p_low", "p_jpeg", "bf16",
                  "loss", "jpeg_downscale")


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class DenoiseNet(nn.Module):
    """Residual UNet denoiser on (B, 3, H, W) in [0, 1]; returns the denoised image (not clipped)."""

    def __init__(self, widths: tuple[int, int, int] = (48, 64, 96), channels: int = 3):
        super().__init__()
        c0, c1, c2 = widths
        self.widths = tuple(widths)
        self.channels = channels
        cin = channels * 4
        self.e0 = nn.Sequential(_conv(cin, c0), nn.ReLU(inplace=True), _conv(c0, c0), nn.ReLU(inplace=True))
        self.e1 = nn.Sequential(_conv(c0, c1, 2), nn.ReLU(inplace=True), _conv(c1, c1), nn.ReLU(inplace=True))
        self.e2 = nn.Sequential(_conv(c1, c2, 2), nn.ReLU(inplace=True), _conv(c2, c2), nn.ReLU(inplace=True),
                                _conv(c2, c2), nn.ReLU(inplace=True))
        self.u1 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.d1 = nn.Sequential(_conv(c1, c1), nn.ReLU(inplace=True), _conv(c1, c1), nn.ReLU(inplace=True))
        self.u0 = nn.ConvTranspose2d(c1, c0, 2, stride=2)
        self.d0 = nn.Sequential(_conv(c0, c0), nn.ReLU(inplace=True))
        self.out = _conv(c0, cin)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.pixel_unshuffle(x, 2)
        a = self.e0(s)
        b = self.e1(a)
        c = self.e2(b)
        b = self.d1(self.u1(c) + b)
        a = self.d0(self.u0(b) + a)
        return x - F.pixel_shuffle(self.out(a), 2)


# ---------------------------------------------------------------- noise synthesis

def _round8(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x.clamp(0, 1) * 255) / 255


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    a = (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    b = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(b.copy()).permute(2, 0, 1)


def degrade(clean: torch.Tensor, rng: np.random.Generator, p_poisson: float = 0.2, p_jpeg: float = 0.15,
            p_gray: float = 0.12, p_clean: float = 0.04, p_low: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Blind training pairs from clean (B, 3, H, W) in [0, 1]: returns (noisy, target)."""
    clean = clean.clone()
    noisy = torch.empty_like(clean)
    b = clean.shape[0]
    for i in range(b):
        x = clean[i]
        gray = rng.random() < p_gray
        if gray:
            g = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)
            x = g.expand(3, -1, -1).clone()
            clean[i] = x
        shape = (1,) + tuple(x.shape[1:]) if gray else tuple(x.shape)
        n = torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).expand_as(x)
        kind = rng.random()
        if kind < p_poisson:
            # Poisson-Gaussian (heteroscedastic Gaussian approximation): var = a * x + b
            sig_at_half = rng.uniform(2, SIGMA_MAX) / 255
            frac = rng.uniform(0.5, 1.0)            # share of the variance that is signal-dependent
            a = frac * sig_at_half ** 2 / 0.5
            bb = (1 - frac) * sig_at_half ** 2
            y = x + torch.sqrt(a * x + bb) * n
        else:
            u = rng.random()
            sigma = 0.0 if u < p_clean else (rng.uniform(0, 8) if u < p_clean + p_low else rng.uniform(0, SIGMA_MAX)) / 255
            y = x + sigma * n
        y = _round8(y)
        if rng.random() < p_jpeg:
            y = _jpeg(y, int(rng.integers(40, 96)))
            if gray:
                y = y.mean(0, keepdim=True).expand(3, -1, -1)
        noisy[i] = y
    return noisy, clean


def gaussian_noisy(clean: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """uint8 HxWxC + seeded Gaussian noise of `sigma` (0-255 scale), clipped and rounded to uint8."""
    rng = np.random.default_rng(seed)
    y = clean.astype(np.float32) + rng.standard_normal(clean.shape).astype(np.float32) * sigma
    return np.clip(np.round(y), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- training

def _save_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _val_set(n: int = 8, size: int = 256) -> list[np.ndarray]:
    vs = load_folder(DATA / "val" / "photos", limit=None)
    picks = np.linspace(0, len(vs) - 1, n).round().astype(int)
    out = []
    for i in picks:
        im = vs.images[i]
        h, w = im.shape[:2]
        y, x = (h - size) // 2, (w - size) // 2
        out.append(np.ascontiguousarray(im[y:y + size, x:x + size]))
    return out


class _Pairs(torch.utils.data.IterableDataset):
    """Endless (noisy, clean) training batches, made in DataLoader worker processes (one seed each):
    cropping and the noise synthesis (JPEG included) run on the CPU while the GPU trains."""

    def __init__(self, images: list[np.ndarray], batch: int, crop: int, seed: int, **noise):
        self.images, self.batch, self.crop, self.seed, self.noise = images, batch, crop, seed, noise

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        torch.set_num_threads(1)
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            clean = torch.from_numpy(random_crops(self.images, self.batch, self.crop, rng))
            yield degrade(clean, rng, **self.noise)


@torch.no_grad()
def _val_psnr(model: DenoiseNet, crops: list[np.ndarray], sigma: float) -> float:
    model.eval()
    dev = next(model.parameters()).device
    vals = []
    for k, c in enumerate(crops):
        noisy = gaussian_noisy(c, sigma, seed=1000 + k)
        x = torch.from_numpy(noisy).permute(2, 0, 1)[None].float().to(dev) / 255
        y = model(x).clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy() * 255
        mse = float(np.mean((np.round(y) - c.astype(np.float32)) ** 2))
        vals.append(10 * math.log10(255 ** 2 / max(mse, 1e-10)))
    model.train()
    return float(np.mean(vals))


def training_objective(y: torch.Tensor, target: torch.Tensor, loss: str = "mse") -> tuple[torch.Tensor, torch.Tensor]:
    """(what to minimise, the batch's MSE). "mse" pools the squared error over the batch, so the
    noisiest crops dominate the gradient; "psnr" averages each crop's log(MSE + PSNR_EPS), the mean
    PSNR up to sign and scale, which weighs each crop's gradient by 1 / (its MSE + eps)."""
    per_crop = (y - target).pow(2).mean(dim=tuple(range(1, y.dim())))
    if loss == "mse":
        return per_crop.mean(), per_crop.mean().detach()
    if loss == "psnr":
        return torch.log(per_crop + PSNR_EPS).mean(), per_crop.mean().detach()
    raise ValueError(f"unknown loss {loss!r}")


def train(out: Path, minutes: float, batch: int = 16, crop: int = 80, lr: float = 1e-3, threads: int = 1,
          seed: int = 0, max_steps: int | None = None, data: Path | None = None, widths=(48, 64, 96),
          log_every: int = 200, resume: bool = True, init: Path | None = None, p_clean: float = 0.04,
          p_low: float = 0.0, p_jpeg: float = 0.15, bf16: bool = False, device: str = "auto",
          workers: int = 0, jpeg_downscale: bool = True, loss: str = "mse") -> Path:
    """Train for a wall-clock budget (cosine learning rate over the budget); returns the checkpoint path.

    bf16: bfloat16 autocast (mixed precision; about 2x faster on CPUs with AVX512-BF16) until
    BF16_UNTIL of the budget, full precision for the final low-learning-rate part. init: a checkpoint
    or a denoiser model package. workers: processes that make the training batches (0: this one;
    use several on a GPU, where the noise synthesis would otherwise keep it waiting). loss: "mse" (pooled
    over the batch, so the noisiest crops dominate) or "psnr" (the mean of each crop's log MSE, i.e. the
    mean PSNR the benchmark reports; it weighs each crop by 1 / its error and so shifts effort towards
    low noise)."""
    if loss not in LOSSES:
        raise ValueError(f"--loss must be one of {', '.join(LOSSES)}, not {loss!r}")
    dev = resolve_device(device)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    out = Path(out)
    ckpt = out / "checkpoint.pt"
    root = Path(data) if data else DATA / "train" / "photos"
    options = {"data": resolved(root), "widths": list(widths), "batch": batch, "crop": crop, "lr": lr, "seed": seed,
               "init": resolved(init) if init and Path(init).exists() else (str(init) if init else None),
               "p_clean": p_clean, "p_low": p_low, "p_jpeg": p_jpeg, "bf16": bf16, "loss": loss,
               "jpeg_downscale": jpeg_downscale}
    state = None
    if resume and ckpt.exists():                          # checked before the data is loaded
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if state.get("arch", "denoise") != "denoise" or "widths" not in state:
            raise ValueError(f"checkpoint {ckpt} is from a {state.get('arch') or 'unknown'} model, not a denoiser")
        differ = differing_options({k: state[k] for k in RESUME_OPTIONS if k in state}, options)
        if differ:
            raise ValueError(refusal(ckpt, differ))
    t_load = time.time()
    ds = load_folder(root, jpeg_downscale=jpeg_downscale)
    images = ds.images
    if not images:
        raise ValueError(f"no readable images in {root} ({len(ds.skipped)} files skipped)")
    print(f"{len(images)} training images, {len(ds.skipped)} skipped (loaded in {time.time() - t_load:.0f} s)",
          flush=True)
    val = _val_set() if (DATA / "val" / "photos").is_dir() and data is None else []
    out.mkdir(parents=True, exist_ok=True)
    if state is None:                                     # a fresh run: the log is this run's alone
        (out / "log.jsonl").unlink(missing_ok=True)
    model = DenoiseNet(widths)
    step, spent = 0, 0.0
    init_package = None
    init_dir = package_for_init(init) if init is not None else None
    if init_dir is not None:                              # fine-tune a shipped model (folder or name)
        source, man = denoiser_from_package(init_dir)
        if source.widths != model.widths:
            raise ValueError(f"{init} has widths {source.widths}, not {model.widths}")
        model.load_state_dict(source.state_dict())
        init_package = {"path": str(init), "training": man.get("training", {})}
        print(f"initialised from the model package {init}", flush=True)
    elif init is not None:                                # fine-tune from another run's weights
        model.load_state_dict(torch.load(init, map_location="cpu", weights_only=False)["model"])
        print(f"initialised from {init}", flush=True)
    model.to(dev)
    torch.backends.cudnn.benchmark = dev.type == "cuda"      # fixed crop shapes: let cuDNN pick its kernels
    print(f"training on {device_name(dev)}", flush=True)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        init_package = state.get("init_package")
        step, spent = state["step"], state["seconds"]
        rng = np.random.default_rng(seed + step)
        print(f"resumed at step {step} ({spent / 60:.1f} min)", flush=True)
    budget = minutes * 60
    t0 = time.time() - spent
    losses = []

    def write_log(rec: dict) -> None:                     # opened per record: no file before there is one
        with open(out / "log.jsonl", "a") as log:
            log.write(json.dumps(rec) + "\n")

    def save() -> None:
        _save_atomic({"arch": "denoise", **options, "model": {k: v.cpu() for k, v in model.state_dict().items()},
                      "opt": opt.state_dict(), "step": step, "device": device_name(dev),
                      "init_package": init_package, "seconds": time.time() - t0, "minutes": minutes,
                      "threads": threads, "workers": workers, "images": len(images), "skipped": len(ds.skipped),
                      "machine": machine()}, ckpt)

    noise = dict(p_jpeg=p_jpeg, p_clean=p_clean, p_low=p_low)
    batches = None
    if workers:
        batches = iter(torch.utils.data.DataLoader(_Pairs(images, batch, crop, seed + step, **noise), batch_size=None,
                                                   num_workers=workers, pin_memory=dev.type == "cuda",
                                                   prefetch_factor=4, persistent_workers=True))
    model.train()
    try:
        while True:
            elapsed = time.time() - t0
            if elapsed >= budget or (max_steps is not None and step >= max_steps):
                break
            frac = elapsed / budget
            warm = 200 if init is None else 20
            cur = lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac))) if step > warm else lr * (step + 1) / warm
            for g in opt.param_groups:
                g["lr"] = cur
            if batches is not None:
                noisy, target = next(batches)
            else:
                noisy, target = degrade(torch.from_numpy(random_crops(images, batch, crop, rng)), rng, **noise)
            noisy, target = noisy.to(dev, non_blocking=True), target.to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16 and frac <= BF16_UNTIL):
                y = model(noisy)
            objective, mse = training_objective(y.float(), target, loss)
            if not torch.isfinite(objective):
                raise FloatingPointError(f"loss became {float(objective.detach())} at step {step}; lower --lr")
            opt.zero_grad(set_to_none=True)
            objective.backward()
            opt.step()
            losses.append(mse.item())
            step += 1
            if step % log_every == 0:
                rec = {"step": step, "sec": round(time.time() - t0), "lr": round(cur, 6),
                       "psnr_train": round(10 * math.log10(1 / max(np.mean(losses), 1e-12)), 3)}
                if val and step % (log_every * 5) == 0:
                    rec["val_psnr_s25"] = round(_val_psnr(model, val, 25), 3)
                losses = []
                write_log(rec)
                print(json.dumps(rec), flush=True)
                save()
    except (KeyboardInterrupt, Terminated):          # Ctrl-C or kill: resumable with --resume
        if step:
            save()
        raise
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise FloatingPointError(f"the weights became non-finite by step {step}; lower --lr")
    save()
    rec = {"step": step, "sec": round(time.time() - t0), "done": True}
    if val:
        rec.update({f"val_psnr_s{s}": round(_val_psnr(model, val, s), 3) for s in (15, 25, 50)})
    write_log(rec)
    print(json.dumps(rec), flush=True)
    return ckpt


# ---------------------------------------------------------------- export

def load_checkpoint(path: Path) -> tuple[DenoiseNet, dict]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = DenoiseNet(tuple(state.get("widths", (48, 64, 96))))
    model.load_state_dict(state["model"])
    return model.eval(), state


def measure_package(folder: Path, val_dir: Path, sigmas=(15, 25, 50), limit: int | None = None,
                    threads: int | None = None, label: str | None = None) -> dict:
    """PSNR of the exported package on val photos: seeded Gaussian noise, blind, plus clean inputs.
    label names the set in the result (default: the folder)."""
    from ..denoise import RESIDUAL_LIMIT, denoise_array
    from ..metrics import psnr
    from ..package import load_package

    pkg = load_package(folder, device="cpu", threads=threads)
    vs = load_folder(val_dir, limit=limit)
    if not vs.images:
        raise AecError(f"no readable images in {val_dir} to measure the denoiser on ({len(vs.skipped)} files skipped)")
    where = str(val_dir.relative_to(DATA.parent)) if DATA.parent in val_dir.parents else str(val_dir)
    res: dict = {"images": len(vs), "set": label.format(n=len(vs), folder=where) if label else where}
    for s in sigmas:
        vals, noisy_vals = [], []
        for k, im in enumerate(vs.images):
            noisy = gaussian_noisy(im, s, seed=k)
            out, _ = denoise_array(noisy, pkg)
            vals.append(psnr(out, im))
            noisy_vals.append(psnr(noisy, im))
        res[f"psnr_sigma{s}"] = round(float(np.mean(vals)), 3)
        res[f"psnr_noisy_sigma{s}"] = round(float(np.mean(noisy_vals)), 3)
    res["psnr_clean_input"] = round(float(np.mean([psnr(denoise_array(im, pkg)[0], im) for im in vs.images])), 3)
    res["how"] = ("blind, seeded Gaussian noise clipped to 8 bits, full images, aecompress.denoise.denoise_array "
                  f"defaults (tile 512, removed residual limited to {RESIDUAL_LIMIT} x estimated sigma"
                  + (", and scaled by the manifest's residual_gain at the estimated sigma)"
                     if pkg.manifest.get("residual_gain") else ")"))
    return res


def export_package(model: DenoiseNet, out: Path, name: str = "denoise", training: dict | None = None,
                   measure: bool = True, val_dir: Path | None = None, measure_limit: int | None = None,
                   force: bool = True, measure_label: str | None = None, description: str = "") -> Path:
    """Write a model package folder (manifest + single-file ONNX graph) atomically, verified against torch.
    description: the manifest's one line (default: what the blind training covers)."""
    from .export import _write_package_atomically, export_onnx

    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(out)

    def build(tmp: Path) -> None:
        model.eval()
        example = torch.rand(1, 3, 64, 96)
        export_onnx(model, example, tmp / "denoise.onnx", atol=1e-3)
        import onnx
        m = onnx.load(str(tmp / "denoise.onnx"), load_external_data=False)
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer):
            raise RuntimeError("exported graph uses external weight files")
        if len(os.listdir(tmp)) != 1:
            raise RuntimeError(f"export wrote extra files: {os.listdir(tmp)}")
        manifest = {
            "format": FORMAT,
            "name": name,
            "kind": "denoiser",
            "channels": 3,
            "graphs": {"denoise": "denoise.onnx"},
            "align": ALIGN,
            "receptive_radius": receptive_radius(model),
            "blind": True,
            "sigma_input": False,
            "description": description or DESCRIPTION,
            "architecture": {"type": "residual-unet", "widths": list(model.widths), "pixel_unshuffle": 2,
                             "params": sum(p.numel() for p in model.parameters())},
            "training": training or {},
            "measured": {},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if measure:
            manifest["measured"] = measure_package(tmp, val_dir or DATA / "val" / "photos", limit=measure_limit,
                                                   label=measure_label)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    return _write_package_atomically(out, build)


@torch.no_grad()
def receptive_radius(model: DenoiseNet) -> int:
    """Pixels of context each output pixel depends on (measured by perturbing one input pixel)."""
    size = 192
    x = torch.zeros(1, 3, size, size)
    model = model.eval()
    # use a fixed random net of the same shape so a zero-initialised output layer still shows the reach
    probe = DenoiseNet(model.widths)
    torch.manual_seed(0)
    for p in probe.parameters():
        nn.init.normal_(p, std=0.1)
    base = probe(x)
    x[:, :, size // 2, size // 2] = 1.0
    diff = (probe(x) - base).abs().sum(1)[0]
    ys, xs = torch.nonzero(diff > 0, as_tuple=True)
    return int(max((ys - size // 2).abs().max(), (xs - size // 2).abs().max()))


def export_checkpoint(checkpoint: Path, out: Path, name: str | None = None, measure: bool = True,
                      measure_limit: int | None = None, force: bool = False, val_dir: Path | None = None,
                      measure_label: str | None = None, description: str = "") -> Path:
    """A denoiser checkpoint as a model package at `out` (name: default the folder's; description: the
    manifest's one line, default DESCRIPTION), its manifest recording what the checkpoint (and the
    stages it was fine-tuned from) ran: data, steps, time, hardware, noise shares, loss and learning rate."""
    out = Path(out)
    if out.exists() and not force:
        raise AecError(f"{out} exists: use --force to replace it" + (
            " (it is a model package: files and outputs made with it need it)" if (out / "manifest.json").exists()
            else ""))
    model, state = load_checkpoint(checkpoint)
    p_clean, p_low, p_jpeg = state.get("p_clean", 0.04), state.get("p_low", 0.0), state.get("p_jpeg", 0.15)
    training = {
        "data": f"{state.get('data') or '../shared/data/train/photos'}: {state.get('images', '?')} photos",
        "images": state.get("images"),
        **({"skipped": state["skipped"]} if "skipped" in state else {}),
        "steps": state["step"], "batch": state.get("batch"), "crop": state.get("crop"),
        "minutes": round(state["seconds"] / 60, 1),
        "hardware": (describe(state["device"], extra=f"batches made by {state.get('workers')} CPU worker processes",
                              machine=state.get("machine"))
                     if str(state.get("device", "")).startswith("CUDA") else
                     describe("CPU", state.get("threads", 1), "no GPU", machine=state.get("machine"))),
        "noise": (f"blind: Gaussian sigma U(0,50)/255 ({p_clean:.0%} clean"
                  + (f", {p_low:.0%} sigma U(0,8)" if p_low else "")
                  + f"), 20% Poisson-Gaussian, {p_jpeg:.0%} JPEG q40-95 after noise, 12% greyscale with identical "
                  "noise per channel; 8-bit rounded and clipped"),
        "loss": f"MSE, Adam, cosine lr {state.get('lr', 1e-3):g} over the time budget",
    }
    if state.get("loss", "mse") == "psnr":
        training["loss"] = (f"--loss psnr: mean over crops of log(MSE + {PSNR_EPS:g}) (the mean PSNR, weighing low "
                            f"noise up), Adam, cosine lr {state.get('lr', 1e-3):g} over the time budget; a stage "
                            "that names no loss used MSE")
    # fine-tuning stages: follow the chain of --init checkpoints back to the first run
    chain, st, path, earlier, prior = [], state, Path(checkpoint), [], {}
    while True:
        chain.append((path, st))
        if st.get("init_package"):                       # started from a model package: its recorded stages
            prior = st["init_package"].get("training") or {}
            earlier = prior.get("stages") or []
            break
        if not st.get("init"):
            break
        path = Path(st["init"])
        st = torch.load(path, map_location="cpu", weights_only=False)
    chain.reverse()
    if len(chain) > 1 or earlier:
        training["stages"] = earlier + [
            {"run": str(p.parent), "steps": s["step"], "minutes": round(s["seconds"] / 60, 1),
             "lr": s.get("lr", 1e-3), "p_clean": s.get("p_clean", 0.04), "p_low": s.get("p_low", 0.0),
             "p_jpeg": s.get("p_jpeg", 0.15), **({"bf16": True} if s.get("bf16") else {}),
             **({"loss": s["loss"]} if s.get("loss", "mse") != "mse" else {}),
             "batch": s.get("batch"), "crop": s.get("crop"), **({"device": s["device"]} if s.get("device") else {}),
             "data": f"{s.get('data') or '../shared/data/train/photos'}: {s.get('images', '?')} photos",
             **({"init": str(s["init_package"]["path"])} if s.get("init_package")
                else {"init": str(Path(s["init"]).parent)} if s.get("init") else {})}
            for p, s in chain]
        training["steps"] = sum(e.get("steps") or 0 for e in earlier) + sum(s["step"] for _, s in chain)
        training["minutes"] = round(sum(e.get("minutes") or 0 for e in earlier)
                                    + sum(s["seconds"] for _, s in chain) / 60, 1)
        training["noise"] += ("; each later stage starts from the previous weights with its own cosine schedule "
                              "and shares of clean inputs (p_clean), sigma U(0,8) inputs (p_low) and JPEG (p_jpeg)")
        # the package it started from describes the training before: kept, this run's added after it
        for key in ("data", "images", "batch", "crop", "hardware", "loss"):
            if prior.get(key) not in (None, "") and str(prior[key]) != str(training.get(key)):
                training[key] = f"{prior[key]}; then {training.get(key)}"
    return export_package(model, out, name or out.name, training, measure=measure, measure_limit=measure_limit,
                          val_dir=val_dir, measure_label=measure_label, description=description)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m aecompress.train.denoiser")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", type=Path, default=Path("runs/denoise"))
    t.add_argument("--minutes", type=float, default=65)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--crop", type=int, default=80)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--data", type=Path, default=None)
    t.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    t.add_argument("--init", type=Path, default=None, help="start from this checkpoint's weights (fine-tuning)")
    t.add_argument("--p-clean", type=float, default=0.04,
                   help="share of the Gaussian-noise inputs (80%%; the rest are Poisson-Gaussian) that get none")
    t.add_argument("--p-low", type=float, default=0.0,
                   help="share of the Gaussian-noise inputs with sigma U(0, 8) instead of U(0, 50)")
    t.add_argument("--p-jpeg", type=float, default=0.15, help="share of inputs saved as JPEG after the noise")
    t.add_argument("--loss", default="mse", choices=LOSSES,
                   help="mse (pooled) or psnr (mean per-crop log MSE: weighs low noise up)")
    t.add_argument("--seed", type=int, default=0, help="crop and noise seed (use a new one per fine-tuning stage)")
    t.add_argument("--device", default="auto", help="auto (CUDA when torch sees a GPU), cpu or cuda")
    t.add_argument("--workers", type=int, default=0, help="processes making training batches (GPU: several)")
    t.add_argument("--no-jpeg-downscale", action="store_true",
                   help="use JPEG sources at full size (they are halved by default to hide their artefacts)")
    t.add_argument("--bf16", action="store_true",
                   help="bfloat16 mixed precision for the first 85%% of the budget (fast on CPUs with AVX512-BF16)")
    e = sub.add_parser("export")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("out", type=Path)
    e.add_argument("--name", default=None, help="model name in the manifest (default: the folder name)")
    e.add_argument("--force", action="store_true", help="replace an existing package at OUT")
    e.add_argument("--no-measure", action="store_true")
    e.add_argument("--measure-limit", type=int, default=None)
    a = ap.parse_args(argv)
    if a.cmd == "train":
        try:
            train(a.out, a.minutes, a.batch, a.crop, a.lr, a.threads, max_steps=a.max_steps, data=a.data,
                  resume=not a.fresh, init=a.init, p_clean=a.p_clean, p_low=a.p_low, p_jpeg=a.p_jpeg, seed=a.seed,
                  bf16=a.bf16, device=a.device, workers=a.workers, jpeg_downscale=not a.no_jpeg_downscale,
                  loss=a.loss)
        except (AecError, ValueError, FloatingPointError) as exc:
            raise SystemExit(f"error: {str(exc).splitlines()[0]}") from None
        return
    try:
        export_checkpoint(a.checkpoint, a.out, a.name, measure=not a.no_measure, measure_limit=a.measure_limit,
                          force=a.force)
    except AecError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"wrote {a.out}")


if __name__ == "__main__":
    from ..entrypoint import configure_process

    configure_process()         # a program of its own, as the command line is (Pillow's limit, quiet library logs)
    main()
