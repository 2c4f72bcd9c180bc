"""Image quality metrics in numpy: PSNR, SSIM and MS-SSIM on 8-bit images (data range 255).

MS-SSIM follows Wang et al. 2003 (Gaussian window 11, sigma 1.5, five scales with the standard
weights), computed on each colour channel and averaged, as CompressAI and pytorch-msssim do.
Images too small for five scales use as many scales as fit, with the weights renormalised.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

_WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
_WIN = 11
_SIGMA = 1.5
STRIP = 256      # rows per block: bounds memory on very large images


def _as3d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a[:, :, None] if a.ndim == 2 else a


def mse(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _as3d(a), _as3d(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    total = 0.0
    for r in range(0, a.shape[0], STRIP):          # strips of rows: no full-size float copies
        d = a[r:r + STRIP].astype(np.float64) - b[r:r + STRIP]
        total += float(np.einsum("ijk,ijk->", d, d))
    return total / max(a.size, 1)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    m = mse(a, b)
    return float("inf") if m == 0 else 10 * math.log10(peak * peak / m)


def _kernel() -> np.ndarray:
    x = np.arange(_WIN) - _WIN // 2
    k = np.exp(-(x**2) / (2 * _SIGMA**2))
    return k / k.sum()


_KERNEL32 = _kernel().astype(np.float32)


def _filter(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Valid separable convolution over the first two axes of (H, W, C)."""
    return _filter_axis(_filter_axis(x, k, 0), k, 1)


def _filter_axis(x: np.ndarray, k: np.ndarray, axis: int) -> np.ndarray:
    """Valid convolution along one axis with a symmetric kernel: the two taps that share a weight
    are added first, so 6 multiplies instead of 11."""
    n, c = len(k), len(k) // 2
    m = x.shape[axis] - n + 1

    def part(i: int) -> np.ndarray:
        return x[(slice(None),) * axis + (slice(i, i + m),)]

    out = part(c) * k[c]
    tmp = np.empty_like(out)
    for i in range(c):
        np.add(part(i), part(n - 1 - i), out=tmp)
        tmp *= k[i]
        out += tmp
    return out


def _strip_rows(width: int) -> int:
    """Rows per strip so that a strip's five float32 maps (with the window's margin) stay near 1 MB,
    inside a core's L2 cache: the filters make some thirty passes over them."""
    return int(np.clip((1 << 20) // (20 * max(width, 1)) - (_WIN - 1), 16, STRIP))


def _strips(a: np.ndarray) -> list[tuple[int, int]]:
    """The row ranges [r0, r1) of the valid SSIM map of a 2-D plane, in strips."""
    h, step = a.shape[0] - _WIN + 1, _strip_rows(a.shape[1])
    return [(r0, min(h, r0 + step)) for r0 in range(0, h, step)]


def _ssim_strip(a: np.ndarray, b: np.ndarray, r0: int, r1: int) -> tuple[float, float]:
    """Sums over rows [r0, r1) of the SSIM and contrast-structure maps of two 2-D planes (any real
    dtype). The maps are float32 on centred values (variances are shift-invariant); the sums are
    float64."""
    c1, c2 = np.float32((0.01 * 255) ** 2), np.float32((0.03 * 255) ** 2)
    k = _KERNEL32
    a0 = a[r0:r1 + _WIN - 1].astype(np.float32) - np.float32(128)
    b0 = b[r0:r1 + _WIN - 1].astype(np.float32) - np.float32(128)
    f = _filter(np.stack([a0, b0, a0 * a0, b0 * b0, a0 * b0], axis=2), k)
    ma, mb = f[..., 0], f[..., 1]
    ma2, mb2, mab = ma * ma, mb * mb, ma * mb
    cs = (2 * (f[..., 4] - mab) + c2) / ((f[..., 2] - ma2) + (f[..., 3] - mb2) + c2)
    # luminance on the uncentred means mu = m + 128: 2 mu_a mu_b = 2 mab + 256 (ma + mb) + 2 * 128^2
    t = np.float32(256) * (ma + mb) + np.float32(2 * 128 * 128)
    lum = (2 * mab + t + c1) / (ma2 + mb2 + t + c1)
    cs_sum = float(cs.sum(dtype=np.float64))
    cs *= lum
    return float(cs.sum(dtype=np.float64)), cs_sum


def _ssim_sums(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    """Sums of the SSIM and contrast-structure maps of two 2-D planes, and their count, strip by
    strip so that memory stays bounded."""
    parts = [_ssim_strip(a, b, r0, r1) for r0, r1 in _strips(a)]
    n = (a.shape[0] - _WIN + 1) * (a.shape[1] - _WIN + 1)
    return sum(p[0] for p in parts), sum(p[1] for p in parts), n


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _as3d(a), _as3d(b)
    if min(a.shape[:2]) < _WIN:
        return 1.0 if np.array_equal(a, b) else float(1 - mse(a, b) / (255.0**2))
    vals = []
    for c in range(a.shape[2]):
        s, _, n = _ssim_sums(a[:, :, c], b[:, :, c])
        vals.append(s / n)
    return float(np.mean(vals))


def _down2(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    x = x[:h, :w]
    f = np.float32
    return f(0.25) * (x[0::2, 0::2].astype(f) + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2])


def ms_ssim(a: np.ndarray, b: np.ndarray, check: Callable[[], None] | None = None) -> float:
    """Mean over channels of MS-SSIM, in strips of rows (bounded memory, cache-sized).

    Channels go one at a time: a channel's pyramid is built, then the strips of all its scales are
    shared between two threads (numpy releases the GIL in its array loops), so both cores stay busy
    and memory holds one channel's pyramid. check, when given, is called before every channel and
    every strip and may raise to cancel."""
    a, b = _as3d(a), _as3d(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    side = min(a.shape[:2])
    if side < _WIN:
        return ssim(a, b)
    levels = 1
    while levels < 5 and side // (2**levels) >= _WIN:
        levels += 1
    # the standard weights as published (they sum to 1.0001); renormalised only when scales are missing
    weights = _WEIGHTS if levels == 5 else _WEIGHTS[:levels] / _WEIGHTS[:levels].sum()
    workers = min(2, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(workers) if workers > 1 else None

    def strip(job: tuple[int, np.ndarray, np.ndarray, int, int]) -> tuple[float, float]:
        if check is not None:
            check()
        return _ssim_strip(*job[1:])

    try:
        values = []
        for c in range(a.shape[2]):
            if check is not None:
                check()
            x, y = a[:, :, c], b[:, :, c]         # level 0 stays 8-bit: converted strip by strip
            pyramid = [(x, y)]
            for _ in range(levels - 1):
                x, y = _down2(x), _down2(y)
                pyramid.append((x, y))
            jobs = [(i, x, y, r0, r1) for i, (x, y) in enumerate(pyramid) for r0, r1 in _strips(x)]
            sums = np.zeros((levels, 2))               # per scale: SSIM sum, contrast-structure sum
            for (i, *_), part in zip(jobs, pool.map(strip, jobs) if pool else map(strip, jobs)):
                sums[i] += part
            value = 1.0
            for i, (x, _) in enumerate(pyramid):
                n = (x.shape[0] - _WIN + 1) * (x.shape[1] - _WIN + 1)
                value *= max(sums[i, 0 if i == levels - 1 else 1] / n, 0.0) ** weights[i]
            values.append(value)
        return float(np.mean(values))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


MIN_BD_OVERLAP = 1.0     # dB of quality two curves must share for a BD-rate to mean anything


def bd_rate(r1: np.ndarray, p1: np.ndarray, r2: np.ndarray, p2: np.ndarray, method: str = "cubic",
            min_overlap: float = MIN_BD_OVERLAP) -> float | None:
    """Bjontegaard delta rate of curve 2 against curve 1, in percent (negative: 2 needs fewer bits).

    log-rate as a function of quality, averaged over the quality interval both curves cover.
    method "cubic": one cubic polynomial fitted to each curve (Bjontegaard's VCEG-M33);
    "pchip": a monotone piecewise-cubic interpolation through the points (the JVET/CompressAI
    variant, which follows a curve that saturates more faithfully than one cubic; needs SciPy). Points with
    non-finite quality (an exact decode's infinite PSNR) or no rate are left out. None when a
    curve has too few points or the curves share less than `min_overlap` of quality."""
    def clean(r, p):
        r, p = np.asarray(r, np.float64), np.asarray(p, np.float64)
        keep = np.isfinite(p) & np.isfinite(r) & (r > 0)
        return np.log(r[keep]), p[keep]

    lr1, p1 = clean(r1, p1)
    lr2, p2 = clean(r2, p2)
    if len(p1) < 4 or len(p2) < 4:
        return None
    lo, hi = max(p1.min(), p2.min()), min(p1.max(), p2.max())
    if hi - lo < min_overlap:
        return None
    if method == "cubic":
        def mean(p, lr):
            f = np.polyint(np.polyfit(p, lr, 3))
            return (np.polyval(f, hi) - np.polyval(f, lo)) / (hi - lo)
    elif method == "pchip":
        from scipy.interpolate import PchipInterpolator     # benchmarks only (the bench and test extras)

        def mean(p, lr):
            u, first = np.unique(p, return_index=True)          # sorted; equal qualities: keep one point
            if len(u) < 3:
                return np.nan
            return PchipInterpolator(u, lr[first]).integrate(lo, hi) / (hi - lo)
    else:
        raise ValueError(f"unknown BD-rate method {method!r}")
    d = mean(p2, lr2) - mean(p1, lr1)
    return None if not np.isfinite(d) else float((np.exp(d) - 1) * 100)
