"""Denoise pixel arrays with a denoiser model package: tiled inference and noise-level estimation.

The shipped denoiser is blind (it was trained on noise from none to heavy and finds the level itself)
and takes colour input. Greyscale images are replicated to three channels (a view, not a copy), run,
and the three outputs averaged back to one. Alpha channels pass through untouched; 16-bit images are
denoised at 16-bit precision.

After the network, the share of the removed residual that is kept follows the noise level estimated
from the image (`residual_gain`, a curve in the manifest: a blind network removes a little more than
the noise at light noise), and the removed residual is limited to 1.25 times that level
(`limit_residual`): a safety net against a blind network that over-smooths fine texture on clean
photos (the shipped one does not: docs/denoise.md).

Memory: the image is held as integers (input, one padded copy, output), and the float work happens
per tile. With the default tile of 512 pixels plus the receptive-field overlap, the network's working
set is about 150 MB whatever the image size, so a 24-megapixel RGB photo needs roughly
3 x 72 MB + 150 MB (plus the decoded image the caller holds).
"""

from __future__ import annotations

import math
import time

import numpy as np

from .errors import AecError, ModelError
from .package import ModelPackage
from .tiling import run_tiled

DEFAULT_TILE = 512
ENSEMBLES = (1, 2, 4, 8)   # geometric self-ensemble sizes: the first N of _VIEWS
# The removed residual's RMS may reach this many times the estimated noise sigma. Not 1.0: at high
# noise the estimate reads low (clipping at 0 and 255 removes part of the noise), and a limit of 1.0
# cost 0.11 dB at sigma 50 and 0.01 dB at sigma 25 on the 28 full validation photos (0.03 dB at
# sigma 50 on the benchmark's crops); clean photos never reach 1.0 with the shipped model.
RESIDUAL_LIMIT = 1.25
_ROWS = 256                # rows per chunk in whole-image passes (bounded memory)


def _median(v: np.ndarray) -> float:
    """np.median without its NaN check, which imports numpy.ma (~25 ms of a CLI start)."""
    n = v.size
    part = np.partition(v, [(n - 1) // 2, n // 2])
    return 0.5 * (float(part[(n - 1) // 2]) + float(part[n // 2]))


def estimate_sigma(pixels: np.ndarray) -> float:
    """Gaussian noise level on the 0-255 scale (Donoho's wavelet MAD on the finest diagonal Haar band).

    pixels: (H, W) or (H, W, C) uint8/uint16 or float on the 0-255 scale; alpha (2 or 4 channels) is ignored.
    The median of |HH| / 0.6745, averaged over colour channels. Texture raises the estimate a little
    on clean images; clipping at 0 and 255 lowers it a little on very noisy dark or bright images.
    """
    a = np.asarray(pixels)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] in (2, 4):
        a = a[:, :, : a.shape[2] - 1]
    scale = 255.0 / 65535.0 if a.dtype == np.uint16 else 1.0
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    if h < 2 or w < 2:
        return 0.0
    # bound the work on huge images: sample a centred window of at most about 2048 x 2048
    if h * w > 2048 * 2048:
        ch, cw = min(h, 2048), min(w, 2048)
        y0, x0 = (h - ch) // 4 * 2, (w - cw) // 4 * 2
        a, h, w = a[y0:y0 + ch, x0:x0 + cw], ch, cw
    sig = []
    for c in range(a.shape[2]):
        x = a[:h, :w, c].astype(np.float32)
        hh = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) * 0.5
        sig.append(_median(np.abs(hh).ravel()) / 0.6745)
    return float(np.mean(sig)) * scale


def residual_gain(pkg: ModelPackage, sigma_hat: float) -> float:
    """The share of its residual a blind denoiser should remove at an estimated noise level.

    A blind network trained on noise from none to heavy removes, at light noise, somewhat more than
    the noise: it cannot tell weak noise from fine texture, and learns the average behaviour. A
    manifest's `residual_gain` ({"sigma": [...], "gain": [...]}, fitted on training photos by
    `python -m aecompress.train.residual_gain`) gives the least-squares share at each estimated
    level, interpolated linearly and held at the ends; 1.0 without one."""
    g = pkg.manifest.get("residual_gain")
    if not g:
        return 1.0
    return float(np.interp(sigma_hat, g["sigma"], g["gain"]))


def limit_residual(noisy: np.ndarray, out: np.ndarray, sigma_hat: float, peak: float,
                   k: float = RESIDUAL_LIMIT) -> float:
    """Scale the removed residual (noisy - out) in place so its RMS is at most k x the estimated noise.

    A denoiser that removes more energy than the noise has is removing picture detail (on clean or
    lightly noisy textured photos a blind model tends to); this bounds the damage. Returns the
    factor applied (1.0: unchanged). noisy, out: (H, W, C) on the same 0-peak scale.
    """
    h = noisy.shape[0]
    total, n = 0.0, 0
    for y in range(0, h, _ROWS):
        r = noisy[y:y + _ROWS].astype(np.float32) - out[y:y + _ROWS].astype(np.float32)
        total += float(np.square(r, dtype=np.float32).sum(dtype=np.float64))
        n += r.size
    rms = math.sqrt(total / max(n, 1)) * 255.0 / peak
    f = min(1.0, k * max(sigma_hat, 0.5) / rms) if rms > 0 else 1.0
    if f < 1.0:
        for y in range(0, h, _ROWS):
            a = noisy[y:y + _ROWS].astype(np.float32)
            v = a + np.float32(f) * (out[y:y + _ROWS].astype(np.float32) - a)
            out[y:y + _ROWS] = v if out.dtype == np.float32 else np.clip(np.round(v), 0, peak)
    return round(f, 4)


# (transpose H and W, flip H, flip W): the first four keep a tile's shape
_VIEWS = [(False, False, False), (False, False, True), (False, True, False), (False, True, True),
          (True, False, False), (True, False, True), (True, True, False), (True, True, True)]


def _view(t: np.ndarray, v: tuple[bool, bool, bool]) -> np.ndarray:
    """One flip/transpose of (N, C, H, W) tiles."""
    transpose, flip_h, flip_w = v
    if transpose:
        t = t.swapaxes(2, 3)
    return t[:, :, ::-1 if flip_h else 1, ::-1 if flip_w else 1]


def _unview(t: np.ndarray, v: tuple[bool, bool, bool]) -> np.ndarray:
    transpose, flip_h, flip_w = v
    t = t[:, :, ::-1 if flip_h else 1, ::-1 if flip_w else 1]
    return t.swapaxes(2, 3) if transpose else t


def _overlap(pkg: ModelPackage, align: int) -> int:
    radius = int(pkg.manifest.get("receptive_radius", 64))
    return int(math.ceil((radius + align) / align) * align)


def denoise_array(pixels: np.ndarray, pkg: ModelPackage, sigma: float | str | None = None,
                  tile: int | None = DEFAULT_TILE, float_output: bool = False,
                  cancel=None, guard: bool = True, ensemble: int = 1) -> tuple[np.ndarray, dict]:
    """Denoise (H, W) or (H, W, C) pixels (C = 1, 2, 3 or 4; uint8 or uint16) with a denoiser package.

    sigma: None (blind), "auto" (estimate and report the level; the blind model still decides) or a
    number (a known level on the 0-255 scale; used only by models that take one). tile: core tile
    size in pixels (None or 0: the whole image at once). Returns (pixels of the same shape and dtype,
    or float32 on the same scale when float_output, info) with info = {sigma_estimate, sigma,
    seconds, provider, tile, blind, residual_scale}. guard: limit the removed residual to the estimated
    noise level (see limit_residual), which keeps clean and lightly noisy images intact. ensemble:
    1, 2, 4 or 8 runs of the model per tile on flipped and transposed copies, averaged (a geometric
    self-ensemble: N times the work for a cleaner result; bench/denoise.py runs x2 and x8).
    """
    t0 = time.perf_counter()
    if ensemble not in ENSEMBLES:
        raise AecError(f"--ensemble must be one of {', '.join(map(str, ENSEMBLES))}, not {ensemble}")
    if pkg.kind != "denoiser":
        raise ModelError(f"model '{pkg.name}' is a {pkg.kind}, not a denoiser")
    a = np.asarray(pixels)
    squeeze = a.ndim == 2
    if squeeze:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise AecError(f"cannot denoise an array of shape {np.shape(pixels)}")
    if a.dtype not in (np.uint8, np.uint16):
        raise AecError(f"cannot denoise {a.dtype} pixels (expected uint8 or uint16)")
    peak = 65535.0 if a.dtype == np.uint16 else 255.0
    has_alpha = a.shape[2] in (2, 4)
    colour = a[:, :, : a.shape[2] - 1] if has_alpha else a
    grey = colour.shape[2] == 1

    info: dict = {"sigma": None, "sigma_estimate": None, "blind": bool(pkg.manifest.get("blind", True)),
                  "residual_scale": None}
    if isinstance(sigma, str):
        if sigma != "auto":
            try:
                sigma = float(sigma)
            except ValueError:
                raise AecError(f"--sigma must be 'auto' or a number, not '{sigma}'") from None
    est = estimate_sigma(colour) if sigma == "auto" or guard else None
    if sigma == "auto":
        info["sigma_estimate"] = round(est, 2)
        info["sigma"] = info["sigma_estimate"]
    elif sigma is not None:
        if not (0 <= float(sigma) <= 255):
            raise AecError(f"--sigma must be between 0 and 255, not {sigma}")
        info["sigma"] = float(sigma)

    gain = residual_gain(pkg, est) if guard else 1.0

    align = int(pkg.manifest.get("align", 8))
    h, w = colour.shape[:2]
    ph, pw = -h % align, -w % align
    if ph or pw:
        mode = "reflect" if h > ph and w > pw else "edge"
        colour = np.pad(colour, ((0, ph), (0, pw), (0, 0)), mode=mode)
    x = colour.transpose(2, 0, 1)[None]                      # (1, C, H, W) view
    if grey:
        x = np.broadcast_to(x, (1, 3) + x.shape[2:])
    sess = pkg.session("denoise")
    out_dtype = np.float32 if float_output else a.dtype

    def fn(t: np.ndarray) -> np.ndarray:
        if cancel is not None and cancel():
            raise KeyboardInterrupt
        t = t.astype(np.float32) * np.float32(1 / peak)
        y = sess(t)
        for v in _VIEWS[1:ensemble]:
            y += _unview(sess(_view(t, v)), v)
        if ensemble > 1:
            y *= np.float32(1 / ensemble)
        if grey:
            y = y.mean(axis=1, keepdims=True)
        if gain < 1.0:                 # remove that share of the residual, before rounding
            t = t[:, :1] if grey else t
            y = t + np.float32(gain) * (y - t)
        y = np.clip(y, 0, 1) * np.float32(peak)
        return y if float_output else np.round(y).astype(out_dtype)

    big = max(h + ph, w + pw)
    tile_size = int(tile) if tile else big
    out = run_tiled(fn, x, tile_size, _overlap(pkg, align), align=align, out_channels=1 if grey else 3)
    y = out[0].transpose(1, 2, 0)[:h, :w]
    if guard:
        f = limit_residual(colour[:h, :w], y, est, peak)
        info["residual_scale"] = round(gain * f, 4)
    if has_alpha:
        y = np.concatenate([y, a[:, :, -1:].astype(out_dtype)], axis=2)
    y = np.ascontiguousarray(y)
    if squeeze:
        y = y[:, :, 0]
    info.update(seconds=round(time.perf_counter() - t0, 4), provider=sess.provider,
                tile=tile_size if tile_size < big else None, ensemble=ensemble)
    return y, info
