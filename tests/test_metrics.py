"""PSNR, SSIM and MS-SSIM against independent implementations and basic properties."""

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from aecompress.metrics import ms_ssim, psnr, ssim

from .conftest import smooth_image


@pytest.fixture(scope="module")
def pair():
    a = smooth_image(200, 260, seed=5)
    rng = np.random.default_rng(0)
    b = np.clip(a.astype(int) + rng.normal(0, 6, a.shape), 0, 255).astype(np.uint8)
    return a, b


def test_psnr_matches_skimage(pair):
    a, b = pair
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-9)
    assert psnr(a, a) == float("inf")


def test_ssim_matches_skimage_gaussian_ssim(pair):
    a, b = pair
    ref = structural_similarity(a, b, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, data_range=255)
    assert ssim(a, b) == pytest.approx(ref, abs=1e-6)


def test_ms_ssim_properties(pair):
    a, b = pair
    assert ms_ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    rng = np.random.default_rng(1)
    worse = np.clip(a.astype(int) + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    assert 0 < ms_ssim(a, worse) < ms_ssim(a, b) < 1
    # small images use fewer scales instead of failing
    assert 0 < ms_ssim(a[:40, :40], b[:40, :40]) < 1


def test_ms_ssim_can_be_cancelled(pair):
    a, b = pair
    calls = []
    assert ms_ssim(a, b, check=lambda: calls.append(1)) == ms_ssim(a, b)
    assert len(calls) >= a.shape[2]                       # at least once per channel

    def cancel():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ms_ssim(a, b, check=cancel)
