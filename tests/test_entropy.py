"""Entropy coding with fixed integer tables: exact round trips, escapes, determinism."""

import numpy as np
import pytest

from aecompress.entropy import Decoder, Encoder, TableSet, quantize_pmf
from aecompress.errors import CorruptFileError


def _tables():
    x = np.arange(-6, 7)
    pmfs = [quantize_pmf(np.exp(-0.5 * (x / s) ** 2), 16) for s in (0.5, 1.5, 3.0)]
    return TableSet.from_pmfs(pmfs, [-6, -6, -6])


def test_quantized_pmf_is_valid():
    p = quantize_pmf(np.array([0.0, 1e-12, 0.5, 0.5, 0.0]), 12)
    assert p.sum() == 1 << 12 and p.min() >= 1 and len(p) == 6


def test_roundtrip_with_escapes_and_several_tables():
    rng = np.random.default_rng(0)
    t = _tables()
    idx = rng.integers(0, 3, size=(4, 9, 7))
    vals = np.round(rng.normal(0, 1 + idx * 1.5)).astype(np.int64)
    vals[0, 0, 0], vals[1, 2, 3] = 500, -9000          # far outside every table: escaped
    enc = Encoder()
    enc.encode(vals, idx, t)
    stream, escapes = enc.finish()
    assert len(escapes) > 0
    got = Decoder(stream, escapes).decode(idx, t)
    np.testing.assert_array_equal(got, vals)


def test_same_input_same_bytes():
    t = _tables()
    vals = np.arange(-3, 4).repeat(20)
    idx = np.zeros_like(vals)
    outs = []
    for _ in range(2):
        e = Encoder()
        e.encode(vals, idx, t)
        outs.append(e.finish())
    assert outs[0] == outs[1]


def test_rate_tracks_the_model():
    """Symbols drawn from a narrow table cost fewer bits than the same count from a wide one."""
    rng = np.random.default_rng(1)
    t = _tables()
    sizes = []
    for k, s in enumerate((0.5, 3.0)):
        v = np.clip(np.round(rng.normal(0, s, 5000)), -6, 6).astype(np.int64)
        e = Encoder()
        e.encode(v, np.full(v.shape, 0 if k == 0 else 2), t)
        sizes.append(len(e.finish()[0]))
    assert sizes[0] < sizes[1] / 2


def test_damaged_stream_length():
    with pytest.raises(CorruptFileError):
        Decoder(b"abc", b"")
