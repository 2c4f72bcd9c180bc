"""Fine-tune a codec package's encoder for the decoder it ships, leaving the decoder untouched.

    python -m aecompress.train.tune_analysis PACKAGE OUT --data ../shared/data/train/photos
           [--minutes 60] [--crop 192] [--batch 8] [--lr 3e-5] [--rate ste|noise]
           [--rounding rdoq|plain] [--threads 1] [--run runs/tune_analysis]

The analysis predicts a latent in one pass; `encode --refine` shows how much a better latent for the
same decoder is worth (aecompress/refine.py). This stage moves part of that search into the encoder:
it trains the analysis, the hyper-analysis and the per-level gains (everything only the encoder
computes) on training's loss, bits per pixel + lambda * 255^2 * MSE, through the package's own
synthesis, hyper-synthesis and z prior, which stay fixed. The entropy tables, the inverse gains
and the synthesis are copied unchanged, so every file the old package wrote decodes to the same
pixels with the new one. Its model id changes all the same (the id hashes every graph), so its
manifest lists the old id under `decodes`, where decoding looks for a file's model.

The synthesis is shown the integers the runtime writes (`--rounding rdoq`, its rate-distortion
optimised rounding, or `plain`). `--rate ste` (the default) counts the bits of those integers, the
file's own, with a straight-through gradient; `--rate noise` counts those of a noisy latent, as
training did (14-minute trials of each are compared in docs/codec.md). Quality levels are drawn
uniformly over the whole scale, fractional ones interpolating the gains as the runtime does.
Progress is printed as the change of that loss (bits estimated from the model's densities, the
runtime's rounding) on a fixed set of held-out crops.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import AecError
from ..package import load_package
from .conv import HyperpriorCodec
from .data import load_folder, random_crops_hwc
from .hardware import describe, machine
from .layers import gaussian_likelihood as gaussian, ste_round

HELD_OUT = 8                     # images at the start of --data kept for the progress check
CHECK_LEVELS = (0.0, 2.0, 4.0, 6.0, 8.0)
RATES = ("ste", "noise")


def level_weights(levels: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices and weight of fractional levels (B,) between the levels below and above, as the
    runtime interpolates its per-level tables (Codec._at_level)."""
    lv = torch.clamp(levels, 0, n - 1)
    i0 = torch.clamp(torch.floor(lv).long(), max=n - 2)
    return i0, i0 + 1, (lv - i0).float()


class TunedEncoder(nn.Module):
    """A HyperpriorCodec whose encoder side trains while its decoder side is frozen."""

    def __init__(self, codec: HyperpriorCodec, rdoq_lambda: float = 0.0):
        super().__init__()
        self.codec = codec
        self.rdoq_lambda = rdoq_lambda
        for p in codec.parameters():
            p.requires_grad_(False)
        for module in (codec.g_a, codec.h_a):
            for p in module.parameters():
                p.requires_grad_(True)
        codec.log_gain.requires_grad_(True)

    def quantize(self, r: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The integers the encoder writes for r = latent - mean, with a straight-through gradient:
        rounded, or with rate-distortion optimised rounding as the runtime does it (Codec._round:
        the cheaper of the two nearest integers in rdoq_lambda * error^2 + bits, the bits here from
        the continuous scale instead of the table's)."""
        if self.rdoq_lambda <= 0:
            return ste_round(r)
        with torch.no_grad():
            q0 = torch.floor(r)
            q1 = q0 + 1

            def cost(q):
                return self.rdoq_lambda * (r - q) ** 2 - torch.log2(gaussian(q, torch.zeros_like(q), scale))

            q = torch.where(cost(q1) < cost(q0), q1, q0)
        return r + (q - r).detach()

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.codec.parameters() if p.requires_grad]

    def _per_level(self, table: torch.Tensor, i0, i1, f) -> torch.Tensor:
        f = f[:, None]
        return torch.exp((1 - f) * table[i0] + f * table[i1])[:, :, None, None]

    def forward(self, x: torch.Tensor, levels: torch.Tensor, rate: str = "ste") -> dict[str, torch.Tensor]:
        """x in [0, 1]; levels (B,) fractional. Returns per-crop bpp and mse (the file's bits and
        the decoded picture's error, estimated), and the loss."""
        c = self.codec
        i0, i1, f = level_weights(levels, c.levels)
        y = c.g_a(x) * self._per_level(c.log_gain, i0, i1, f)
        z = c.h_a(y)
        z_hat = ste_round(z)
        mean, scale = c.mean_scale(z_hat)
        y_hat = self.quantize(y - mean, scale) + mean
        if rate == "noise":
            z_lik = c.entropy_bottleneck.likelihood(z + torch.empty_like(z).uniform_(-0.5, 0.5))
            y_lik = gaussian(y + torch.empty_like(y).uniform_(-0.5, 0.5), mean, scale)
        else:
            z_lik = c.entropy_bottleneck.likelihood(z_hat)
            y_lik = gaussian(y_hat, mean, scale)
        x_hat = c.g_s(y_hat * self._per_level(c.log_inv_gain, i0, i1, f))
        pixels = x.shape[2] * x.shape[3]
        bpp = ((-torch.log2(y_lik)).flatten(1).sum(1) + (-torch.log2(z_lik)).flatten(1).sum(1)) / pixels
        mse = ((torch.clamp(x_hat, 0, 1) - x) ** 2).flatten(1).mean(1)
        lam = torch.exp((1 - f) * torch.log(c.lambdas[i0]) + f * torch.log(c.lambdas[i1]))
        return {"bpp": bpp, "mse": mse, "loss": (lam * 255**2 * mse + bpp).mean()}


def check(model: TunedEncoder, x: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bpp, PSNR) of each held-out crop, with the runtime's rounding and the rounded latent's bits."""
    with torch.no_grad():
        t = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
        out = model(t, torch.from_numpy(levels.astype(np.float32)), rate="ste")
    return out["bpp"].numpy(), 10 * np.log10(1.0 / np.maximum(out["mse"].numpy(), 1e-10))


def tune(package: Path, out: Path, images: list[np.ndarray], data: str, minutes: float, crop: int = 192,
         batch: int = 8, lr: float = 3e-5, rate: str = "ste", threads: int = 1, seed: int = 0,
         run: Path | None = None, max_steps: int | None = None, held_out: int = HELD_OUT,
         levels: tuple[float, float] | None = None, rounding: str = "rdoq", log=print) -> dict:
    """Fine-tune for `minutes` (or `max_steps`) on random crops of `images` ((H, W, C) uint8; the
    first `held_out` only measure progress) coded at levels drawn uniformly from `levels` (default:
    the whole scale); write the new package to `out` and return the stage
    record added to its manifest. `data` says in the record what the images are."""
    from .export import export_onnx, write_stage_package
    from .from_package import codec_from_package

    if rate not in RATES:
        raise ValueError(f"--rate must be one of {', '.join(RATES)}")
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    package = Path(package)
    start = load_package(package, device="cpu")
    start_id = start.model_id
    codec, _ = codec_from_package(package)
    rdoq_lambda = float(start.manifest.get("encoder", {}).get("rdoq_lambda", 0.0)) if rounding == "rdoq" else 0.0
    model = TunedEncoder(codec.train(), rdoq_lambda)
    if len(images) <= held_out:
        raise ValueError(f"{data}: {len(images)} images; fine-tuning needs more than {held_out}")
    held, train = images[:held_out], images[held_out:]

    check_x = random_crops_hwc(held, 4 * len(CHECK_LEVELS), max(crop, 128), np.random.default_rng(12345))
    check_lv = np.repeat(np.array(CHECK_LEVELS), 4)
    lams = np.array(codec.config["lambdas"])[check_lv.astype(int)]
    bpp0, psnr0 = check(model, check_x, check_lv)
    cost0 = lams * 255**2 * 10 ** (-psnr0 / 10) + bpp0
    log(f"start: held-out crops {bpp0.mean():.4f} bpp, {psnr0.mean():.3f} dB")

    lo, hi = levels if levels is not None else (0.0, codec.levels - 1.0)
    opt = torch.optim.Adam(model.trainable(), lr=lr)
    t0, step, history = time.time(), 0, []
    budget = minutes * 60.0
    last_check = t0
    while time.time() - t0 < budget and (max_steps is None or step < max_steps):
        frac = (time.time() - t0) / budget
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        x = random_crops_hwc(train, batch, crop, rng)
        lv = torch.from_numpy(rng.uniform(lo, hi, size=batch).astype(np.float32))
        t = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
        loss = model(t, lv, rate=rate)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if time.time() - last_check > 300 or time.time() - t0 >= budget or step == max_steps:
            last_check = time.time()
            bpp, psnr = check(model, check_x, check_lv)
            cost = lams * 255**2 * 10 ** (-psnr / 10) + bpp
            per = [(float((bpp / bpp0)[check_lv == v].mean() - 1) * 100, float((psnr - psnr0)[check_lv == v].mean()),
                    float((cost / cost0)[check_lv == v].mean() - 1) * 100) for v in CHECK_LEVELS]
            history.append({"step": step, "seconds": round(time.time() - t0),
                            "cost_change_pct": round(float((cost / cost0).mean() - 1) * 100, 3),
                            "per_level": [{"level": v, "bits_pct": round(b, 2), "psnr_db": round(p, 4),
                                           "cost_pct": round(c, 3)} for v, (b, p, c) in zip(CHECK_LEVELS, per)]})
            log(f"step {step} ({time.time() - t0:.0f} s): held-out cost {history[-1]['cost_change_pct']:+.2f}% "
                f"(levels: " + ", ".join(f"{b:+.1f}% bits {p:+.3f} dB" for b, p, _ in per) + ")")
            if run is not None:
                Path(run).mkdir(parents=True, exist_ok=True)
                torch.save({"model": codec.state_dict(), "step": step, "history": history}, Path(run) / "tuned.pt")

    record = {"step": "analysis, hyper-analysis and gains fine-tuned for the fixed decoder "
                      "(python -m aecompress.train.tune_analysis)",
              "data": f"{data}: {len(train)} images ({held_out} held out for the progress check), "
                      f"random {crop}x{crop} crops with flips, levels uniform in [{lo:g}, {hi:g}]",
              "steps": step, "seconds": round(time.time() - t0), "batch": batch, "lr": lr, "schedule": "cosine",
              "loss": f"bpp + lambda * 255^2 * MSE, rate {rate!r}, rounding {rounding!r}",
              "hardware": describe("CPU", threads, machine=machine()), "history": history}

    def export_graphs(tmp: Path, man: dict) -> None:
        codec.eval()
        ex = torch.rand(1, codec.config["channels"], 128, 192)
        export_onnx(codec.g_a, ex, tmp / man["graphs"]["analysis"])
        export_onnx(codec.h_a, codec.g_a(ex), tmp / man["graphs"]["hyper_analysis"])

    def list_start(man: dict) -> None:
        # the decoder is the same: the files of the package it started from decode as before
        man["decodes"] = [start_id.hex()] + [h for h in man.get("decodes", []) if h != start_id.hex()]

    write_stage_package(package, out, record, f"the encoder tuned for the fixed decoder: cosine from lr {lr:g} "
                        f"over {minutes:g} minutes", {"log_gain": codec.log_gain.detach().numpy()}, export_graphs,
                        list_start)
    log(f"wrote {out} ({step} steps)")
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aecompress.train.tune_analysis",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("package")
    ap.add_argument("out")
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--rate", choices=RATES, default="ste")
    ap.add_argument("--rounding", choices=("rdoq", "plain"), default="rdoq",
                    help="the integers the synthesis is shown: the runtime's rate-distortion optimised rounding "
                         "(the package's encoder.rdoq_lambda) or plain rounding")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.crop % 64:
        print("tune_analysis: --crop must be a multiple of 64", file=sys.stderr)
        return 2
    images = load_folder(a.data, jpeg_downscale=True).images
    try:
        tune(Path(a.package), Path(a.out), images, str(a.data), a.minutes, a.crop, a.batch, a.lr, a.rate,
             a.threads, a.seed, a.run, rounding=a.rounding)
    except (ValueError, AecError) as exc:
        print(f"tune_analysis: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from ..entrypoint import configure_process

    configure_process()         # a program of its own, as the command line is (Pillow's limit, quiet library logs)
    raise SystemExit(main())
