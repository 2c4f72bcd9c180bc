"""The hyper-synthesis in exact integer arithmetic: bit-identical entropy parameters everywhere.

The decoder must rebuild exactly the probability tables the encoder used. A float network gives
slightly different results on CUDA, on another CPU or with another thread count, and one scale
index that differs derails the whole range decoder. So the hyper-synthesis (z_hat -> mean and
scale of each latent) runs here in integers: weights are integers (at most 12 bits), activations
are integers (at most 16 bits), and every convolution is a float64 matrix product whose
partial sums stay below 2^53, hence exact in any summation order and with or without FMA. Between
layers, activations are requantised by one IEEE multiply and a floor, which is also exact and
identical on every machine. The weights, biases and multipliers are fixed by the exporter
(aecompress.train.export) and shipped in the model package's tables.

Graph: a stack of 'same' convolutions (k = 1 or 3), each optionally followed by a 2x pixel shuffle
and a ReLU; the last layer's output (2M channels) is split into means and log-scales.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACT_MAX = (1 << 16) - 1
Z_LIMIT = 1 << 15
CHUNK = 1 << 22      # elements of the im2col buffer per block of rows (32 MB as float64)


@dataclass
class IntLayer:
    weight: np.ndarray      # (O, C, k, k) integers held in float64
    bias: np.ndarray        # (O,) integers held in float64
    mult: np.ndarray        # (O,) float64 requantisation (or output) multipliers
    shuffle: bool
    relu: bool


def conv_exact(a: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """'same' stride-1 convolution of integer-valued float64 arrays; a: (C, H, W) -> (O, H, W)."""
    o, c, k, _ = w.shape
    _, h, wd = a.shape
    wm = w.reshape(o, c * k * k).T
    out = np.empty((o, h, wd), dtype=np.float64)
    if k == 1:             # straight into out: no (H*W, O) product and transposed copy beside it
        np.matmul(wm.T, a.reshape(c, h * wd), out=out.reshape(o, h * wd))
    else:
        p = k // 2
        rows = max(1, CHUNK // max(1, wd * c * k * k))
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            # each block of rows padded on its own: no padded copy of the whole input
            lo, hi = max(0, r0 - p), min(h, r1 + p)
            ap = np.pad(a[:, lo:hi], ((0, 0), (p - (r0 - lo), p - (hi - r1)), (p, p)))
            win = np.lib.stride_tricks.sliding_window_view(ap, (k, k), axis=(1, 2))
            cols = win.transpose(1, 2, 0, 3, 4).reshape((r1 - r0) * wd, c * k * k)
            out[:, r0:r1] = (cols @ wm).T.reshape(o, r1 - r0, wd)
    out += b[:, None, None]
    return out


def pixel_shuffle(a: np.ndarray, r: int = 2) -> np.ndarray:
    c, h, w = a.shape
    a = a.reshape(c // (r * r), r, r, h, w).transpose(0, 3, 1, 4, 2)
    return a.reshape(c // (r * r), h * r, w * r)


class IntegerHyperSynthesis:
    def __init__(self, layers: list[IntLayer]):
        self.layers = layers

    @classmethod
    def from_tables(cls, t: dict[str, np.ndarray]) -> "IntegerHyperSynthesis":
        n = int(t["hs_layers"])
        layers = [IntLayer(t[f"hs_w{i}"].astype(np.float64), t[f"hs_b{i}"].astype(np.float64),
                           t[f"hs_mult{i}"].astype(np.float64), bool(t[f"hs_shuffle{i}"]), bool(t[f"hs_relu{i}"]))
                  for i in range(n)]
        return cls(layers)

    def __call__(self, z_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """z_hat: (Nz, h, w) integers -> (mean, log_scale), each (M, 4h, 4w) float64."""
        a = np.clip(np.asarray(z_hat, dtype=np.float64), -Z_LIMIT, Z_LIMIT)
        last = len(self.layers) - 1
        for i, L in enumerate(self.layers):
            acc = conv_exact(a, L.weight, L.bias)
            if i == last:
                acc *= L.mult[:, None, None]        # in place: on 24 megapixels this array is 290 MB
                m = acc.shape[0] // 2
                return acc[:m], acc[m:]
            # requantise per conv output channel (one IEEE multiply and a floor: exact everywhere),
            # then shuffle (a permutation)
            a = np.floor(acc * L.mult[:, None, None] + 0.5)
            a = np.clip(a, 0 if L.relu else -ACT_MAX, ACT_MAX)
            if L.shuffle:
                a = pixel_shuffle(a)
        raise ValueError("empty hyper-synthesis")
