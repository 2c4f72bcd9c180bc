"""Encoder-side refinement of a latent: fewer bits and less error for the same decoder.

The analysis transform predicts a latent in one pass; the latent that minimises the coded file's
rate-distortion cost for *this* image is usually nearby. `aecompress encode --refine N` searches
for it with N steps of stochastic Gumbel annealing (SGA; Yang, Bamler and Mandt 2020, "Improving
inference for neural image compression"): each latent value is a random soft choice between the
integers below and above it (relative to its predicted mean), sharpening to a hard choice as a
temperature falls, and Adam (its step size falling along a half cosine) follows the gradient of

    bits(y) / pixels + lambda * 255^2 * mse(synthesis(y), image)

with the level's training lambda. Rate and distortion and their gradients come from the model
package's refinement graph (aecompress/train/refine.py writes it; the runtime has no autograd).
The hyper-latent z, and with it every mean and scale, stays as the encoder first computed it, and
the result is rounded to integers as usual, so the file format and the decoder are unchanged and
decoding stays exact on every machine.

Large latents are refined in tiles (each with a margin of context that is read but not changed)
so that memory stays bounded; the noise comes from a fixed seed, so an encode is repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

SCALE_MIN, SCALE_MAX = 0.11, 256.0     # the Gaussian tables' range of scales (train/conv.py)
TILE = 64            # latent cells (1024 pixels) per tile side
MARGIN = 4           # latent cells of context around a tile
_EPS = 1e-5


@dataclass(frozen=True)
class Schedule:
    """How the search moves: Adam's step size and the annealing temperature, per step."""
    learning_rate: float = 0.1      # Adam's step size at the first step
    cosine: bool = True             # the step size falls along a half cosine to 0 (else it stays)
    tau_start: float = 0.5          # the temperature falls exponentially from tau_start ...
    tau_decay: float = 3.0          # ... by exp(-tau_decay) over the search (0.025 at the end)
    tau_min: float = 1e-3

    def step_size(self, step: int, steps: int) -> float:
        f = step / max(steps, 1)
        return self.learning_rate * (0.5 * (1.0 + float(np.cos(np.pi * f))) if self.cosine else 1.0)

    def temperature(self, step: int, steps: int) -> float:
        return max(self.tau_start * float(np.exp(-self.tau_decay * step / max(steps, 1))), self.tau_min)


# Chosen on three validation photos (bench/probes/refine_steps.py, docs/codec.md): at 50 steps
# it saves 13.8-14.1% of plain encoding's bits where the previous schedule saved 9.6% (four other
# photos: 13.9% against 8.9%).
SCHEDULE = Schedule()
PREVIOUS = Schedule(learning_rate=0.01, cosine=False, tau_decay=5.0)    # until 2026-12-07
# Short searches need smaller steps and faster cooling: at 10 steps (three tuning photos) this saves
# 5.4% of plain encoding's bits where SCHEDULE saves 1.5%; at 15 steps the two are level (7.5% and
# 7.3%) and from 20 on SCHEDULE wins (docs/codec.md, "The schedule").
SHORT = Schedule(learning_rate=0.03, tau_decay=5.0)
SHORT_BELOW = 15


def schedule_for(steps: int) -> Schedule:
    """The shipped schedule for a search of `steps` steps."""
    return SHORT if steps < SHORT_BELOW else SCHEDULE


def _soft_round(v: np.ndarray, tau: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """SGA's soft rounding of v: floor(v) + w, w in (0, 1) the Gumbel-softmax weight of the upper
    integer; returns (soft value, d soft / d v)."""
    f = np.floor(v)
    d = v - f                                               # distance to the lower integer, [0, 1)
    dl = np.clip(d, -1 + _EPS, 1 - _EPS)
    du = np.clip(1 - d, -1 + _EPS, 1 - _EPS)
    g = rng.gumbel(size=(2,) + v.shape).astype(v.dtype)
    s = (np.arctanh(dl) - np.arctanh(du)) / tau + g[1] - g[0]   # logit(upper) - logit(lower)
    w = 1.0 / (1.0 + np.exp(-np.clip(s, -60, 60)))
    ds_dv = (1.0 / (1.0 - dl * dl) * (np.abs(d) < 1 - _EPS) + 1.0 / (1.0 - du * du) * (np.abs(1 - d) < 1 - _EPS)) / tau
    return f + w, w * (1.0 - w) * ds_dv


def refine(graph: Callable[..., list[np.ndarray]], y: np.ndarray, mean: np.ndarray, scale: np.ndarray,
           inv_gain: np.ndarray, target: np.ndarray, height: int, width: int, lam: float, steps: int,
           seed: int = 0, check: Callable[[], None] | None = None, schedule: Schedule | None = None) -> np.ndarray:
    """The refined latent (M, h, w) for y (M, h, w), gained, whose integers relative to `mean` are
    to be coded with Gaussians of `scale`. target: (C, 16h, 16w) uint8, the image the synthesis
    should produce (converted tile by tile); only its first height x width pixels count (the rest
    is padding).
    graph(y, mean, scale, inv_gain, target, mask) -> [bits, sse, grad_bits, grad_sse] (the package's
    refinement graph). check is called every step and may raise to cancel. schedule: None for the
    shipped one for this many steps (schedule_for)."""
    schedule = schedule or schedule_for(steps)
    m, h, w = y.shape
    out = np.array(y, dtype=np.float32)                     # one copy, whatever y's type
    if steps <= 0:
        return out
    mean, scale = mean.astype(np.float32), scale.astype(np.float32, copy=False)
    ig = inv_gain.astype(np.float32).reshape(1, m, 1, 1)
    pixels = max(1, height * width)
    dist = np.float32(lam * 255.0 ** 2 / (target.shape[0] * pixels))
    rate = np.float32(1.0 / pixels)
    rng = np.random.default_rng(seed)
    for r0 in range(0, h, TILE):
        for c0 in range(0, w, TILE):
            r1, c1 = min(h, r0 + TILE), min(w, c0 + TILE)
            a0, a1, b0, b1 = max(0, r0 - MARGIN), min(h, r1 + MARGIN), max(0, c0 - MARGIN), min(w, c1 + MARGIN)
            core = (slice(None), slice(r0 - a0, r1 - a0), slice(c0 - b0, c1 - b0))
            win = (slice(None), slice(a0, a1), slice(b0, b1))
            yt, mt, st = out[win].copy(), mean[win], scale[win]
            tgt = target[:, 16 * a0:16 * a1, 16 * b0:16 * b1].astype(np.float32) * np.float32(1 / 255)
            # the error counts over the whole window: a core cell also shapes pixels a cell or two
            # into the margin, which the neighbouring tile, holding this one fixed, cannot repair
            mask = np.ones((1, 1) + tgt.shape[1:], np.float32)
            mask[0, 0, max(0, height - 16 * a0):, :] = 0
            mask[0, 0, :, max(0, width - 16 * b0):] = 0
            frozen = np.ones(yt.shape, bool)
            frozen[core] = False
            mom, vel = np.zeros_like(yt), np.zeros_like(yt)
            b1_, b2_ = 0.9, 0.999
            for t in range(steps):
                if check is not None:
                    check()
                soft, dsoft = _soft_round(yt - mt, schedule.temperature(t, steps), rng)
                _, _, gb, gs = graph((mt + soft)[None], mt[None], st[None], ig, tgt[None], mask)
                g = (rate * gb[0] + dist * gs[0]) * dsoft
                g[frozen] = 0
                mom = b1_ * mom + (1 - b1_) * g
                vel = b2_ * vel + (1 - b2_) * g * g
                mh, vh = mom / (1 - b1_ ** (t + 1)), vel / (1 - b2_ ** (t + 1))
                yt -= np.float32(schedule.step_size(t, steps)) * mh / (np.sqrt(vh) + np.float32(1e-8))
            out[:, r0:r1, c0:c1] = yt[core]
    return out
