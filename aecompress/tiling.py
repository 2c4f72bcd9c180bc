"""Run a fully convolutional graph over a large array in overlapping tiles, in bounded memory.

Each tile is extended by `overlap` input pixels on every side (clipped at the array's edges), the
graph runs on the extended tile, and only the tile's own core is kept. When the overlap covers the
graph's receptive field the result equals a whole-array run (up to float rounding): no seams.

`scale` is output size / input size (1/16 for an analysis transform, 16 for a synthesis, 1 for a
denoiser); tile origins are aligned to `align` input pixels so strided graphs see the same grid.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable

import numpy as np


def _starts(size: int, tile: int) -> list[int]:
    return list(range(0, size, tile)) or [0]


def run_tiled(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, tile: int, overlap: int,
              scale: float | Fraction = 1, align: int = 1, out_channels: int | None = None,
              out: np.ndarray | None = None, check: Callable[[], None] | None = None) -> np.ndarray:
    """x: (1, C, H, W). Returns fn applied to x as if in one piece: (1, C', H*scale, W*scale).

    check, if given, is called before every tile and may raise to cancel the work."""
    scale = Fraction(scale).limit_denominator(1024)
    _, _, h, w = x.shape
    tile = max(align, tile // align * align)
    overlap = -(-overlap // align) * align
    if h <= tile + 2 * overlap and w <= tile + 2 * overlap:
        if check:
            check()
        y = fn(x)
        if out is not None:
            out[...] = y
            return out
        return y
    oh, ow = int(h * scale), int(w * scale)
    for ty in _starts(h, tile):
        for tx in _starts(w, tile):
            if check:
                check()
            y0, y1 = max(0, ty - overlap), min(h, ty + tile + overlap)
            x0, x1 = max(0, tx - overlap), min(w, tx + tile + overlap)
            part = fn(np.ascontiguousarray(x[:, :, y0:y1, x0:x1]))
            if out is None:
                out = np.empty((1, out_channels or part.shape[1], oh, ow), dtype=part.dtype)
            cy0, cx0 = int((ty - y0) * scale), int((tx - x0) * scale)
            ch = int((min(ty + tile, h) - ty) * scale)
            cw = int((min(tx + tile, w) - tx) * scale)
            oy, ox = int(ty * scale), int(tx * scale)
            out[:, :, oy:oy + ch, ox:ox + cw] = part[:, :, cy0:cy0 + ch, cx0:cx0 + cw]
    return out
