"""Entropy coding with fixed integer tables: exact round trips, escapes, determinism."""

import numpy as np
import pytest

from aecompress.entropy import MAX_VALUE, Decoder, Encoder, TableSet, quantize_pmf
from aecompress.errors import CorruptFileError, ModelError


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


@pytest.mark.parametrize("value", [2**64, 2**40, MAX_VALUE + 1])
def test_an_escape_out_of_range_is_damage(value):
    """A checksum only proves the bytes are the writer's; escape values past +-2^24 (which no latent
    reaches) mean a damaged or hostile file: past 2^63 they overflowed int64 (a traceback), below it
    they reached the synthesis as NaN."""
    t = _tables()
    idx = np.zeros((1, 2, 2), dtype=np.int64)
    vals = np.array([[[500, 1], [0, -700]]])
    enc = Encoder()
    enc.encode(vals, idx, t)
    stream, escapes = enc.finish()
    u = 2 * value                                    # zigzag of +value
    big = bytearray()
    while True:
        big.append((u & 0x7F) | (0x80 if u >> 7 else 0))
        u >>= 7
        if not u:
            break
    np.testing.assert_array_equal(Decoder(stream, escapes).decode(idx, t), vals)
    with pytest.raises(CorruptFileError, match="out of range"):
        Decoder(stream, bytes(big) * 2).decode(idx, t)
    edge = np.array([[[MAX_VALUE, 0], [0, -MAX_VALUE]]])             # the limit itself is codable
    enc = Encoder()
    enc.encode(edge, idx, t)
    np.testing.assert_array_equal(Decoder(*enc.finish()).decode(idx, t), edge)
    for v in (MAX_VALUE + 1, np.nan, -np.inf):                 # the encoder never writes one
        with pytest.raises(ModelError, match="out of range"), np.errstate(invalid="ignore"):
            Encoder().encode(np.array([[[v]]]), idx[:, :1, :1], t)


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


def test_symbols_enter_the_coder_table_by_table_in_raster_order():
    """The bitstream order is part of the format: every table in increasing order, each with its
    symbols in raster order. A reference coder built from per-table masks gives the same bytes."""
    import constriction

    rng = np.random.default_rng(3)
    t = _tables()
    idx = rng.integers(0, 3, size=(3, 11, 13))
    idx[idx == 1] = 2                                      # one table unused
    vals = np.round(rng.normal(0, 2, size=idx.shape)).astype(np.int64)
    vals = np.clip(vals, -5, 5)                            # no escapes
    ref = constriction.stream.queue.RangeEncoder()
    for k in np.unique(idx):
        ref.encode((vals[idx == k] - t.minimum[k]).astype(np.int32), t.model(k))
    for dtype in (np.int64, np.int32, np.uint8):           # the codec hands over one byte a value
        enc = Encoder()
        enc.encode(vals, idx.astype(dtype), t)
        stream, _ = enc.finish()
        assert stream == ref.get_compressed().astype("<u4").tobytes(), dtype
        np.testing.assert_array_equal(Decoder(stream, b"").decode(idx.astype(dtype), t), vals)


def test_groups_sort_narrow_keys_in_the_same_order():
    """The table-by-table order is the same whatever integer type holds the indices (the sort runs
    on the narrowest that holds them); negative indices are refused."""
    from aecompress.entropy import _groups

    rng = np.random.default_rng(4)
    for top in (3, 300, 70000):
        idx = rng.integers(0, top, size=5000)
        want = [(t, np.flatnonzero(idx == t)) for t in np.unique(idx)]
        got = list(_groups(idx))
        assert [t for t, _ in got] == [t for t, _ in want]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, want))
    with pytest.raises(ValueError):
        list(_groups(np.array([1, -1, 2])))


def test_table_bits_predict_the_coded_size():
    rng = np.random.default_rng(5)
    t = _tables()
    idx = rng.integers(0, 3, size=4000)
    vals = np.clip(np.round(rng.normal(0, 0.5 + idx)), -5, 5).astype(np.int64)
    vals[:3] = [40, -70, 900]                               # escapes cost their varints too
    enc = Encoder()
    enc.encode(vals, idx, t)
    stream, escapes = enc.finish()
    predicted = t.bits(vals, idx).sum()
    actual = 8 * (len(stream) + len(escapes))
    assert abs(predicted - actual) < 0.02 * actual + 64


def test_the_coders_model_is_the_documented_quantization_of_the_integer_table():
    """docs/aez-format.md (Range coder): constriction's Categorical(freq / sum, perfect=False) puts
    entry i at floor(F[i] x (2^24 - n) / T) + i of 2^24 (F: the sum before i, T: the total), which
    is not freq x 2^24 / T. Each entry's width is measured as the bits that coding it 4096 times
    takes; widths 16 and 17 (a frequency of 1 in a table of 2^20) differ by 0.09 bits a symbol."""
    import constriction

    rng = np.random.default_rng(3)
    for n in (2, 7, 40):
        freq = quantize_pmf(rng.dirichlet(np.full(n - 1, 0.3)), total_bits=20)
        f = np.concatenate([[0], np.cumsum(freq)])
        start = f[:-1] * ((1 << 24) - len(freq)) // f[-1] + np.arange(len(freq))
        width = np.diff(np.append(start, 1 << 24))
        model = constriction.stream.model.Categorical(freq / freq.sum(), perfect=False)
        for i in range(len(freq)):
            enc = constriction.stream.queue.RangeEncoder()
            enc.encode(np.full(4096, i, np.int32), model)
            measured = 2.0 ** 24 / 2.0 ** (enc.num_bits() / 4096)
            assert abs(measured - width[i]) < 0.2 * width[i] / 16 + 0.01 * width[i], (n, i, freq[i], width[i], measured)
