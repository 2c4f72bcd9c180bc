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
        assert got.scale == scale and got.version == container.VERSION == 3
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
    # scale code 3 is unassigned
    data = bytearray(container.pack(_header(scale=4 / 3), b"x"))
    data[12] |= 0xC0
    body = bytes(data[:-4])
    with pytest.raises(CorruptFileError, match="flags"):
        container.unpack(body + struct.pack("<I", zlib.crc32(body)))
