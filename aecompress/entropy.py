"""Entropy coding of integer latents with constriction's range coder and fixed integer tables.

A *table set* holds many discrete distributions, each over a contiguous range of integers
[minimum, minimum + length - 2] plus one escape symbol (the last entry). Tables are integer
frequencies shipped in the model package, so every machine builds the same models. Values outside
a table's range are coded as the escape symbol and written afterwards as zigzag varints, each
within +-2^24 (MAX_VALUE): far beyond any latent, and exactly representable in float32.

Symbols are coded grouped by table (table 0's symbols in raster order, then table 1's, ...), which
lets constriction code each group with one model in a single vectorised call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import constriction
import numpy as np

from .errors import CorruptFileError, ModelError

MAX_VALUE = 1 << 24     # the largest |value| coded: an escape beyond it marks a damaged (or broken) latent


@dataclass
class TableSet:
    pmf: np.ndarray        # concatenated integer frequencies (escape last in each table)
    offset: np.ndarray     # start of each table in pmf
    length: np.ndarray     # entries of each table, escape included
    minimum: np.ndarray    # value of each table's first entry
    _models: dict = field(default_factory=dict, repr=False)
    _logp: np.ndarray | None = field(default=None, repr=False)
    _min_bits: float | None = field(default=None, repr=False)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> "TableSet":
        return cls(*(np.asarray(arrays[f"{prefix}_{k}"]).astype(np.int64) for k in ("pmf", "offset", "length", "minimum")))

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}_pmf": self.pmf.astype(np.int32), f"{prefix}_offset": self.offset.astype(np.int32),
                f"{prefix}_length": self.length.astype(np.int32), f"{prefix}_minimum": self.minimum.astype(np.int32)}

    @classmethod
    def from_pmfs(cls, pmfs: list[np.ndarray], minimums: list[int]) -> "TableSet":
        lengths = np.array([len(p) for p in pmfs])
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        return cls(np.concatenate(pmfs).astype(np.int64), offsets, lengths, np.asarray(minimums, dtype=np.int64))

    def __len__(self) -> int:
        return int(len(self.length))

    def min_bits(self) -> float:
        """The fewest bits any value can cost under these tables: its table's likeliest symbol's."""
        if self._min_bits is None:
            pmax = max(float(self.pmf[o:o + n].max()) / float(self.pmf[o:o + n].sum())
                       for o, n in zip(self.offset, self.length))
            self._min_bits = -math.log2(pmax) if pmax < 1 else 0.0
        return self._min_bits

    def model(self, t: int):
        m = self._models.get(t)
        if m is None:
            freq = self.pmf[self.offset[t]:self.offset[t] + self.length[t]].astype(np.float64)
            m = constriction.stream.model.Categorical(freq / freq.sum(), perfect=False)
            self._models[t] = m
        return m

    def entries(self, values: np.ndarray, table_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in `pmf` of the entry that codes each value under its table, whether the value
        is inside its table's range); values outside it map to their table's escape entry."""
        t = np.asarray(table_index, dtype=np.int64)
        k = np.asarray(values, dtype=np.int64) - self.minimum[t]
        inside = (k >= 0) & (k < self.length[t] - 1)
        return self.offset[t] + np.where(inside, k, self.length[t] - 1), inside

    def bits(self, values: np.ndarray, table_index: np.ndarray) -> np.ndarray:
        """Code length in bits of each value under its table (escapes: the escape symbol plus an
        estimate of the varint), for rate-distortion decisions at the encoder."""
        if self._logp is None:
            totals = np.add.reduceat(self.pmf, self.offset)
            self._logp = -np.log2(self.pmf / np.repeat(totals, self.length))
        entry, inside = self.entries(values, table_index)
        out = self._logp[entry]
        return np.where(inside, out, out + 8 + 2 * np.log2(np.abs(np.asarray(values, dtype=np.int64)) + 1))


def quantize_pmf(prob: np.ndarray, total_bits: int = 16, escape_mass: float = 2.0**-14) -> np.ndarray:
    """Float probabilities (without escape) -> integer frequencies, each >= 1, escape appended."""
    total = 1 << total_bits
    prob = np.clip(np.nan_to_num(np.asarray(prob, dtype=np.float64)), 0, None)
    n = len(prob)
    esc = max(1, round(escape_mass * total))
    free = total - esc - n                  # every entry gets 1, the rest is shared out
    if free < 0:
        raise ValueError("table too long for its precision")
    share = prob / max(prob.sum(), 1e-300) * free
    freq = 1 + np.floor(share).astype(np.int64)
    left = total - esc - int(freq.sum())
    if left > 0:                            # largest remainders first (stable, deterministic)
        order = np.argsort(-(share - np.floor(share)), kind="stable")[:left]
        freq[order] += 1
    return np.concatenate([freq, [esc]])


def _zigzag(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.int64)
    return np.where(v >= 0, 2 * v, -2 * v - 1).astype(np.uint64)


def _unzigzag(u: int) -> int:
    return u // 2 if u % 2 == 0 else -(u + 1) // 2


def write_varints(values: np.ndarray) -> bytes:
    out = bytearray()
    for u in _zigzag(values).tolist():
        while True:
            b = u & 0x7F
            u >>= 7
            if u:
                out.append(b | 0x80)
            else:
                out.append(b)
                break
    return bytes(out)


class VarintReader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def read(self, n: int) -> np.ndarray:
        out = np.empty(n, dtype=np.int64)
        for i in range(n):
            u, shift = 0, 0
            while True:
                if self.pos >= len(self.data) or shift > 63:
                    raise CorruptFileError("payload is damaged (escape values run past the end)")
                b = self.data[self.pos]
                self.pos += 1
                u |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            if u > 2 * MAX_VALUE:
                raise CorruptFileError("payload is damaged (an escape value is out of range)")
            out[i] = _unzigzag(u)
        return out


def _groups(table_index: np.ndarray):
    """(table, positions) for each table in use, in increasing table order, positions in raster
    order: the order in which symbols enter and leave the range coder. One stable sort instead of a
    mask per table (and no np.unique, which imports numpy.ma: ~10 ms of every start), on the
    narrowest unsigned type that holds the indices: numpy sorts 8- and 16-bit keys stably by radix,
    about ten times as fast as 64-bit ones (measured on a loaded 2-core Xeon: 0.3 million keys 29 ms
    -> 4 ms, 18 million 3.8 s -> 0.33 s; a 768x512 photo has 0.2 million, a 24-megapixel one 12
    million), and in the same order."""
    flat = np.asarray(table_index).ravel()
    if flat.size == 0:
        return
    if flat.dtype != np.uint8:
        top = int(flat.max())
        if int(flat.min()) < 0:
            raise ValueError("negative table index")
        flat = flat.astype(np.uint8 if top < 256 else np.uint16 if top < 65536 else np.int64, copy=False)
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat)
    ends = np.cumsum(counts)
    for t in np.flatnonzero(counts).tolist():
        yield t, order[ends[t] - counts[t]: ends[t]]


class Encoder:
    """Collects symbols into one range-coded stream plus an escape stream."""

    def __init__(self):
        self._coder = constriction.stream.queue.RangeEncoder()
        self._escapes: list[np.ndarray] = []

    def encode(self, values: np.ndarray, table_index: np.ndarray, tables: TableSet) -> None:
        values = np.asarray(values, dtype=np.int64).ravel()
        for t, idx in _groups(table_index):
            v = values[idx]
            sym = v - tables.minimum[t]
            esc = (sym < 0) | (sym >= tables.length[t] - 1)
            sym[esc] = tables.length[t] - 1
            self._coder.encode(sym.astype(np.int32), tables.model(t))
            if esc.any():
                e = v[esc]                          # NaN or inf cast to int64 is INT64_MIN: caught too
                if ((e > MAX_VALUE) | (e < -MAX_VALUE)).any():
                    raise ModelError("the model produced a latent out of range (not a finite number?)")
                self._escapes.append(v[esc])

    def finish(self) -> tuple[bytes, bytes]:
        words = self._coder.get_compressed()
        escapes = np.concatenate(self._escapes) if self._escapes else np.zeros(0, np.int64)
        return words.astype("<u4").tobytes(), write_varints(escapes)


class Decoder:
    def __init__(self, stream: bytes, escapes: bytes):
        if len(stream) % 4:
            raise CorruptFileError("payload is damaged (range-coder stream length)")
        words = np.frombuffer(stream, dtype="<u4").astype(np.uint32)
        self._coder = constriction.stream.queue.RangeDecoder(words)
        self._escapes = VarintReader(escapes)

    def decode(self, table_index: np.ndarray, tables: TableSet) -> np.ndarray:
        table_index = np.asarray(table_index)
        flat = table_index.ravel()
        out = np.empty(flat.shape, dtype=np.int32)       # |values| <= MAX_VALUE: half the memory of int64
        for t, idx in _groups(flat):
            n = len(idx)
            try:
                sym = np.asarray(self._coder.decode(tables.model(t), n), dtype=np.int64)
            except Exception:  # noqa: BLE001 - constriction reports damaged streams as errors
                raise CorruptFileError("payload is damaged (range decoder failed)") from None
            v = sym + tables.minimum[t]
            esc = sym == tables.length[t] - 1
            if esc.any():
                v[esc] = self._escapes.read(int(esc.sum()))
            out[idx] = v
        return out.reshape(table_index.shape)
