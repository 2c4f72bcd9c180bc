"""Image quality metrics in numpy: PSNR, SSIM and MS-SSIM on 8-bit images (data range 255).

MS-SSIM follows Wang et al. 2003 (Gaussian window 11, sigma 1.5, five scales with the standard
weights), computed on each colour channel and averaged, as CompressAI and pytorch-msssim do.
Images too small for five scales use as many scales as fit, with the weights renormalised.
"""

from __future__ import annotations

import math

import numpy as np

_WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
_WIN = 11
_SIGMA = 1.5


def _as3d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a[:, :, None] if a.ndim == 2 else a


def mse(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _as3d(a).astype(np.float64), _as3d(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.mean((a - b) ** 2))


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    m = mse(a, b)
    return float("inf") if m == 0 else 10 * math.log10(peak * peak / m)


def _kernel() -> np.ndarray:
    x = np.arange(_WIN) - _WIN // 2
    k = np.exp(-(x**2) / (2 * _SIGMA**2))
    return k / k.sum()


def _filter(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Valid separable convolution over the first two axes of (H, W, C)."""
    w = np.lib.stride_tricks.sliding_window_view(x, len(k), axis=0)
    x = w @ k
    w = np.lib.stride_tricks.sliding_window_view(x, len(k), axis=1)
    return w @ k


STRIP = 256      # output rows per filtering block: bounds memory on very large images


def _ssim_sums(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    """Sums of the SSIM and contrast-structure maps of two 2-D float32 planes, and their count.

    Computed in strips of rows (each with the window's margin), so memory stays bounded."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    k = _kernel().astype(np.float32)
    h = a.shape[0] - _WIN + 1
    s_sum = cs_sum = 0.0
    for r0 in range(0, h, STRIP):
        r1 = min(h, r0 + STRIP)
        # centred moments (variances are shift-invariant), filtered in one float32 pass
        a0 = a[r0:r1 + _WIN - 1] - np.float32(128)
        b0 = b[r0:r1 + _WIN - 1] - np.float32(128)
        f = _filter(np.stack([a0, b0, a0 * a0, b0 * b0, a0 * b0], axis=2), k).astype(np.float64)
        ma, mb = f[..., 0], f[..., 1]
        saa = f[..., 2] - ma**2
        sbb = f[..., 3] - mb**2
        sab = f[..., 4] - ma * mb
        mu_a, mu_b = ma + 128.0, mb + 128.0
        cs = (2 * sab + c2) / (saa + sbb + c2)
        lum = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
        s_sum += float((lum * cs).sum())
        cs_sum += float(cs.sum())
    return s_sum, cs_sum, h * (a.shape[1] - _WIN + 1)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _as3d(a), _as3d(b)
    if min(a.shape[:2]) < _WIN:
        return 1.0 if np.array_equal(a, b) else float(1 - mse(a, b) / (255.0**2))
    vals = []
    for c in range(a.shape[2]):
        s, _, n = _ssim_sums(a[:, :, c].astype(np.float32), b[:, :, c].astype(np.float32))
        vals.append(s / n)
    return float(np.mean(vals))


def _down2(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    x = x[:h, :w]
    return 0.25 * (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2])


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over channels of MS-SSIM; one channel and one strip of rows at a time (bounded memory)."""
    a, b = _as3d(a), _as3d(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    side = min(a.shape[:2])
    if side < _WIN:
        return ssim(a, b)
    levels = 1
    while levels < 5 and side // (2**levels) >= _WIN:
        levels += 1
    weights = _WEIGHTS[:levels] / _WEIGHTS[:levels].sum()
    per_channel = []
    for c in range(a.shape[2]):
        x, y = a[:, :, c].astype(np.float32), b[:, :, c].astype(np.float32)
        value = 1.0
        for i in range(levels):
            s, cs, n = _ssim_sums(x, y)
            value *= max(s / n if i == levels - 1 else cs / n, 0.0) ** weights[i]
            if i < levels - 1:
                x, y = _down2(x), _down2(y)
        per_channel.append(value)
    return float(np.mean(per_channel))
