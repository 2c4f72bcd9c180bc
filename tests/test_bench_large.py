"""bench/large.py's seam check at the scales whose tiles are a fraction of a pixel wide in the output."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _large():
    spec = importlib.util.spec_from_file_location("bench_large", ROOT / "bench" / "large.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_seam_score_finds_seams_at_fractional_tile_borders():
    """At 5/3 the coded image's 1024-pixel tiles are 614.4 pixels of the output: a seam at every
    tile border (rounded as the downsampling puts it) scores high across 10,000 pixels, and a
    smooth ramp scores 1."""
    large = _large()
    n, tile, grid = 6000, 1024 * 3 / 5, 16 * 3 / 5
    img = np.zeros((4, n, 3), np.float32)
    for k in range(1, int(n / tile) + 1):
        img[:, int(round(k * tile)):, :] += 40.0                 # a step just after each border
    img += np.arange(n, dtype=np.float32)[None, :, None] * 0.01    # a gentle ramp: a gradient everywhere
    assert large.seam_score(img, tile, grid) > 100
    ramp = np.broadcast_to(np.arange(n, dtype=np.float32)[None, :, None] * 0.01, (4, n, 3))
    assert abs(large.seam_score(ramp, tile, grid) - 1.0) < 1e-3
    assert list(large._borders(768, 2000)) == [767, 1535]       # integer steps as before


def test_importing_the_benchmark_leaves_pillows_limit_alone():
    """bench/large.py set Image.MAX_IMAGE_PIXELS = None at import, so this file's import turned Pillow's
    limit off for the rest of the test process (test_imageio's check of Pillow's own refusal failed)."""
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    _large()
    assert Image.MAX_IMAGE_PIXELS == before
