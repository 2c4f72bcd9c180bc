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


def _reference_ms_ssim(a, b):
    """MS-SSIM written out directly (scipy filters on whole float64 planes, as pytorch-msssim does:
    valid Gaussian window 11/1.5, 2x2 average pooling, the standard weights), mean over channels."""
    from scipy.ndimage import correlate1d

    x = np.arange(11) - 5
    k = np.exp(-(x**2) / (2 * 1.5**2))
    k /= k.sum()

    def blur(p):
        return correlate1d(correlate1d(p, k, axis=0), k, axis=1)[5:-5, 5:-5]

    weights = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    out = []
    for c in range(a.shape[2]):
        p, q, value = a[:, :, c].astype(np.float64), b[:, :, c].astype(np.float64), 1.0
        for i, w in enumerate(weights):
            mp, mq = blur(p), blur(q)
            vp, vq, cov = blur(p * p) - mp**2, blur(q * q) - mq**2, blur(p * q) - mp * mq
            cs = (2 * cov + c2) / (vp + vq + c2)
            if i < 4:
                value *= cs.mean() ** w
                h, wd = p.shape[0] // 2 * 2, p.shape[1] // 2 * 2
                p = (p[0:h:2, 0:wd:2] + p[1:h:2, 0:wd:2] + p[0:h:2, 1:wd:2] + p[1:h:2, 1:wd:2]) / 4
                q = (q[0:h:2, 0:wd:2] + q[1:h:2, 0:wd:2] + q[0:h:2, 1:wd:2] + q[1:h:2, 1:wd:2]) / 4
            else:
                value *= (((2 * mp * mq + c1) / (mp**2 + mq**2 + c1)) * cs).mean() ** w
        out.append(value)
    return float(np.mean(out))


@pytest.mark.parametrize("shape", [(200, 260), (345, 1100)])
def test_ms_ssim_matches_a_direct_implementation(shape):
    """Also on an image wide enough for several strips per scale (the strips are sized to the cache
    from the width), so the strip sums and the threads that share them are checked."""
    a = smooth_image(*shape, seed=7)
    rng = np.random.default_rng(3)
    b = np.clip(a.astype(int) + rng.normal(0, 9, a.shape), 0, 255).astype(np.uint8)
    assert ms_ssim(a, b) == pytest.approx(_reference_ms_ssim(a, b), abs=2e-6)


def test_ms_ssim_can_be_cancelled(pair):
    a, b = pair
    calls = []
    assert ms_ssim(a, b, check=lambda: calls.append(1)) == ms_ssim(a, b)
    assert len(calls) >= a.shape[2]                       # at least once per channel

    def cancel():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ms_ssim(a, b, check=cancel)


@pytest.mark.parametrize("method", ["cubic", "pchip"])
def test_bd_rate_known_answers(method):
    from aecompress.metrics import bd_rate

    p = np.linspace(25, 35, 13)
    r = np.exp((p - 20) / 4) * (1 + 0.02 * np.sin(p))           # a saturating, slightly wavy curve
    assert bd_rate(r, p, 0.9 * r, p, method) == pytest.approx(-10.0, abs=1e-9)
    assert bd_rate(r, p, 1.2 * r, p, method) == pytest.approx(20.0, abs=1e-9)
    assert bd_rate(0.9 * r, p, r, p, method) == pytest.approx(100 / 0.9 - 100, abs=1e-9)
    # points in any order; an exact decode's infinite PSNR is left out, not a crash
    order = np.random.default_rng(1).permutation(13)
    assert bd_rate(r[order], p[order], 0.9 * r, p, method) == pytest.approx(-10.0, abs=1e-9)
    p_inf = np.r_[p, np.inf]
    assert bd_rate(np.r_[r, 99.0], p_inf, 0.9 * r, p, method) == pytest.approx(-10.0, abs=1e-9)
    # too few points, or curves that barely overlap, give no number rather than a wild one
    assert bd_rate(r, p, r[:3], p[:3], method) is None
    assert bd_rate(r, p, r, p + 9.5, method) is None
    assert bd_rate(r, p, r, p + 8.5, method) is not None


def test_bd_rate_pchip_follows_scipy():
    """The PCHIP BD-rate is the mean log-rate gap of SciPy's monotone interpolants over the shared
    interval, for curves given in any order, non-monotone ones included."""
    from scipy.interpolate import PchipInterpolator

    from aecompress.metrics import bd_rate

    rng = np.random.default_rng(0)
    for _ in range(100):
        p1, p2 = (np.unique(rng.uniform(20, 40, rng.integers(4, 14))) for _ in range(2))
        if len(p1) < 4 or len(p2) < 4 or min(p1.max(), p2.max()) - max(p1.min(), p2.min()) < 1:
            continue
        r1, r2 = (np.exp(np.cumsum(rng.uniform(-0.2, 1.0, len(p)))) for p in (p1, p2))
        lo, hi = max(p1.min(), p2.min()), min(p1.max(), p2.max())
        gap = (PchipInterpolator(p2, np.log(r2)).integrate(lo, hi)
               - PchipInterpolator(p1, np.log(r1)).integrate(lo, hi)) / (hi - lo)
        order = rng.permutation(len(p1))
        assert bd_rate(r1[order], p1[order], r2, p2, "pchip") == pytest.approx((np.exp(gap) - 1) * 100, abs=1e-9)
