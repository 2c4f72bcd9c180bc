"""Training loop of the dense autoencoders (``aecompress train dense``).

Adam with warm-up and a cosine learning-rate schedule, a seeded validation split, early stopping on
the validation loss (the best weights are kept), a checkpoint every N steps that ``resume`` picks up
bit for bit (batch order and noise are seeded by epoch and step), optional greedy layer-wise
pretraining, and a rich progress bar with the training loss and the validation PSNR.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import AecError, Terminated
from .data import find_images, load_folder
from .dense import (VAE_MSE_SIGMA, DenseAE, DenseConfig, Objective, calibrate_gain, distortion, entropy_fit_loss,
                    jacobian_frobenius, objective)
from .resume import differing_options, refusal, resolved

# options a resumed run may change: how long it runs (a stopping rule included), how often it saves
# and validates, and the threads; every other option must be the one the checkpoint's steps ran with
RESUMABLE_CHANGES = ("out", "steps", "epochs", "patience", "val_every", "checkpoint_every", "threads", "eb_steps")
DEFAULT_RATE = 0.02            # lambda of the rate term: loss = distortion + lambda * bits per pixel
EB_FIT_STEPS = 600
MAX_QUANT_BITS = 8             # a sigmoid code's grid: 2^bits levels (`--quant-bits`, its range in cli/train.py)
EB_LR_SCALE = 10.0          # the entropy model learns faster than the network (rate follows lambda within ~1000 steps)


@dataclass
class DenseTrainConfig:
    data: str
    out: str                                # the model package folder; the checkpoint lives in <out>.work/
    mode: str = "auto"                      # auto, L or RGB
    size: tuple[int, int] | None = None     # (height, width) to resize every image to; default: no resizing
    latent: int = 32
    hidden: tuple[int, ...] = (512, 256)
    activation: str = "elu"
    linear: bool = False
    tied: bool = False
    batchnorm: bool = False
    output: str | None = None               # sigmoid (default) or linear (default for --linear)
    variational: bool = False
    beta: float = 1.0
    loss: str = "mse"
    rate: float | None = None               # default DEFAULT_RATE; 0 = classic autoencoder, gain calibrated after training
    sparse: str = ""                        # "l1:WEIGHT" or "kl:TARGET:WEIGHT"
    noise: str = ""                         # "gaussian:STD" or "mask:RATE"
    contractive: float = 0.0
    weight_decay: float = 0.0
    greedy: bool = False
    greedy_steps: int | None = None         # per layer; default: a quarter of the training steps
    quant_step: float = 0.1                 # rate-free models: quantization step in code standard deviations
    quant_bits: int = 4                     # sigmoid codes: 2^bits levels on [0, 1]
    eb_steps: int = EB_FIT_STEPS            # steps fitting the entropy model to the final codes (a third for rate-trained models)
    steps: int | None = None
    epochs: int | None = None               # default 30 when neither steps nor epochs is given
    batch: int = 128
    lr: float = 2e-3
    seed: int = 0
    val_split: float = 0.1
    val_every: int | None = None            # steps; default once per epoch
    patience: int = 10                      # validations without improvement before stopping; 0 = never
    checkpoint_every: int = 500
    limit: int | None = None                # use at most this many images
    threads: int | None = None              # torch CPU threads; default 1

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in self.hidden)
        if self.size is not None:
            self.size = (int(self.size[0]), int(self.size[1]))


@dataclass
class DenseData:
    images: np.ndarray          # (N, H, W, C) uint8
    labels: list[str]
    paths: list[Path]
    skipped: list[Path]
    mode: str


@dataclass
class DenseResult:
    model: DenseAE
    cfg: DenseTrainConfig
    model_cfg: DenseConfig
    obj: Objective
    history: list[dict]
    greedy_history: list[dict]
    train_images: np.ndarray
    val_images: np.ndarray
    val_labels: list[str]
    skipped: list[Path]
    steps: int
    seconds: float
    device: str
    stats: dict = field(default_factory=dict)
    checkpoint: Path | None = None
    first_layer_init: np.ndarray | None = None     # the seeded initial first-layer weights (for the report)


# -- option parsing -------------------------------------------------------------------------------
def parse_sparse(spec: str) -> tuple:
    if not spec:
        return ()
    parts = spec.split(":")
    try:
        if parts[0] == "l1" and len(parts) == 2 and float(parts[1]) >= 0:
            return ("l1", float(parts[1]))
        if parts[0] == "kl" and len(parts) == 3:
            target = float(parts[1])
            if not 0 < target < 1 or float(parts[2]) < 0:
                raise ValueError
            return ("kl", target, float(parts[2]))
    except ValueError:
        pass
    raise AecError(f"--sparse '{spec}': use l1:WEIGHT or kl:TARGET:WEIGHT (0 < TARGET < 1, WEIGHT >= 0)")


def parse_noise(spec: str) -> tuple:
    if not spec:
        return ()
    kind, _, v = spec.partition(":")
    try:
        value = float(v)
    except ValueError:
        value = -1.0
    if kind not in ("gaussian", "mask") or value < 0 or (kind == "mask" and value >= 1):
        raise AecError(f"--noise '{spec}': use gaussian:STD or mask:RATE (0 <= RATE < 1)")
    return (kind, value)


def corrupt(x: torch.Tensor, noise: tuple, gen: torch.Generator | None = None, pixels: bool = True,
            scale: float = 1.0) -> torch.Tensor:
    """x corrupted by `noise` (parse_noise): masking zeroes a share of the values, Gaussian noise of
    std noise[1] * scale is added and, on pixels, clipped to [0, 1]. Drawn from `gen` (a CPU
    generator) when given, else from torch's global one."""
    if not noise:
        return x

    def draw(fn, like):
        return fn(x.shape, generator=gen).to(x.device, x.dtype) if gen is not None else like(x)

    if noise[0] == "gaussian":
        out = x + (noise[1] * scale) * draw(torch.randn, torch.randn_like)
        return out.clamp(0, 1) if pixels else out
    return x * (draw(torch.rand, torch.rand_like) >= noise[1]).to(x.dtype)


def build(cfg: DenseTrainConfig, channels: int, height: int, width: int) -> tuple[DenseConfig, Objective]:
    sparse = parse_sparse(cfg.sparse)
    output = cfg.output or ("linear" if cfg.linear else "sigmoid")
    code = "sigmoid" if sparse and sparse[0] == "kl" else "linear"
    if code == "sigmoid" and cfg.variational:
        raise AecError("--sparse kl and --variational cannot be combined")
    if cfg.loss == "bce" and output != "sigmoid":
        raise AecError("--loss bce needs sigmoid output units (drop --linear or --output linear)")
    if not cfg.quant_step > 0 or not math.isfinite(cfg.quant_step):
        raise AecError("--quant-step must be positive and finite")
    if not 1 <= cfg.quant_bits <= MAX_QUANT_BITS:
        raise AecError(f"--quant-bits must be from 1 to {MAX_QUANT_BITS}")
    if cfg.batch < 1:
        raise AecError("--batch must be positive")
    if not cfg.lr >= 0 or not math.isfinite(cfg.lr):                 # 0 trains nothing, as for conv
        raise AecError("--lr must be positive (or 0 to train nothing) and finite")
    if not 0 <= cfg.val_split < 1:
        raise AecError("--val-split must be from 0 to below 1")
    rate = DEFAULT_RATE if cfg.rate is None else float(cfg.rate)
    if cfg.variational:
        rate = 0.0        # the KL term is the VAE's rate; the mean is coded with a calibrated step
    try:
        mcfg = DenseConfig(channels, height, width, cfg.latent, cfg.hidden, cfg.activation, cfg.linear, cfg.tied,
                           cfg.batchnorm, output, code, cfg.variational,
                           code_gain=float(2**cfg.quant_bits - 1) if code == "sigmoid" else 1.0)
        obj = Objective(cfg.loss, rate, sparse, float(cfg.contractive), float(cfg.beta))
    except ValueError as exc:
        raise AecError(str(exc)) from None
    return mcfg, obj


# -- data -----------------------------------------------------------------------------------------
def detect_mode(paths: list[Path]) -> str:
    """L when every readable image is greyscale, RGB otherwise."""
    for p in paths:
        try:
            with Image.open(p) as im:
                if im.mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "P"):
                    return "RGB"
                if im.mode == "P" and im.convert("RGB").getextrema() != im.convert("L").convert("RGB").getextrema():
                    return "RGB"
        except Exception:  # noqa: BLE001 - unreadable files are counted by load_folder
            continue
    return "L"


def load_dense_data(root: str | Path, mode: str = "auto", size: tuple[int, int] | None = None,
                    limit: int | None = None) -> DenseData:
    root = Path(root)
    if not root.exists():
        raise AecError(f"{root}: no such folder")
    paths = find_images(root)
    if not paths:
        raise AecError(f"no images found in {root} (searched recursively for {', '.join(['png', 'jpg', '...'])})")
    if mode == "auto":
        mode = detect_mode(paths[:200])
    if mode not in ("L", "RGB"):
        raise AecError(f"--mode must be auto, L or RGB, not '{mode}'")
    data = load_folder(root, mode, limit=limit)
    if len(data) == 0:
        raise AecError(f"no readable images in {root} ({len(data.skipped)} files skipped)")
    images = data.images
    if size is not None:
        h, w = size
        images = [im if im.shape[:2] == (h, w) else
                  np.asarray(Image.fromarray(im[:, :, 0] if im.shape[2] == 1 else im).resize((w, h), Image.LANCZOS),
                             dtype=np.uint8).reshape(h, w, -1) for im in images]
    shapes = Counter(im.shape[:2] for im in images)
    if len(shapes) > 1:
        (h, w), n = shapes.most_common(1)[0]
        odd = next(p for p, im in zip(data.paths, images) if im.shape[:2] != (h, w))
        oh, ow = next(im.shape[:2] for im in images if im.shape[:2] != (h, w))
        raise AecError(f"a dense model needs images of one size: {len(images) - n} of {len(images)} are not {w}x{h} "
                       f"(e.g. {odd} is {ow}x{oh}); pass --size {w}x{h} to resize them")
    return DenseData(np.stack(images), data.labels, data.paths, data.skipped, mode)


def split(n: int, val_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_split)) if n > 1 else 0
    n_val = min(max(n_val, 1 if val_split > 0 and n > 1 else 0), n - 1)
    return order[n_val:], order[:n_val]


def to_tensor(images: np.ndarray, device: str = "cpu") -> torch.Tensor:
    return torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0).to(device)


# -- evaluation -----------------------------------------------------------------------------------
def psnr_per_image(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    a = torch.round(x_hat.clamp(0, 1) * 255)
    b = torch.round(x * 255)
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp(min=1e-10)
    return 10 * torch.log10(255.0**2 / mse)


@torch.no_grad()
def evaluate(model: DenseAE, obj: Objective, x: torch.Tensor, quantized: bool, batch: int = 1024) -> dict:
    """Validation numbers: loss, PSNR (mean over images, 8-bit), bits per image (quantized models)."""
    was = model.training
    model.eval()
    rows = {"loss": 0.0, "psnr": 0.0, "mse": 0.0, "bits": 0.0, "mean_activation": 0.0}
    n = x.shape[0]
    pixels = x.shape[2] * x.shape[3]
    for i in range(0, n, batch):
        xb = x[i:i + batch]
        enc = model.encode(xb)
        code = enc["code"]
        dec_in = model.quantize(code) if quantized else code
        logits = model.decode_logits(dec_in)
        d = distortion(model, logits, xb, obj.loss)
        loss = d.clone()
        if model.cfg.variational:
            if obj.loss == "mse":
                loss = loss / (2 * VAE_MSE_SIGMA**2)
            kl = -0.5 * (1 + enc["logvar"] - enc["mu"] ** 2 - enc["logvar"].exp()).sum(1)
            loss = loss + obj.beta * kl / (pixels * model.cfg.channels)
        if quantized:
            bits = -torch.log2(model.code_likelihood(torch.round(code * model.gain))).sum(1)
            rows["bits"] += float(bits.sum())
            if obj.rate > 0:
                loss = loss + obj.rate * bits / pixels
        x_hat = model.out_act(logits).view_as(xb)
        rows["loss"] += float(loss.sum())
        rows["psnr"] += float(psnr_per_image(x_hat, xb).sum())
        rows["mse"] += float(((x_hat.clamp(0, 1) - xb) ** 2).flatten(1).mean(1).sum())
        rows["mean_activation"] += float(code.abs().mean(1).sum())
    model.train(was)
    return {k: v / max(n, 1) for k, v in rows.items()}


# -- greedy layer-wise pretraining ----------------------------------------------------------------
def greedy_pretrain(model: DenseAE, x: torch.Tensor, steps: int, batch: int, lr: float, seed: int,
                    on_step=None, noise: tuple = ()) -> list[dict]:
    """Train one shallow autoencoder per layer on the (cached) codes of the layers below, copy its
    weights into the stack. Earlier layers are frozen by construction (their codes are cached).
    A model with BatchNorm gets it set to pass the pretrained activations through unchanged.

    With `noise` (parse_noise) every layer is a denoising autoencoder, as in Vincent et al.'s
    stacked denoising autoencoders (2010): it reconstructs its clean input from a corrupted one, the
    codes passed up are those of clean inputs. Masking zeroes the same share of any layer's input;
    Gaussian noise is as large against each layer's input spread as against the pixels' (and only the
    pixels are clipped to [0, 1])."""
    history = []
    h = x.flatten(1)
    depth = model.depth
    pixel_std = float(h.std()) or 1.0
    for i in range(depth):
        lin = model.enc[i]
        d_in, d_out = lin.in_features, lin.out_features
        enc = torch.nn.Linear(d_in, d_out).to(x.device)
        enc.load_state_dict(lin.state_dict())
        dec_b = torch.nn.Parameter(h.mean(0).clone() if i > 0 or model.cfg.output == "linear"
                                   else torch.logit(h.mean(0).clamp(1e-3, 1 - 1e-3)))
        params = list(enc.parameters()) + [dec_b]
        if not model.cfg.tied:
            dec_w = torch.nn.Parameter(enc.weight.detach().t().clone())
            params.append(dec_w)
        opt = torch.optim.Adam(params, lr=lr)
        gen = torch.Generator(device="cpu").manual_seed(seed * 7919 + i)
        last = float("nan")
        var = ((h - h.mean(0)) ** 2).mean()          # MSE of predicting the mean: the scale of this layer's input
        scale = float(h.std()) / pixel_std             # Gaussian corruption relative to this layer's input
        for s in range(steps):
            idx = torch.randint(0, h.shape[0], (min(batch, h.shape[0]),), generator=gen).to(x.device)
            hb = h[idx]
            z = enc(corrupt(hb, noise, gen, pixels=i == 0, scale=scale))
            z = model.code_act(z) if i == depth - 1 else model.act(z)
            w = enc.weight.t() if model.cfg.tied else dec_w
            r = F.linear(z, w, dec_b)
            r = model.out_act(r) if i == 0 else model.act(r)
            loss = F.mse_loss(r, hb)
            if not torch.isfinite(loss):
                raise AecError(f"greedy pretraining diverged at layer {i + 1} (loss {float(loss)}); lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            last = float(loss.detach())
            if on_step:
                on_step()
        with torch.no_grad():
            lin.load_state_dict(enc.state_dict())
            j = depth - 1 - i                          # the mirrored decoder layer
            if not model.cfg.tied:
                model.dec[j].weight.copy_(dec_w)
            model.dec_b(j).copy_(dec_b)
            z = enc(h)
            h = (model.code_act(z) if i == depth - 1 else model.act(z)).detach()
        history.append({"layer": i + 1, "inputs": d_in, "units": d_out, "steps": steps, "mse": last,
                        "relative_mse": last / max(float(var), 1e-12)})
    if model.enc_bn is not None:
        batchnorm_as_identity(model, x)
    return history


@torch.no_grad()
def batchnorm_as_identity(model: DenseAE, x: torch.Tensor) -> None:
    """Make every BatchNorm layer pass the pretrained stack's activations through unchanged.

    The shallow autoencoders of the greedy phase have no BatchNorm, so each layer was pretrained on
    the raw activations of the one below. A fresh BatchNorm (weight 1, bias 0) would standardise
    those activations as soon as fine-tuning starts (train mode) and feed every layer inputs it was
    not pretrained on: the stack fine-tuning starts from would not be the one pretrained. So each
    BatchNorm gets the mean and variance of its input over the training images as running statistics
    and as its affine map (weight sqrt(var + eps), bias mean): the identity in eval mode, and up to the
    batch's deviation from the data's statistics in train mode."""
    def fit(bn: torch.nn.BatchNorm1d, pre: torch.Tensor) -> None:
        mean, var = pre.mean(0), pre.var(0, unbiased=False)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_(torch.sqrt(var + bn.eps))
        bn.bias.copy_(mean)

    h = x.flatten(1)
    for i in range(model.depth - 1):
        pre = model.enc[i](h)
        fit(model.enc_bn[i], pre)
        h = model.act(pre)
    h = model.code_act(model.enc[-1](h))
    for j in range(model.depth - 1):
        pre = F.linear(h, model.dec_weight(j), model.dec_b(j))
        fit(model.dec_bn[j], pre)
        h = model.act(pre)


# -- checkpoints ----------------------------------------------------------------------------------
def work_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / (out.name + ".work")


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise AecError(f"cannot read checkpoint {path} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def recorded_config(cfg: DenseTrainConfig) -> dict:
    """The train_config a checkpoint records: the options, with the data folder as an absolute path."""
    return {**asdict(cfg), "data": resolved(cfg.data)}


def check_checkpoint(ck: dict, path: Path, mcfg: DenseConfig, obj: Objective, cfg: DenseTrainConfig | None = None,
                     mode: str | None = None) -> None:
    arch = ck.get("arch")
    if arch != "dense":
        raise AecError(f"checkpoint {path} is from a {arch or 'unknown'} model, not dense: "
                       "train into another --out or delete the checkpoint")
    if ck.get("model_config") != mcfg.as_dict():
        theirs = ck.get("model_config") or {}
        diff = [k for k in mcfg.as_dict() if theirs.get(k) != mcfg.as_dict()[k]]
        raise AecError(f"checkpoint {path} is from another dense architecture (differs in {', '.join(diff)}): "
                       "use the same options or another --out")
    if ck.get("objective") != asdict(obj):
        raise AecError(f"checkpoint {path} was trained with another objective: use the same options to resume")
    if cfg is not None:                  # --mode auto is compared as the mode it detected
        theirs = {**(ck.get("train_config") or {}), **({"mode": ck["mode"]} if "mode" in ck else {})}
        ours = {**recorded_config(cfg), **({"mode": mode} if mode else {})}
        differ = differing_options(theirs, ours, skip=RESUMABLE_CHANGES)
        if differ:
            raise AecError(refusal(path, differ))


# -- the loop -------------------------------------------------------------------------------------
def _lr_at(step: int, total: int, base: float) -> float:
    warm = max(1, min(100, total // 10))
    if step < warm:
        return base * (step + 1) / warm
    p = (step - warm) / max(1, total - warm)
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def train_dense(cfg: DenseTrainConfig, resume: bool = False, progress: bool = True, log=print,
                stop_at: int | None = None) -> DenseResult:
    """Train a dense autoencoder. stop_at: leave after that many steps (as if interrupted)."""
    # Dense models are small: one thread is as fast as two on an idle 2-core machine and several
    # times faster on a busy one.
    torch.set_num_threads(cfg.threads or 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = load_dense_data(cfg.data, cfg.mode, cfg.size, cfg.limit)
    n, hgt, wid, ch = data.images.shape
    mcfg, obj = build(cfg, ch, hgt, wid)
    noise = parse_noise(cfg.noise)
    tr_idx, va_idx = split(n, cfg.val_split, cfg.seed)
    train_images, val_images = data.images[tr_idx], data.images[va_idx]
    val_labels = [data.labels[i] for i in va_idx]
    log(f"{n} images {wid}x{hgt} {data.mode} ({len(tr_idx)} training, {len(va_idx)} validation), "
        f"{len(data.skipped)} unreadable files skipped")
    x_train = to_tensor(train_images, device)
    x_val = to_tensor(val_images, device) if len(va_idx) else x_train[:256]

    if cfg.batchnorm and len(tr_idx) < 2:
        raise AecError("--batchnorm needs at least 2 training images")
    steps_per_epoch = math.ceil(len(tr_idx) / cfg.batch)
    total = cfg.steps if cfg.steps else (cfg.epochs or 30) * steps_per_epoch
    val_every = cfg.val_every or max(1, min(steps_per_epoch, 500))
    greedy_steps = cfg.greedy_steps if cfg.greedy_steps is not None else max(1, total // 4)

    torch.manual_seed(cfg.seed)
    model = DenseAE(mcfg).to(device)
    first_init = model.enc[0].weight.detach().cpu().numpy().copy()
    model.init_output_bias(x_train.mean(0))
    decay = [p for name, p in model.named_parameters() if name.endswith("weight") and not name.startswith("eb.")
             and "_bn" not in name]
    eb = list(model.eb.parameters())
    rest = [p for p in model.parameters() if not any(p is q for q in decay + eb)]
    opt = torch.optim.Adam([{"params": decay, "weight_decay": cfg.weight_decay},
                            {"params": rest, "weight_decay": 0.0},
                            {"params": eb, "weight_decay": 0.0, "lr_scale": EB_LR_SCALE}], lr=cfg.lr, foreach=True)

    wdir = work_dir(cfg.out)
    ckpt_path = wdir / "checkpoint.pt"
    step, elapsed_before, history, greedy_history = 0, 0.0, [], []
    best = {"loss": float("inf"), "state": None, "step": 0}
    bad = 0
    if resume:
        if not ckpt_path.exists():
            raise AecError(f"nothing to resume: no checkpoint at {ckpt_path}")
        ck = read_checkpoint(ckpt_path)
        check_checkpoint(ck, ckpt_path, mcfg, obj, cfg, data.mode)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, elapsed_before = ck["step"], ck["elapsed"]
        history, greedy_history = ck["history"], ck.get("greedy_history", [])
        best, bad = ck["best"], ck["bad"]
        log(f"resumed at step {step}")
    wdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time() - elapsed_before

    def save() -> None:
        _atomic_torch_save({"arch": "dense", "model_config": mcfg.as_dict(), "objective": asdict(obj),
                            "train_config": recorded_config(cfg), "model": model.state_dict(), "opt": opt.state_dict(),
                            "step": step, "elapsed": time.time() - t0, "history": history,
                            "greedy_history": greedy_history, "best": best, "bad": bad,
                            "mode": data.mode}, ckpt_path)

    bar = _Bar(progress, total + (greedy_steps * model.depth if cfg.greedy and step == 0 else 0), step)
    try:
        with bar:
            if cfg.greedy and step == 0 and not greedy_history:
                bar.describe("greedy pretraining")
                greedy_history = greedy_pretrain(model, x_train, greedy_steps, cfg.batch, cfg.lr, cfg.seed, bar.advance,
                                                 noise)
                greedy_history.append({"after_pretraining": evaluate(model, obj, x_val, quantized=False)})
                bar.describe("fine-tuning")
            model.train()
            run_loss, n_loss = 0.0, 0
            stopped_early = False
            while step < total:
                if stop_at is not None and step >= stop_at:
                    break
                epoch, k = divmod(step, steps_per_epoch)
                perm = torch.randperm(len(tr_idx), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
                idx = perm[k * cfg.batch:(k + 1) * cfg.batch]
                if len(idx) < min(cfg.batch, len(perm)):           # keep batches full: wrap around the epoch
                    idx = torch.cat([idx, perm[:min(cfg.batch, len(perm)) - len(idx)]])
                idx = idx.to(device)
                torch.manual_seed(cfg.seed * 1_000_003 + step)
                lr = _lr_at(step, total, cfg.lr)
                for g in opt.param_groups:
                    g["lr"] = lr * g.get("lr_scale", 1.0)
                target = x_train[idx]
                terms = objective(model, corrupt(target, noise), target, obj)
                loss = terms["loss"]
                if not torch.isfinite(loss):
                    raise AecError(f"training diverged: the loss became {float(loss.detach())} at step {step}; "
                                   f"lower --lr (now {cfg.lr:g}) or the regularisation weights")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
                step += 1
                run_loss += float(loss.detach())
                n_loss += 1
                bar.advance()
                if step % val_every == 0 or step == total:
                    v = evaluate(model, obj, x_val, quantized=obj.rate > 0)
                    row = {"step": step, "epoch": step / steps_per_epoch, "seconds": round(time.time() - t0, 2),
                           "lr": lr, "train_loss": run_loss / max(n_loss, 1),
                           **{f"val_{k2}": v2 for k2, v2 in v.items()}}
                    for extra in ("bpp", "mean_activation", "jacobian", "kl"):
                        if extra in terms:
                            row[f"train_{extra}"] = float(terms[extra].detach())
                    history.append(row)
                    run_loss, n_loss = 0.0, 0
                    bar.info(f"loss {row['train_loss']:.4g}  val {v['psnr']:.2f} dB"
                             + (f" {v['bits'] / 8:.1f} B" if obj.rate > 0 else ""))
                    if v["loss"] < best["loss"] - 1e-7:
                        best = {"loss": v["loss"], "state": copy.deepcopy(model.state_dict()), "step": step}
                        bad = 0
                    else:
                        bad += 1
                        if cfg.patience and bad >= cfg.patience:
                            log(f"early stop at step {step}: no validation improvement in {bad} validations "
                                f"(best at step {best['step']})")
                            stopped_early = True
                            break
                if step % cfg.checkpoint_every == 0:
                    save()
    except (KeyboardInterrupt, Terminated):          # Ctrl-C or kill: resumable with --resume
        save()
        raise
    if stop_at is not None and step < total and not stopped_early:
        save()
        return DenseResult(model, cfg, mcfg, obj, history, greedy_history, train_images, val_images, val_labels,
                           data.skipped, step, time.time() - t0, device, checkpoint=ckpt_path)
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    finish(model, obj, cfg, x_train)
    final = evaluate(model, obj, x_val, quantized=True)
    stats = {"val": final, "best_step": best["step"], "stopped_early": stopped_early}
    if obj.sparse:
        with torch.no_grad():
            model.eval()
            code = model.encode(x_val)["code"]
            stats["mean_activation"] = float(code.abs().mean()) if obj.sparse[0] == "l1" else float(code.mean())
            stats["sparse_target"] = obj.sparse[1] if obj.sparse[0] == "kl" else None
            stats["near_zero_fraction"] = float((code.abs() < 0.05).float().mean())
    model.eval()
    stats["jacobian_frobenius_sq"] = float(jacobian_frobenius(model, x_val[:256], probes=mcfg.latent, create_graph=False))
    if mcfg.variational:
        with torch.no_grad():
            enc = model.encode(x_val)
            kl = -0.5 * (1 + enc["logvar"] - enc["mu"] ** 2 - enc["logvar"].exp())
            stats["kl_per_dim"] = kl.mean(0).tolist()
            stats["active_dims"] = int((kl.mean(0) > 0.05).sum())
    stats["gain"] = model.gain.tolist()
    save()
    seconds = time.time() - t0
    log(f"done: {step} steps in {seconds:.0f} s; validation {final['psnr']:.2f} dB, "
        f"{final['bits'] / 8:.1f} bytes of code per image (estimated)")
    return DenseResult(model, cfg, mcfg, obj, history, greedy_history, train_images, val_images, val_labels,
                       data.skipped, step, seconds, device, stats, ckpt_path, first_init)


def finish(model: DenseAE, obj: Objective, cfg: DenseTrainConfig, x_train: torch.Tensor) -> None:
    """Calibrate the quantization of rate-free models and fit the entropy model to the final codes."""
    model.eval()
    sample = x_train[:5000]
    if obj.rate <= 0:
        calibrate_gain(model, sample, cfg.quant_step, cfg.quant_bits)
    with torch.no_grad():
        codes = torch.cat([model.encode(sample[i:i + 1024])["code"] for i in range(0, sample.shape[0], 1024)])
    if not torch.isfinite(codes).all() or not torch.isfinite(model.gain).all():
        raise AecError("training produced non-finite codes; lower --lr")
    opt = torch.optim.Adam(model.eb.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(cfg.seed + 17)
    torch.manual_seed(cfg.seed + 17)
    for _ in range(cfg.eb_steps if obj.rate <= 0 else cfg.eb_steps // 3):
        idx = torch.randint(0, codes.shape[0], (min(512, codes.shape[0]),), generator=gen).to(codes.device)
        loss = entropy_fit_loss(model, codes[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


class _Bar:
    """A rich progress bar (or nothing)."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.enabled = enabled
        self.total, self.done = total, done
        self._p = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                               console=Console(stderr=True))
            self._p.__enter__()
            self._task = self._p.add_task("training", total=self.total, completed=self.done, info="")
        return self

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)

    def advance(self) -> None:
        if self._p is not None:
            self._p.advance(self._task)

    def describe(self, text: str) -> None:
        if self._p is not None:
            self._p.update(self._task, description=text)

    def info(self, text: str) -> None:
        if self._p is not None:
            self._p.update(self._task, info=text)
