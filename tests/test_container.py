"""The .aez container: layout, validation of damaged and truncated files."""

import struct
import zlib

import pytest

from aecompress import container
from aecompress.container import Header
from aecompress.errors import AecError, CorruptFileError


def _header(**kw):
    base = dict(model_id=bytes(range(16)), width=451, height=300, channels=3, mode="RGB", bits=8,
                codec="hyperprior", quality=container.quantize_level(5.25), alpha_dropped=False)
    base.update(kw)
    return Header(**base)


def test_roundtrip_header_and_payload():
    h = _header(mode="LA", bits=16, alpha_dropped=True, width=70000, height=3)
    data = container.pack(h, b"payload-bytes")
    got, payload = container.unpack(data)
    assert payload == b"payload-bytes"
    assert (got.width, got.height, got.mode, got.bits, got.alpha_dropped) == (70000, 3, "LA", 16, True)
    assert got.model_id == h.model_id[:8]
    assert got.quality == h.quality


def test_header_is_compact():
    # magic 3 + version 1 + id 8 + flags 1 + two 2-byte varints + quality 2 + crc 4
    assert len(container.pack(_header(), b"")) == 3 + 1 + 8 + 1 + 2 + 2 + 2 + 4


@pytest.mark.parametrize("cut", [0, 1, 3, 5, 12, 16, 20, 25])
def test_every_truncation_is_detected(cut):
    data = container.pack(_header(), b"x" * 10)
    with pytest.raises(CorruptFileError):
        container.unpack(data[:cut] if cut < len(data) - 1 else data[:-1])


def test_any_flipped_bit_is_detected():
    data = container.pack(_header(), bytes(range(40)))
    for i in range(len(data)):
        for bit in (0, 7):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(CorruptFileError):
                container.unpack(bytes(bad))


def test_rejects_other_files_and_versions():
    with pytest.raises(CorruptFileError, match="not an .aez"):
        container.unpack(b"\x89PNG\r\n\x1a\n" + b"0" * 40)
    data = bytearray(container.pack(_header(), b"abc"))
    data[3] = 9
    with pytest.raises(CorruptFileError, match="version 9"):
        container.unpack(bytes(data))


def test_absurd_dimensions_rejected_before_decoding():
    # the writer refuses what the reader would reject ...
    with pytest.raises(AecError, match="too large for an .aez file"):
        container.pack(_header(width=200000, height=200000), b"")
    with pytest.raises(AecError, match="too large for an .aez file"):
        container.pack(_header(width=container.MAX_SIDE + 1, height=1), b"")
    # ... and the reader rejects a file that claims such a size (written by hand here)
    small = container.pack(_header(width=1, height=1), b"")
    head = 4 + container.ID_BYTES + 1                     # magic, version, model id, flags; then the varints
    body = small[:head] + container._varint(200000) + container._varint(200000) + small[head + 2:-4]
    with pytest.raises(CorruptFileError, match="implausible size"):
        container.read_header(body + struct.pack("<I", zlib.crc32(body)))


def test_payload_split_restores_stripped_zero_bytes():
    stream = b"\x01\x02\x03\x04\x05\x00\x00\x00"
    s, e = container.split_payload(container.join_payload(stream, b"\x07"))
    assert s == stream and e == b"\x07"


def _with_version(data: bytes, version: int) -> bytes:
    """The same file claiming another format version (checksum recomputed)."""
    body = bytes([*data[:3], version, *data[4:-4]])
    return body + struct.pack("<I", zlib.crc32(body))


def test_scale_is_recorded_and_older_versions_still_read():
    for scale in container.SCALES:
        got, _ = container.unpack(container.pack(_header(scale=scale), b"x"))
        # writers write the lowest version from 3 that holds the file: 4 only for the scale 3/4, 5
        # (with its scale byte) only for 2/3 and 3/5, so a reader of version 3 still reads every other file
        assert got.scale == scale and got.version == {3 / 4: 4, 2 / 3: 5, 3 / 5: 5}.get(scale, 3)
    assert container.VERSION == 5 and container.READABLE == (1, 2, 3, 4, 5)
    assert [container.SCALES.index(s) for s in (1, 2, 4 / 3, 3 / 4, 2 / 3, 3 / 5)] == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError):                          # 4/3 of the resolution came with version 4
        container.pack(_header(version=3, scale=3 / 4), b"x")
    with pytest.raises(CorruptFileError, match="flags"):     # nor may a version-3 file claim it
        container.unpack(_with_version(container.pack(_header(scale=3 / 4), b"x"), 3))
    old = container.pack(_header(version=1), b"x")            # a version-1 file: no scale field
    got, payload = container.unpack(old)
    assert (got.version, got.scale, payload) == (1, 1, b"x")
    got, _ = container.unpack(container.pack(_header(version=2, scale=2), b"x"))
    assert (got.version, got.scale) == (2, 2)
    with pytest.raises(ValueError):
        container.pack(_header(version=1, scale=2), b"x")
    with pytest.raises(ValueError):                          # 3/4 resolution came with version 3
        container.pack(_header(version=2, scale=4 / 3), b"x")
    # version 1 never set the scale bits, version 2 only the half-resolution code: more is damage
    with pytest.raises(CorruptFileError, match="flags"):
        container.unpack(_with_version(container.pack(_header(scale=2), b"x"), 1))
    with pytest.raises(CorruptFileError, match="flags"):
        container.unpack(_with_version(container.pack(_header(scale=4 / 3), b"x"), 2))
    # nor a version-3 file the code 3
    data = bytearray(container.pack(_header(scale=4 / 3), b"x"))
    data[12] |= 0xC0
    body = bytes(data[:-4])
    with pytest.raises(CorruptFileError, match="flags"):
        container.unpack(body + struct.pack("<I", zlib.crc32(body)))


def test_version_5_records_the_scale_in_a_byte_after_the_flags():
    """Version 5 (the scales 2/3 and 3/5: coded at 3/2 and 5/3 of the size) keeps the scale code in
    its own byte after the flags, whose bits 6-7 must then be 0; a version-4 reader's codes end at 3."""
    v4 = container.pack(_header(scale=3 / 4), b"x")
    v5 = container.pack(_header(scale=3 / 5), b"x")
    assert v5[3] == 5 and len(v5) == len(v4) + 1
    assert v5[12] >> 6 == 0 and v5[13] == container.SCALES.index(3 / 5) == 5
    assert v5[:3] + v5[4:12] == v4[:3] + v4[4:12] and v5[14:-4] == v4[13:-4]   # otherwise the same layout
    for scale in container.SCALES:                           # a version-5 file may hold any scale
        got, payload = container.unpack(container.pack(_header(version=5, scale=scale), b"x"))
        assert (got.version, got.scale, payload) == (5, scale, b"x")
    with pytest.raises(ValueError):                          # 2/3 came with version 5
        container.pack(_header(version=4, scale=2 / 3), b"x")

    def forged(i: int, value: int) -> bytes:
        data = bytearray(v5)
        data[i] = value
        body = bytes(data[:-4])
        return body + struct.pack("<I", zlib.crc32(body))

    with pytest.raises(CorruptFileError, match="scale code"):
        container.unpack(forged(13, 6))                      # a code beyond the scales
    with pytest.raises(CorruptFileError, match="flags"):
        container.unpack(forged(12, v5[12] | 0x40))          # bits 6-7 are reserved in version 5
    with pytest.raises(CorruptFileError, match="truncated"):
        container.read_header(v5[:13], check_crc=False)     # ends before the scale byte


# -- docs/aez-format.md, read independently of container.py ---------------------------------------
# These tests parse freshly written files by the byte layout the format document gives (struct,
# zlib, hashlib, constriction and numpy only), so the document and the code cannot drift apart
# silently. Keep them free of aecompress's own parsing, table and hyper-synthesis code.

def _doc_varint(b: bytes, i: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return v, i


def _doc_parse(b: bytes) -> dict:
    assert b[:3] == b"AEZ"
    assert struct.unpack("<I", b[-4:])[0] == zlib.crc32(b[:-4])
    f = b[12]
    if b[3] >= 5:                                             # version 5: the scale code is a byte of its own
        assert f >> 6 == 0
        code, i = b[13], 14
    else:
        code, i = f >> 6, 13
    width, i = _doc_varint(b, i)
    height, i = _doc_varint(b, i)
    (quality,) = struct.unpack_from("<H", b, i)
    n, i = _doc_varint(b, i + 2)
    assert i + n <= len(b) - 4
    num, den = ((1, 1), (2, 1), (4, 3), (3, 4), (2, 3), (3, 5))[code]
    return {"version": b[3], "model_id": b[4:12], "mode": ("L", "LA", "RGB", "RGBA")[f & 3],
            "bits": 16 if f & 4 else 8, "codec": ("hyperprior", "factorized")[f >> 3 & 1],
            "channels": 3 if f & 16 else 1, "alpha_dropped": bool(f & 32), "scale_code": code,
            "width": width, "height": height, "coded": (-(-width * den // num), -(-height * den // num)),
            "quality": quality, "stream": b[i:i + n], "escapes": b[i + n:-4]}


def _doc_model_id(folder) -> bytes:
    import hashlib
    import json

    m = json.loads((folder / "manifest.json").read_text())
    non_coding = {"description", "training", "measured", "notes", "license", "encoder", "quality_anchor", "decodes"}
    h = hashlib.sha256(json.dumps({k: v for k, v in m.items() if k not in non_coding}, sort_keys=True).encode())
    for name in sorted(set(m["graphs"].values()) | {m["tables"]}):
        h.update(name.encode() + (folder / name).read_bytes())
    return h.digest()[:8]


class _DocTables:
    """A table set as the document describes it: pmf/offset/length/minimum, escape last, constriction's
    Categorical(freq / sum, perfect=False)."""

    def __init__(self, t, prefix):
        import constriction
        import numpy as np

        self.pmf, self.off, self.len, self.min = (t[f"{prefix}_{k}"].astype(np.int64)
                                                  for k in ("pmf", "offset", "length", "minimum"))
        self.model = lambda i: constriction.stream.model.Categorical(
            (lambda fr: fr / fr.sum())(self.pmf[self.off[i]:self.off[i] + self.len[i]]), perfect=False)

    def decode(self, dec, escapes: list, table_index):
        import numpy as np

        flat = np.asarray(table_index).ravel()
        out = np.zeros(flat.shape, np.int64)
        for t in sorted(set(flat.tolist())):             # grouped by table, raster order within
            pos = np.flatnonzero(flat == t)
            sym = np.asarray(dec.decode(self.model(t), len(pos)), np.int64)
            v = sym + self.min[t]
            for k in np.flatnonzero(sym == self.len[t] - 1):
                v[k] = escapes.pop(0)
            out[pos] = v
        return out.reshape(np.shape(table_index))


def _doc_hyper(t, z_hat):
    import numpy as np

    a = np.clip(z_hat.astype(np.float64), -(1 << 15), 1 << 15)
    n = int(t["hs_layers"])
    for i in range(n):
        w, b, m = (t[f"hs_{k}{i}"].astype(np.float64) for k in ("w", "b", "mult"))
        o, _, k, _ = w.shape
        p, (h, wd) = k // 2, a.shape[1:]
        ap = np.pad(a, ((0, 0), (p, p), (p, p)))
        acc = sum(np.einsum("oc,chw->ohw", w[:, :, dy, dx], ap[:, dy:dy + h, dx:dx + wd])
                  for dy in range(k) for dx in range(k)) + b[:, None, None]
        if i == n - 1:
            acc = acc * m[:, None, None]
            return acc[:o // 2], acc[o // 2:]
        a = np.clip(np.floor(acc * m[:, None, None] + 0.5), 0 if t[f"hs_relu{i}"] else -65535, 65535)
        if t[f"hs_shuffle{i}"]:
            c, h, wd = a.shape
            a = a.reshape(c // 4, 2, 2, h, wd).transpose(0, 3, 1, 4, 2).reshape(c // 4, 2 * h, 2 * wd)


def _doc_latents(data: bytes, folder):
    """(header fields, z_hat, q, escape values left over) of a hyperprior file, decoded by the document."""
    import json

    import constriction
    import numpy as np

    f = _doc_parse(data)
    m = json.loads((folder / "manifest.json").read_text())
    t = dict(np.load(folder / "tables.npz"))
    stream = f["stream"] + b"\0" * (-len(f["stream"]) % 4)
    dec = constriction.stream.queue.RangeDecoder(np.frombuffer(stream, "<u4").astype(np.uint32))
    escapes, i = [], 0
    while i < len(f["escapes"]):
        u, i = _doc_varint(f["escapes"], i)
        escapes.append(u // 2 if u % 2 == 0 else -(u + 1) // 2)
    pad = int(m["pad_multiple"])
    (cw, ch) = f["coded"]
    hp, wp = ch + (-ch % pad), cw + (-cw % pad)
    zt, yt = _DocTables(t, "z"), _DocTables(t, "y")
    nz = len(zt.len)
    z = zt.decode(dec, escapes, np.broadcast_to(np.arange(nz)[:, None, None], (nz, hp // 64, wp // 64)))
    mean, log_scale = _doc_hyper(t, z)
    assert len(t["y_length"]) == len(t["log_scale_bounds"]) + 1
    q = yt.decode(dec, escapes, np.searchsorted(t["log_scale_bounds"], log_scale))
    return f, z, q, mean, escapes


def test_written_files_follow_the_documented_layout(photo_codec):
    import numpy as np

    from .conftest import smooth_image

    folder = photo_codec.pkg.path
    a = photo_codec.analyse(smooth_image(70, 90, 3))
    for position, mode, bits in ((photo_codec.span, "LA", 16), (0.0, "RGB", 8),
                                 (photo_codec.ladder.position(4 / 3, 2.0), "RGBA", 8)):
        data, st = photo_codec.code(a, position, mode=mode, bits=bits, alpha_dropped=mode.endswith("A"))
        f, z, q, _, left = _doc_latents(data, folder)
        assert (f["version"], f["model_id"]) == ({3 / 4: 4, 2 / 3: 5, 3 / 5: 5}.get(st["scale"], 3),
                                                 _doc_model_id(folder))
        assert (f["mode"], f["bits"], f["alpha_dropped"], f["codec"], f["channels"]) == (mode, bits, mode.endswith("A"),
                                                                                         "hyperprior", 3)
        assert (f["width"], f["height"]) == (90, 70)
        assert f["scale_code"] == {1: 0, 2: 1, 4 / 3: 2, 3 / 4: 3, 2 / 3: 4, 3 / 5: 5}[st["scale"]]
        assert f["quality"] == round(st["level"] * 1024)
        assert f["stream"][-1:] != b"\0"                      # trailing zero bytes dropped
        assert np.array_equal(z, st["z"]) and np.array_equal(q, st["q"]) and left == []


def test_escapes_are_read_in_the_documented_order(photo_codec):
    import numpy as np

    from aecompress.entropy import Encoder

    from .conftest import smooth_image

    a = photo_codec.analyse(smooth_image(70, 90, 3))
    data, st = photo_codec.code(a, 5.0)
    z, q = st["z"].copy(), st["q"].copy()
    # z beyond the hyper-synthesis' clip at 2^15, beside values inside it: the clip changes the means
    z[1, 0, 0], z[0, 0, 0], z[2, 0, 1], z[3, 0, 1], z[0, 0, 1] = 1 << 20, -30000, -(1 << 20), 25000, -300
    q[0, 0, 0], q[5, 1, 2], q[100, 2, 3] = 100, -150, 1 << 24
    _, _, idx = photo_codec._entropy_params(z)
    enc = Encoder()
    enc.encode(z, photo_codec._channel_index(z.shape), photo_codec.z_tables)
    enc.encode(q, idx, photo_codec.y_tables)
    stream, escapes = enc.finish()
    head = 3 + 1 + 8 + 1 + 1 + 1 + 2                    # 90 and 70 are one-byte varints
    body = data[:head] + container._varint(len(stream.rstrip(b"\0"))) + stream.rstrip(b"\0") + escapes
    forged = body + struct.pack("<I", zlib.crc32(body))
    f, z2, q2, mean, left = _doc_latents(forged, photo_codec.pkg.path)
    assert np.array_equal(z2, z) and np.array_equal(q2, q) and left == []
    # means and scales come from the clipped z_hat: the document's hyper-synthesis is the code's
    mean_code, log_scale_code = photo_codec.hyper(z)
    assert np.array_equal(mean, mean_code)
