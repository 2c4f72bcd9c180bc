"""Probe: what a checkerboard context model could save on the shipped photo codec's latents.

    python bench/probes/context_model.py [--train 60] [--test 12] [--steps 10000] [--model photo]
                                         [--out bench/results/probe_context_model.json]

Needs torch (the `train` extra). The encoder is the shipped one, fixed: its latent `y` (with the
level's gain), and the mean and log-scale of the integer hyper-synthesis, are collected on
training photos (every 7th of ../shared/data/train/photos, levels 0-8) and held-out training
photos (every 11th from the 4th, levels 0, 2, 4, 6, 8). A small network then learns, for the
*non-anchor* half of a checkerboard (He et al. 2021, "Checkerboard context model"), a correction
of the mean and log-scale from the plainly rounded anchor values around it (5x5 convolution) and
the hyper-synthesis' own log-scales. It is trained on 32x32-cell crops with ideal Gaussian bits
(uniform noise for the rounding), Adam 1e-3 then 2e-4 for the last 20%.

Printed (and written as JSON): per level, the bits the non-anchors save, and what that is of all
of `y`'s bits (anchors are coded as now). Ideal bits, plain rounding, no range coder: an estimate of
what a context model on this encoder could win, not a codec. docs/codec.md has the result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from aecompress.codec import Codec  # noqa: E402
from aecompress.package import load_package  # noqa: E402

LO, HI = np.log(0.11), np.log(256.0)        # the y tables' scale range
CROP = 32


def collect(codec: Codec, files, levels):
    out = []
    for f in files:
        px = np.asarray(Image.open(f).convert("RGB"))
        a = codec.analyse(px)
        for lv in levels:
            gain = codec._gain(lv, "log_gain")
            yg = a.y.astype(np.float64) * gain[:, None, None]
            z = codec.pkg.session("hyper_analysis")(yg[None].astype(np.float32))[0]
            mean, log_scale, _ = codec._entropy_params(np.round(z).astype(np.int64))
            out.append((lv, torch.tensor(yg - mean, dtype=torch.float32),
                        torch.tensor(log_scale, dtype=torch.float32)))
    return out


def gauss_bits(q: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    s = torch.exp(log_scale.clamp(LO, HI))
    d = torch.distributions.Normal(0.0, 1.0)
    p = d.cdf((q + 0.5) / s) - d.cdf((q - 0.5) / s)
    return -torch.log2(p.clamp_min(1e-9))


class Context(nn.Module):
    def __init__(self, channels: int = 128, hidden: int = 192):
        super().__init__()
        self.ctx = nn.Conv2d(channels, hidden, 5, padding=2)
        self.net = nn.Sequential(nn.Conv2d(hidden + 2 * channels, hidden, 1), nn.LeakyReLU(),
                                 nn.Conv2d(hidden, hidden, 1), nn.LeakyReLU(),
                                 nn.Conv2d(hidden, 2 * channels, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, anchors, log_scale, level):
        d = self.net(torch.cat([self.ctx(anchors), log_scale, torch.full_like(log_scale, level / 8.0)], 1))
        d_mean, d_log_scale = d.chunk(2, 1)
        return d_mean, log_scale + d_log_scale


def non_anchor(h: int, w: int) -> torch.Tensor:
    i, j = np.indices((h, w))
    return torch.tensor((i + j) % 2 == 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=60)
    ap.add_argument("--test", type=int, default=12)
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--model", default="photo")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/train/photos"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results/probe_context_model.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    codec = Codec(load_package(args.model, "cpu", args.threads))
    files = sorted(args.data.glob("*.png"))
    t0 = time.time()
    train = collect(codec, files[1::7][:args.train], range(codec.levels))
    test = collect(codec, files[3::11][:args.test], range(0, codec.levels, 2))
    print(f"collected {len(train)} training and {len(test)} test latents in {time.time() - t0:.0f} s", flush=True)

    model = Context(channels=train[0][1].shape[0])
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    rng = np.random.default_rng(0)
    t0 = time.time()
    for step in range(args.steps):
        lv, e, ls = train[rng.integers(len(train))]
        _, h, w = e.shape
        y0, x0 = rng.integers(0, max(1, h - CROP)), rng.integers(0, max(1, w - CROP))
        e, ls = e[:, y0:y0 + CROP, x0:x0 + CROP], ls[:, y0:y0 + CROP, x0:x0 + CROP]
        na = non_anchor(*e.shape[1:])
        anchors = torch.where(na, 0.0, torch.round(e))[None]
        d_mean, log_scale = model(anchors, ls[None], lv)
        r = e[None] - d_mean
        loss = gauss_bits(r + torch.rand_like(r) - 0.5, log_scale)[..., na].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == int(args.steps * 0.8):
            for g in opt.param_groups:
                g["lr"] = 2e-4
    print(f"trained {args.steps} steps in {time.time() - t0:.0f} s", flush=True)

    sums: dict[int, list[float]] = {}
    with torch.no_grad():
        for lv, e, ls in test:
            na = non_anchor(*e.shape[1:])
            q = torch.round(e)
            d_mean, log_scale = model(torch.where(na, 0.0, q)[None], ls[None], lv)
            q1 = torch.round(e[None] - d_mean)[0]
            acc = sums.setdefault(lv, [0.0, 0.0, 0.0])
            acc[0] += gauss_bits(q, ls).sum().item()
            acc[1] += gauss_bits(q, ls)[:, na].sum().item()
            acc[2] += gauss_bits(q1, log_scale[0])[:, na].sum().item()
    rows = []
    print("\n| level | non-anchor bits saved | of all y bits |\n|---|---|---|")
    for lv, (all_bits, before, after) in sorted(sums.items()):
        rows.append({"level": lv, "non_anchor_saving": 1 - after / before, "y_saving": (before - after) / all_bits})
        print(f"| {lv} | {rows[-1]['non_anchor_saving']:+.2%} | {rows[-1]['y_saving']:+.2%} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": codec.pkg.name, "model_id": codec.pkg.model_id.hex()[:8],
                                    "train_latents": len(train), "test_latents": len(test),
                                    "steps": args.steps, "levels": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
