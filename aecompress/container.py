"""The .aez container: a compact header, the coded payload, a CRC-32 trailer.

See docs/aez-format.md for the byte layout. The header is small (19 bytes for a photo, 17 for a
28x28 digit, before the stream length and the 4-byte CRC) because a digit codes into a couple of
dozen bytes and the file size is what bpp is measured on.
Reading validates everything before any decoding starts, so a damaged or truncated file fails with
one clear message.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from .errors import AecError, CorruptFileError
from .imageio import MAX_PIXELS

MAGIC = b"AEZ"
VERSION = 5                    # 2 added the coded-resolution scale (flags bits 6-7), 3 the scale 4/3,
                               # 4 the scale 3/4 (coded at 4/3 of the resolution), 5 a scale byte
                               # after the flags with the scales 2/3 and 3/5 (coded at 3/2 and 5/3)
READABLE = (1, 2, 3, 4, 5)
SCALE_BYTE_FROM = 5            # from this version the scale is a byte after the flags (bits 6-7 are 0)
OLDEST_WRITTEN = 3             # writers write the lowest version from this one that holds the file
ID_BYTES = 8
TRAILER_SIZE = 4
MODES = ("L", "LA", "RGB", "RGBA")
CODECS = ("hyperprior", "factorized")
QUALITY_SCALE = 1024           # quality level is stored as round(level * 1024) in a u16
MAX_SIDE = 1 << 18
# coded resolution = den/num of the image's; the index is the scale code (flags bits 6-7, or the scale byte)
SCALE_RATIOS = ((1, 1), (2, 1), (4, 3), (3, 4), (2, 3), (3, 5))
SCALES = tuple(n / d if d != 1 else n for n, d in SCALE_RATIOS)
_SCALE_CODES_BY_VERSION = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6}     # how many of SCALES each version may use


@dataclass
class Header:
    model_id: bytes            # content hash of the model package (first 8 bytes are stored)
    width: int
    height: int
    channels: int              # channels the model coded (1 or 3)
    mode: str                  # mode of the source image (decoded back to it)
    bits: int                  # bits per sample of the source (8 or 16)
    codec: str                 # "hyperprior" or "factorized"
    quality: float             # quality level in the model's level range (multiple of 1/1024)
    alpha_dropped: bool = False
    version: int | None = None  # None: the lowest version (from OLDEST_WRITTEN) that holds the file
    scale: float = 1           # one of SCALES: coded at 1/scale resolution, resampled to size after decoding

    def as_dict(self) -> dict:
        return {"version": self.version, "model_id": self.model_id[:ID_BYTES].hex(), "width": self.width,
                "height": self.height, "channels": self.channels, "mode": self.mode, "bits": self.bits,
                "codec": self.codec, "quality_level": round(self.quality, 4),
                "alpha_dropped": self.alpha_dropped, "scale": round(self.scale, 4)}


def check_size(width: int, height: int) -> None:
    """Refuse an image the format cannot record (checked before any work, so encoding never writes
    a file that decoding would reject)."""
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE and width * height <= MAX_PIXELS):
        raise AecError(f"{width}x{height} is too large for an .aez file (at most {MAX_SIDE} pixels a side "
                       f"and {MAX_PIXELS // 1_000_000} million pixels)")


def quantize_level(level: float) -> float:
    """The level as it will be stored (encoder and decoder must use the same value)."""
    return min(max(round(level * QUALITY_SCALE), 0), 0xFFFF) / QUALITY_SCALE


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    n, shift = 0, 0
    while True:
        if pos >= end or shift > 35:
            raise CorruptFileError("damaged or truncated .aez file (header)")
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, pos


def pack(header: Header, payload: bytes) -> bytes:
    check_size(header.width, header.height)
    code = SCALES.index(header.scale)
    version = header.version or min(v for v in READABLE if v >= OLDEST_WRITTEN and code < _SCALE_CODES_BY_VERSION[v])
    if code >= _SCALE_CODES_BY_VERSION.get(version, 0):
        raise ValueError(f"scale {header.scale:g} needs a newer .aez version than {version}")
    scale_byte = version >= SCALE_BYTE_FROM
    flags = (MODES.index(header.mode) | (int(header.bits == 16) << 2) | (CODECS.index(header.codec) << 3)
             | (int(header.channels == 3) << 4) | (int(header.alpha_dropped) << 5) | (0 if scale_byte else code << 6))
    body = (MAGIC + bytes([version]) + header.model_id[:ID_BYTES] + bytes([flags])
            + (bytes([code]) if scale_byte else b"")
            + _varint(header.width) + _varint(header.height)
            + struct.pack("<H", round(header.quality * QUALITY_SCALE)) + payload)
    return body + struct.pack("<I", zlib.crc32(body))


def _parse(data: bytes) -> tuple[Header, int]:
    if len(data) < 4 or data[:3] != MAGIC:
        raise CorruptFileError("not an .aez file (bad magic bytes)")
    version = data[3]
    if version not in READABLE:
        raise CorruptFileError(f"unsupported .aez version {version} (this aecompress reads versions "
                               f"{', '.join(map(str, READABLE))})")
    end = len(data) - TRAILER_SIZE
    pos = 4 + ID_BYTES + 1
    if end < pos:
        raise CorruptFileError("truncated .aez file")
    model_id = bytes(data[4:4 + ID_BYTES])
    flags = data[4 + ID_BYTES]
    if version >= SCALE_BYTE_FROM:
        if flags >> 6 or pos >= end:
            raise CorruptFileError("damaged .aez file (invalid header flags)" if flags >> 6 else "truncated .aez file")
        scale_code = data[pos]
        pos += 1
    else:
        scale_code = flags >> 6
    width, pos = _read_varint(data, pos, end)
    height, pos = _read_varint(data, pos, end)
    if pos + 2 > end:
        raise CorruptFileError("truncated .aez file")
    (q,) = struct.unpack_from("<H", data, pos)
    pos += 2
    if scale_code >= _SCALE_CODES_BY_VERSION[version]:
        raise CorruptFileError("damaged .aez file (invalid header flags)" if version < SCALE_BYTE_FROM
                               else "damaged .aez file (invalid scale code)")
    if width == 0 or height == 0 or width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise CorruptFileError(f"damaged .aez file (implausible size {width}x{height})")
    mode = MODES[flags & 3]
    header = Header(model_id, width, height, 3 if flags & 16 else 1, mode, 16 if flags & 4 else 8,
                    CODECS[(flags >> 3) & 1], q / QUALITY_SCALE, bool(flags & 32), version, SCALES[scale_code])
    return header, pos


def read_header(data: bytes, check_crc: bool = True) -> Header:
    header, pos = _parse(data)
    if check_crc:
        _check_crc(data)
    return header


def _check_crc(data: bytes) -> None:
    if len(data) < 4 + ID_BYTES + TRAILER_SIZE:
        raise CorruptFileError("truncated .aez file")
    (crc,) = struct.unpack_from("<I", data, len(data) - TRAILER_SIZE)
    if zlib.crc32(data[:-TRAILER_SIZE]) != crc:
        raise CorruptFileError("damaged or truncated .aez file (checksum mismatch)")


def unpack(data: bytes) -> tuple[Header, bytes]:
    header, pos = _parse(data)
    _check_crc(data)
    return header, bytes(data[pos:len(data) - TRAILER_SIZE])


def join_payload(stream: bytes, escapes: bytes) -> bytes:
    """Payload = varint length of the range-coder stream, the stream, then the escape varints.

    Trailing zero bytes of the stream are dropped (the decoder pads them back)."""
    stream = stream.rstrip(b"\x00")
    return _varint(len(stream)) + stream + escapes


def split_payload(payload: bytes) -> tuple[bytes, bytes]:
    n, pos = _read_varint(payload, 0, len(payload))
    if pos + n > len(payload):
        raise CorruptFileError("damaged .aez file (payload length)")
    stream = payload[pos:pos + n]
    stream += b"\x00" * (-len(stream) % 4)
    return stream, payload[pos + n:]
