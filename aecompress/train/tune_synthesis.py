"""Fine-tune a codec package's synthesis on the latents its encoder really writes.

    python -m aecompress.train.tune_synthesis PACKAGE OUT --data ../shared/data/train/photos
           [--minutes 120] [--crop 192] [--batch 8] [--lr 2e-5] [--weighting sqrt] [--threads 1]
           [--run runs/tune_synthesis]

Training shows the synthesis latents rounded around a float mean. The shipped encoder writes
something else: the mean comes from the integer hyper-synthesis, and the rate-distortion optimised
rounding (Codec._round) moves values towards the likelier integer, a bias the synthesis never saw.
This stage runs the torch-free encoder on training crops at qualities spread over the whole scale,
exactly as `aecompress encode` does, and trains only what the decoder computes from those integers
(the synthesis and the per-level inverse gains) to reconstruct the crop. The encoder, the hyper
networks and the entropy tables are untouched, so every image gives the same bits as before: any
gain is pure distortion at equal rate. The loss is a weighted mean over crops of log(MSE) (the mean
PSNR, when every crop weighs alike); `--weighting` says how the quality levels weigh (crop_weights).

The new package has a new model id (what the decoder computes changed); its refinement graph is
re-exported from the new synthesis. Progress is printed as the mean PSNR gain on a fixed set of
held-out crops (the first images of --data, skipped by training) coded at five qualities.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import container
from ..codec import Codec
from ..errors import AecError
from ..package import load_package
from .data import load_folder, random_crops_hwc
from .hardware import describe, machine

HELD_OUT = 8                     # images at the start of --data kept for the progress check
CHECK_LEVELS = (0.0, 2.0, 4.0, 6.0, 8.0)


def encoder_latents(codec: Codec, crops: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """(B, M, h, w) float32: what the decoder feeds its synthesis for each (H, W, C) uint8 crop coded
    at its (fractional) level by the shipped encoder (RDOQ rounding, integer hyper-synthesis)."""
    out = []
    for crop, level in zip(crops, levels):
        level = container.quantize_level(float(level))           # as stored in a file
        st = codec._quantize(codec.analyse(crop), level)
        st["level"] = level
        out.append(codec.latent_from_state(st))
    return np.stack(out)


def _level_tensors(codec: Codec, levels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Interpolation indices and weights of fractional levels (as Codec._at_level)."""
    n = codec.levels
    lv = np.clip(np.array([container.quantize_level(float(v)) for v in levels]), 0, n - 1)
    i = np.minimum(np.floor(lv).astype(np.int64), n - 2)
    return torch.from_numpy(i), torch.from_numpy(i + 1), torch.from_numpy((lv - i).astype(np.float32))


class TunedDecoder(torch.nn.Module):
    """The synthesis and the per-level inverse gains, applied to (q + mean) * inv_gain latents.

    Latents are produced with the package's own inverse gains; the module divides them out and
    multiplies by its trainable ones (initialised to the same values, so it starts as the package)."""

    def __init__(self, g_s: torch.nn.Module, log_inv_gain: torch.Tensor):
        super().__init__()
        self.g_s = g_s
        self.log_inv_gain = torch.nn.Parameter(log_inv_gain.clone())
        self.register_buffer("start", log_inv_gain.clone())

    def forward(self, y: torch.Tensor, i0: torch.Tensor, i1: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        f = f[:, None]
        delta = (1 - f) * (self.log_inv_gain[i0] - self.start[i0]) + f * (self.log_inv_gain[i1] - self.start[i1])
        return torch.clamp(self.g_s(y * torch.exp(delta)[:, :, None, None]), 0.0, 1.0)


WEIGHTINGS = ("db", "sqrt", "lambda")


def crop_weights(codec: Codec, levels: np.ndarray, mse: torch.Tensor, weighting: str = "sqrt") -> torch.Tensor:
    """Weights of the crops' log(MSE), normalised to mean 1.

    "db": every crop alike (the mean PSNR). "lambda": lambda * MSE, which gives log(MSE) the gradient
    that training's loss R + lambda * MSE gives the synthesis: the top levels weigh about 20 times
    the bottom ones. "sqrt": the geometric mean of the two (measured best, docs/codec.md)."""
    if weighting == "db":
        w = torch.ones_like(mse)
    else:
        lam = torch.tensor([codec._lambda(float(v)) for v in levels], dtype=mse.dtype)
        w = lam * mse.detach()
        w = w if weighting == "lambda" else torch.sqrt(w)
    return w / w.mean()


def psnr_batch(model: TunedDecoder, y: np.ndarray, lv, target: np.ndarray) -> np.ndarray:
    """PSNR (dB) of each decoded crop, rounded to 8 bits as the runtime does."""
    with torch.no_grad():
        x = model(torch.from_numpy(y), *lv).numpy()
    x = np.round(x * 255.0).transpose(0, 2, 3, 1)
    mse = ((x - target.astype(np.float64)) ** 2).reshape(len(x), -1).mean(axis=1)
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))


def tune(package: Path, out: Path, images: list[np.ndarray], data: str, minutes: float, crop: int = 192,
         batch: int = 8, lr: float = 2e-5, threads: int = 1, seed: int = 0, run: Path | None = None,
         max_steps: int | None = None, held_out: int = HELD_OUT, levels: tuple[float, float] | None = None,
         weighting: str = "sqrt", log=print) -> dict:
    """Fine-tune for `minutes` (or `max_steps`) on random crops of `images` ((H, W, C) uint8; the first
    `held_out` only measure progress) coded at levels drawn uniformly from `levels` (default: the
    whole scale); write the new package to `out` and return the stage record added to its manifest.
    `data` says in the record what the images are."""
    from .export import _Synthesis, export_onnx, write_stage_package
    from .from_package import codec_from_package
    from .refine import export_refine

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    pkg = load_package(package, device="cpu", threads=threads)
    codec = Codec(pkg)
    torch_codec, _ = codec_from_package(pkg.path, fit_steps=0)
    model = TunedDecoder(copy.deepcopy(torch_codec.g_s), torch_codec.log_inv_gain.detach())
    if len(images) <= held_out:
        raise ValueError(f"{data}: {len(images)} images; fine-tuning needs more than {held_out}")
    held, train = images[:held_out], images[held_out:]

    check_rng = np.random.default_rng(12345)
    check_x = random_crops_hwc(held, 4 * len(CHECK_LEVELS), max(crop, 128), check_rng)
    check_lv = np.repeat(np.array(CHECK_LEVELS), 4)
    check_y = encoder_latents(codec, check_x, check_lv)
    check_t = _level_tensors(codec, check_lv)
    start_psnr = psnr_batch(model, check_y, check_t, check_x)
    log(f"start: held-out crops {start_psnr.mean():.3f} dB")

    lo, hi = levels if levels is not None else (0.0, codec.levels - 1.0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t0, step, history = time.time(), 0, []
    budget = minutes * 60.0
    last_check = t0
    while time.time() - t0 < budget and (max_steps is None or step < max_steps):
        frac = (time.time() - t0) / budget
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        x = random_crops_hwc(train, batch, crop, rng)
        lv = rng.uniform(lo, hi, size=batch)
        y = torch.from_numpy(encoder_latents(codec, x, lv))
        target = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
        rec = model(y, *_level_tensors(codec, lv))
        mse = ((rec - target) ** 2).flatten(1).mean(1)
        loss = (crop_weights(codec, lv, mse, weighting) * torch.log(mse + 1e-7)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if time.time() - last_check > 600 or time.time() - t0 >= budget or step == max_steps:
            last_check = time.time()
            p = psnr_batch(model, check_y, check_t, check_x)
            gain = [float((p - start_psnr)[check_lv == v].mean()) for v in CHECK_LEVELS]
            history.append({"step": step, "seconds": round(time.time() - t0), "gain_db": round(float((p - start_psnr).mean()), 4),
                            "gain_db_per_level": [round(g, 4) for g in gain]})
            log(f"step {step} ({time.time() - t0:.0f} s): held-out gain {history[-1]['gain_db']:+.3f} dB "
                f"(levels {', '.join(f'{g:+.3f}' for g in gain)})")
            if run is not None:
                Path(run).mkdir(parents=True, exist_ok=True)
                torch.save({"model": model.state_dict(), "step": step, "history": history}, Path(run) / "tuned.pt")

    record = {"step": "synthesis and inverse gains fine-tuned on the shipped encoder's latents "
                      "(python -m aecompress.train.tune_synthesis)",
              "data": f"{data}: {len(train)} images ({held_out} held out for the progress check), "
                      f"random {crop}x{crop} crops with flips, levels uniform in [{lo:g}, {hi:g}]",
              "steps": step, "seconds": round(time.time() - t0), "batch": batch, "lr": lr, "schedule": "cosine",
              "loss": f"mean over crops of w * log(MSE), weighting {weighting!r}", "hardware": describe("CPU", threads, machine=machine()),
              "held_out_gain_db": history[-1]["gain_db"] if history else None, "history": history}

    def export_graphs(tmp: Path, man: dict) -> None:
        g_s = model.g_s.eval()
        export_onnx(_Synthesis(g_s), torch.from_numpy(check_y[:1]), tmp / man["graphs"]["synthesis"])
        refine_name = man.get("encoder", {}).get("refine_graph")
        if refine_name:
            export_refine(g_s, tmp / refine_name, man["architecture"]["m"], man["channels"])

    write_stage_package(pkg.path, out, record, f"the synthesis tuned on the encoder's latents: {record['schedule']} "
                        f"from lr {lr:g} over {minutes:g} minutes",
                        {"log_inv_gain": model.log_inv_gain.detach().numpy()}, export_graphs)
    log(f"wrote {out} ({step} steps)")
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aecompress.train.tune_synthesis",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("package")
    ap.add_argument("out")
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--minutes", type=float, default=120.0)
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run", type=Path, default=None)
    ap.add_argument("--weighting", choices=WEIGHTINGS, default="sqrt")
    a = ap.parse_args(argv)
    if a.crop % 64:
        print("tune_synthesis: --crop must be a multiple of 64", file=sys.stderr)
        return 2
    images = load_folder(a.data, jpeg_downscale=True).images
    try:
        tune(Path(a.package), Path(a.out), images, str(a.data), a.minutes, a.crop, a.batch, a.lr, a.threads,
             a.seed, a.run, weighting=a.weighting)
    except (ValueError, AecError) as exc:
        print(f"tune_synthesis: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from ..entrypoint import configure_process

    configure_process()         # a program of its own, as the command line is (Pillow's limit, quiet library logs)
    raise SystemExit(main())
