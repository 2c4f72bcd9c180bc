"""Training loop of the convolutional rate-distortion codec (``aecompress train conv``)."""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import Terminated
from .conv import HyperpriorCodec, rd_loss
from .data import ImageSet, load_folder, random_crops
from .from_package import codec_from_package, package_for_init
from .hardware import machine
from .resume import differing_options, refusal, resolved


# Options a resumed run may change: how long it runs, how often it saves and checks, and the hardware.
# Everything else (data, crops, batch, learning rate, seed, --init, --bf16, ...) must be what the
# checkpoint's steps ran with, or the manifest would record options no step ran with.
RESUMABLE_CHANGES = ("out", "steps", "minutes", "checkpoint_every", "val_every", "whole_every", "threads",
                     "device", "prefetch")


@dataclass
class ConvConfig:
    data: str
    out: str
    mode: str = "RGB"
    n: int = 64
    m: int = 128
    nh: int = 64
    nz: int = 32
    crop: int = 192                      # 128 leaves the hyper-latent 2x2, all border: docs/training.md
    batch: int = 4
    steps: int = 20000
    minutes: float | None = None        # wall-clock budget; the LR schedule follows whichever ends first
    lr: float = 2e-4
    seed: int = 0
    val: str | None = None               # folder of validation images; default: 5% of --data
    val_every: int = 500
    checkpoint_every: int = 250
    threads: int | None = None
    jpeg_downscale: bool = True
    init: str | None = None              # start from this checkpoint's (or model package's) weights, fresh optimizer
    bf16: bool = False                   # bfloat16 autocast until the final low-LR phase (BF16_UNTIL), fp32 after
    whole_every: int = 5000              # fine-tuning: steps between whole-photo checks (0: at the end only)
    device: str = "auto"                 # auto: CUDA when torch sees a GPU, else the CPU
    prefetch: bool | None = None         # cut the next batch in a thread (None: on a GPU only)


def resolve_device(name: str = "auto") -> torch.device:
    """auto -> cuda when torch sees a GPU, else cpu; an explicit cuda without one is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA GPU")
    return torch.device(name)


BF16_UNTIL = 0.85      # mixed precision for the high-LR part of the schedule; the final 15% runs in fp32
WHOLE_COUNT, WHOLE_SIDE = 8, 768     # the whole-photo check: this many validation photos, central crops up to this


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def device_name(device: torch.device) -> str:
    """What a checkpoint records as its hardware: 'CPU' or 'CUDA GPU (name)'."""
    if device.type == "cuda":
        return f"CUDA GPU ({torch.cuda.get_device_name(device)})"
    return "CPU"


def _val_crops(images: list[np.ndarray], size: int, count: int = 16) -> np.ndarray:
    rng = np.random.default_rng(1234)
    return random_crops(images, count, size, rng)


def _whole_photos(images: list[np.ndarray], count: int = WHOLE_COUNT, side: int = WHOLE_SIDE) -> list[np.ndarray]:
    """Evenly spaced validation photos, centrally cropped to multiples of 64 (at most side x side)."""
    out = []
    for im in images[:: max(1, len(images) // count)][:count]:
        h, w = (min(s, side) // 64 * 64 for s in im.shape[:2])
        if h and w:
            y, x = (im.shape[0] - h) // 2, (im.shape[1] - w) // 2
            out.append(np.ascontiguousarray(im[y:y + h, x:x + w]))
    return out


@torch.no_grad()
def evaluate_whole(model: HyperpriorCodec, photos: list[np.ndarray]) -> list[dict]:
    """Per quality level: mean estimated bpp and rounded-pixel PSNR over whole photos, one at a time.

    The crop validation (`evaluate`) follows training cheaply but can mislead: 16 small crops miss
    what whole photos hold (a fine-tuning stage once improved it while losing 0.1-0.37 dB on the
    validation photos). This is what a stage is judged by: `train_conv` runs it on the starting
    weights, every `whole_every` steps and on the result, reports the BD-rate against the start, and
    keeps the weights that measured best in best.pt."""
    model.eval()
    dev = model.lambdas.device
    sums = np.zeros((model.levels, 2))
    for im in photos:
        x = torch.from_numpy(im.transpose(2, 0, 1)[None].astype(np.float32) / 255).to(dev)
        for k in range(model.levels):
            r = rd_loss(model, x, torch.full((1,), k, dtype=torch.long, device=dev))
            mse = torch.mean((torch.round(r["x_hat"].clamp(0, 1) * 255) - torch.round(x * 255)) ** 2).item()
            sums[k] += (float(r["bpp"]), 10 * math.log10(255**2 / max(mse, 1e-10)))
    model.train()
    return [{"level": k, "bpp": b / len(photos), "psnr": p / len(photos)} for k, (b, p) in enumerate(sums)]


def compare_whole(start: list[dict], end: list[dict]) -> float | None:
    """BD-rate (PSNR) of the end curve against the start curve, in percent (negative: fewer bits)."""
    from ..metrics import bd_rate

    arr = lambda rows, key: np.array([r[key] for r in rows])       # noqa: E731
    # the same model's levels before and after a stage: no overlap guard (a tiny test model's
    # levels may span less than the 1 dB that comparisons of different codecs ask for)
    return bd_rate(arr(start, "bpp"), arr(start, "psnr"), arr(end, "bpp"), arr(end, "psnr"), min_overlap=0.0)


@torch.no_grad()
def evaluate(model: HyperpriorCodec, crops: np.ndarray) -> list[dict]:
    """Per quality level: real-rounding PSNR and estimated bpp on fixed validation crops."""
    model.eval()
    dev = model.lambdas.device
    x = torch.from_numpy(crops).to(dev)
    rows = []
    for k in range(model.levels):
        level = torch.full((x.shape[0],), k, dtype=torch.long, device=dev)
        r = rd_loss(model, x, level)
        xh = r["x_hat"].clamp(0, 1)
        mse = torch.mean((torch.round(xh * 255) - torch.round(x * 255)) ** 2).item()
        rows.append({"level": k, "bpp": float(r["bpp"]), "psnr": 10 * math.log10(255**2 / max(mse, 1e-10))})
    model.train()
    return rows


def recorded_config(cfg: ConvConfig) -> dict:
    """The train_config a checkpoint records: the options, with the folders (and an --init file) as
    absolute paths."""
    init = resolved(cfg.init) if cfg.init and Path(cfg.init).exists() else cfg.init
    return {**asdict(cfg), "data": resolved(cfg.data), "val": resolved(cfg.val) if cfg.val else None, "init": init}


def check_resume(ck: dict, cfg: ConvConfig, model_config: dict, path: Path) -> None:
    """A checkpoint is resumed only with the options its steps ran with (RESUMABLE_CHANGES aside):
    one line naming those that differ."""
    if ck.get("arch") != "conv":
        raise ValueError(f"checkpoint {path} is from a {ck.get('arch') or 'unknown'} model, not conv")
    differ = differing_options(ck.get("train_config") or {}, recorded_config(cfg), skip=RESUMABLE_CHANGES)
    if not differ and ck.get("model_config") != model_config:
        differ = "the architecture"
    if differ:
        raise ValueError(refusal(path, differ))


def train_conv(cfg: ConvConfig, resume: bool = False, log=print) -> Path:
    device = resolve_device(cfg.device)                 # before anything is written
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    channels = 1 if cfg.mode == "L" else 3
    model = HyperpriorCodec(channels, cfg.n, cfg.m, cfg.nh, cfg.nz)
    resuming = resume and ckpt_path.exists()
    if resuming:                                         # refused before the data is loaded
        ck = torch.load(ckpt_path, weights_only=False, map_location="cpu")
        check_resume(ck, cfg, model.config, ckpt_path)

    data = load_folder(Path(cfg.data), cfg.mode, jpeg_downscale=cfg.jpeg_downscale)
    if len(data) == 0:
        raise ValueError(f"no readable images in {cfg.data} ({len(data.skipped)} files skipped)")
    if cfg.val:
        val = load_folder(Path(cfg.val), cfg.mode)
        if len(val) == 0:
            raise ValueError(f"--val {cfg.val}: no readable images there ({len(val.skipped)} files skipped)")
        train_images = data.images
        held_out = 0
    else:
        n_val = max(1, len(data) // 20)
        val = ImageSet(data.images[:n_val], data.paths[:n_val], data.labels[:n_val])
        train_images = data.images[n_val:] or data.images
        held_out = n_val if len(data) > n_val else 0    # the first images of --data (a single one also trains)
    skipped = len(data.skipped) + len(val.skipped)
    # as dense models record them: the readable images of --data, the validation images (held out of
    # them, or --val's) and the files skipped; held_out: how many of --data's first images are held out
    counts = {"images": len(data), "validation_images": len(val), "skipped": skipped, "held_out": held_out}
    log(f"{len(train_images)} training images, {len(val)} validation, {skipped} skipped")
    val_crops = _val_crops(val.images, cfg.crop)
    photos = _whole_photos(val.images)

    log(f"training on {device_name(device)}")
    torch.backends.cudnn.benchmark = device.type == "cuda"      # fixed crop shapes: let cuDNN pick its kernels
    init_package = None                                  # --init PACKAGE: where the weights came from
    init_dir = package_for_init(cfg.init) if cfg.init else None
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    step, elapsed_before, history = 0, 0.0, []
    running = None                                       # a resumed run's running means of the training loss
    rng = np.random.default_rng(cfg.seed)
    if resuming:
        model.load_state_dict(ck["model"])
        step, elapsed_before, history = ck["step"], ck["elapsed"], ck["history"]
        init_package = ck.get("init_package")
        # the running means go on from where they were (a checkpoint without them: its last recorded ones)
        running = ck.get("train_running") or next((h["train"] for h in reversed(history) if "train" in h), None)
        rng = np.random.default_rng(cfg.seed + step)
        past = (f"--steps {cfg.steps}" if step >= cfg.steps else f"--minutes {cfg.minutes:g}"
                if cfg.minutes and elapsed_before >= cfg.minutes * 60 else None)
        log(f"resumed at step {step}" + (f" (already past {past}: nothing to train)" if past else ""))
    elif init_dir is not None:
        ck = {"step": None}
        source, rebuilt = codec_from_package(init_dir)
        if source.config != model.config:
            differ = ", ".join(f"{k}={v}" for k, v in source.config.items() if model.config[k] != v)
            raise ValueError(f"{cfg.init} is a model of another configuration ({differ})")
        model.load_state_dict(source.state_dict())
        init_package = {"path": str(cfg.init), "training": rebuilt["training"],
                        "z_prior_kl_bits": rebuilt["z_prior_kl_bits"]}
        log(f"initialised from the model package {cfg.init} "
            f"(z prior refitted to its tables: {rebuilt['z_prior_kl_bits']:.2g} bits KL)")
    elif cfg.init:
        ck = torch.load(cfg.init, weights_only=False, map_location="cpu")
        if ck.get("arch") != "conv" or ck.get("model_config") != model.config:
            raise ValueError(f"{cfg.init} is from another architecture or configuration")
        model.load_state_dict(ck["model"])
        log(f"initialised from {cfg.init} (step {ck.get('step')})")
    out.mkdir(parents=True, exist_ok=True)             # the data and the checkpoint are good: write
    model.to(device)
    if resuming:
        opt.load_state_dict(ck["opt"])                   # after the move: the state follows the parameters
    whole_start = None                                   # the starting weights on whole photos (fine-tuning)
    if resuming:
        whole_start = ck.get("whole_photos", {}).get("start")
    elif photos and cfg.init:
        whole_start = evaluate_whole(model, photos)      # before the clock starts: not part of the budget

    budget = cfg.minutes * 60 if cfg.minutes else None
    t0 = time.time() - elapsed_before
    last = dict(running or {"loss": 0.0, "bpp": 0.0, "mse": 0.0})
    seeded = running is not None                         # whether last holds a step's values yet
    # a wall-clock budget holds an unknown number of steps, and validation follows --steps (every 500 by
    # default: none in a few minutes on a CPU): a step line, and a point of the training curve, at
    # least every tenth of the budget
    line_every, last_line = (budget / 10 if budget else None), time.time()
    whole = {"photos": len(photos), "start": whole_start}

    def progress() -> float:
        p = step / cfg.steps
        if budget:
            p = max(p, (time.time() - t0) / budget)
        return min(p, 1.0)

    def save(path: Path = ckpt_path, whole_photos: dict | None = None) -> None:
        _atomic_torch_save({"arch": "conv", "model_config": model.config, "train_config": recorded_config(cfg),
                            "model": {k: v.cpu() for k, v in model.state_dict().items()},
                            "opt": opt.state_dict(), "step": step, "device": device_name(device), "machine": machine(),
                            "torch_threads": torch.get_num_threads(), **counts,
                            "init_package": init_package, "train_running": dict(last) if seeded else None,
                            "elapsed": time.time() - t0, "history": history,
                            "whole_photos": whole_photos or whole}, path)

    # fine-tuning: whole-photo checks during the stage; the best weights go to best.pt
    best_path = out / "best.pt"
    whole["checks"] = (ck.get("whole_photos") or {}).get("checks", []) if resuming else []

    def check_whole() -> tuple[list[dict], float]:
        """Whole photos against the start, outside the time budget; best.pt keeps the best weights."""
        nonlocal t0
        began = time.time()
        curve = evaluate_whole(model, photos)
        t0 += time.time() - began
        bd = compare_whole(whole_start, curve)           # None: the curves do not overlap in PSNR
        best = min((c["bd_rate_vs_start"] for c in whole["checks"] if c["bd_rate_vs_start"] is not None),
                   default=None)
        whole["checks"].append({"step": step, "bd_rate_vs_start": bd})
        if best is None or (bd is not None and bd < best) or not best_path.exists():
            save(best_path, {**whole, "end": curve, "bd_rate_vs_start": bd})
        return curve, bd

    def make_batch() -> tuple[np.ndarray, np.ndarray]:
        return random_crops(train_images, cfg.batch, cfg.crop, rng), rng.integers(0, model.levels, cfg.batch)

    # on a GPU the next batch is cut in a thread while this one trains (same random sequence)
    use_thread = device.type == "cuda" if cfg.prefetch is None else cfg.prefetch
    prefetch = ThreadPoolExecutor(1) if use_thread else None
    pending = prefetch.submit(make_batch) if prefetch else None
    try:
        while progress() < 1.0:
            p = progress()
            lr = cfg.lr * (0.1 if p > 0.85 else 1.0) * min(1.0, (step + 1) / 200)
            for g in opt.param_groups:
                g["lr"] = lr
            if prefetch:
                crops, levels = pending.result()
                pending = prefetch.submit(make_batch)
            else:
                crops, levels = make_batch()
            x = torch.from_numpy(crops).to(device, non_blocking=True)
            level = torch.from_numpy(levels).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and p <= BF16_UNTIL):
                r = rd_loss(model, x, level)
            if not torch.isfinite(r["loss"]):
                raise FloatingPointError(f"loss became {float(r['loss'].detach())} at step {step}; lower --lr")
            opt.zero_grad(set_to_none=True)
            r["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            for k in last:
                v = float(r[k].detach())
                last[k] = 0.98 * last[k] + 0.02 * v if seeded else v
            seeded = True
            if step % cfg.val_every == 0:
                rows = evaluate(model, val_crops)
                history.append({"step": step, "seconds": time.time() - t0, "train": dict(last), "val": rows})
                train = ", ".join(f"{k} {v:.4g}" for k, v in last.items())
                val = " ".join(f"{v['bpp']:.3f}/{v['psnr']:.2f}" for v in rows)
                log(f"step {step}, {time.time() - t0:.0f} s, lr {lr:.3g}: {train}; validation bpp/PSNR by level: {val}")
                last_line = time.time()
            elif line_every and time.time() - last_line >= line_every:
                history.append({"step": step, "seconds": time.time() - t0, "train": dict(last)})
                train = ", ".join(f"{k} {v:.4g}" for k, v in last.items())
                log(f"step {step}, {time.time() - t0:.0f} s, lr {lr:.3g}: {train} ({progress():.0%} of --minutes)")
                last_line = time.time()
            if whole_start is not None and cfg.whole_every and step % cfg.whole_every == 0 and progress() < 1.0:
                _, bd = check_whole()
                log(f"step {step}: whole photos " + ("not comparable" if bd is None else f"{bd:+.2f}%")
                    + " BD-rate against the starting weights")
            if step % cfg.checkpoint_every == 0:
                save()
    except (KeyboardInterrupt, Terminated):          # Ctrl-C or kill: resumable with --resume
        if step:
            save()
        raise
    if prefetch:
        prefetch.shutdown(wait=True)
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise FloatingPointError(f"the weights became non-finite by step {step}; lower --lr")
    history.append({"step": step, "seconds": time.time() - t0, "train": dict(last), "val": evaluate(model, val_crops)})
    seconds = time.time() - t0
    if whole_start is not None:
        whole["end"], whole["bd_rate_vs_start"] = check_whole()
    elif photos:
        whole["end"] = evaluate_whole(model, photos)
    t0 = time.time() - seconds                           # the checkpoint's time stays training time
    save()
    log(f"done: {step} steps in {seconds:.0f} s")
    if photos:
        bd = whole.get("bd_rate_vs_start")
        log(f"whole photos ({len(photos)}, estimated bpp/PSNR by level): "
            + " ".join(f"{v['bpp']:.3f}/{v['psnr']:.2f}" for v in whole["end"])
            + ("" if bd is None else f"; BD-rate against the starting weights {bd:+.1f}%"
               + (" (worse: judge with bench/rd.py before shipping)" if bd > 0 else "")))
    if whole_start is None:
        return ckpt_path
    scored = [c for c in whole["checks"] if c["bd_rate_vs_start"] is not None]
    if scored:
        best = min(scored, key=lambda c: c["bd_rate_vs_start"])
        log(f"best on whole photos: step {best['step']} ({best['bd_rate_vs_start']:+.1f}%), in {best_path}")
    return best_path
