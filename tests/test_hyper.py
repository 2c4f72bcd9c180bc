"""The integer hyper-synthesis is exact: float64 BLAS gives the same integers as int64 arithmetic."""

import numpy as np

from aecompress.hyper import ACT_MAX, IntegerHyperSynthesis, IntLayer, conv_exact, pixel_shuffle


def _int_conv_reference(a, w, b):
    """Plain int64 convolution ('same' padding), no floating point at all."""
    o, c, k, _ = w.shape
    p = k // 2
    ap = np.pad(a.astype(np.int64), ((0, 0), (p, p), (p, p)))
    h, wd = a.shape[1:]
    out = np.zeros((o, h, wd), dtype=np.int64)
    for dy in range(k):
        for dx in range(k):
            out += np.einsum("oc,chw->ohw", w[:, :, dy, dx].astype(np.int64), ap[:, dy:dy + h, dx:dx + wd])
    return out + b.astype(np.int64)[:, None, None]


def test_conv_exact_matches_integer_reference_at_full_range():
    rng = np.random.default_rng(0)
    a = rng.integers(0, ACT_MAX + 1, size=(64, 9, 11)).astype(np.float64)
    w = rng.integers(-2047, 2048, size=(32, 64, 3, 3)).astype(np.float64)
    b = rng.integers(-2**30, 2**30, size=32).astype(np.float64)
    got = conv_exact(a, w, b)
    ref = _int_conv_reference(a, w, b)
    assert np.array_equal(got.astype(np.int64), ref)
    # values far beyond float32's 24-bit mantissa: a float32 or lossy sum would have rounded them
    assert np.abs(ref).max() > 2**30


def test_chunked_rows_equal_whole(monkeypatch):
    import aecompress.hyper as hyper

    rng = np.random.default_rng(1)
    a = rng.integers(-50, 50, size=(8, 23, 17)).astype(np.float64)
    w = rng.integers(-2047, 2048, size=(6, 8, 3, 3)).astype(np.float64)
    b = np.zeros(6)
    whole = conv_exact(a, w, b)
    monkeypatch.setattr(hyper, "CHUNK", 8 * 9 * 17 * 2)    # two rows per block
    assert np.array_equal(conv_exact(a, w, b), whole)


def test_pixel_shuffle_matches_torch_layout():
    a = np.arange(4 * 2 * 3, dtype=np.float64).reshape(4, 2, 3)
    s = pixel_shuffle(a)
    assert s.shape == (1, 4, 6)
    # torch.nn.functional.pixel_shuffle: out[0, 2i+r, 2j+q] = in[2r+q, i, j]
    for r in range(2):
        for q in range(2):
            assert np.array_equal(s[0, r::2, q::2], a[2 * r + q])


def test_network_output_depends_only_on_integers():
    rng = np.random.default_rng(2)
    layers = [IntLayer(rng.integers(-2047, 2048, (8, 4, 3, 3)).astype(float), np.zeros(8), np.full(8, 1e-3), False, True),
              IntLayer(rng.integers(-2047, 2048, (6, 8, 1, 1)).astype(float), np.zeros(6), np.full(6, 1e-4), False, False)]
    net = IntegerHyperSynthesis(layers)
    z = rng.integers(-5, 6, size=(4, 5, 5))
    m1, s1 = net(z)
    m2, s2 = net(z.astype(np.float32))          # same integers in another dtype
    assert np.array_equal(m1, m2) and np.array_equal(s1, s2)
    assert m1.shape == (3, 5, 5)
