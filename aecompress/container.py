"""The .aez container: a fixed little-endian header, the coded payload, a CRC-32 trailer.

See docs/aez-format.md for the byte layout. Reading validates everything before any decoding
starts, so a damaged or truncated file fails with one clear message.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from .errors import CorruptFileError
from .imageio import MAX_PIXELS

MAGIC = b"\x89AEZ"
VERSION = 1
_HEADER = struct.Struct("<4sBB16sIIBBBBfI")
HEADER_SIZE = _HEADER.size          # 42 bytes
TRAILER_SIZE = 4
MODES = ("L", "LA", "RGB", "RGBA")
CODECS = ("hyperprior", "factorized")
FLAG_ALPHA_DROPPED = 1


@dataclass
class Header:
    model_id: bytes            # 16-byte content hash of the model package
    width: int
    height: int
    channels: int              # channels the model coded (1 or 3)
    mode: str                  # mode of the source image (decoded back to it)
    bits: int                  # bits per sample of the source (8 or 16)
    codec: str                 # "hyperprior" or "factorized"
    quality: float             # continuous quality level in the model's level range
    flags: int = 0
    version: int = VERSION

    @property
    def alpha_dropped(self) -> bool:
        return bool(self.flags & FLAG_ALPHA_DROPPED)

    def as_dict(self) -> dict:
        return {"version": self.version, "model_id": self.model_id.hex(), "width": self.width,
                "height": self.height, "channels": self.channels, "mode": self.mode, "bits": self.bits,
                "codec": self.codec, "quality_level": round(self.quality, 4),
                "alpha_dropped": self.alpha_dropped}


def pack(header: Header, payload: bytes) -> bytes:
    head = _HEADER.pack(MAGIC, header.version, header.flags, header.model_id, header.width, header.height,
                        header.channels, MODES.index(header.mode), header.bits, CODECS.index(header.codec),
                        header.quality, len(payload))
    body = head + payload
    return body + struct.pack("<I", zlib.crc32(body))


def read_header(data: bytes, check_crc: bool = True) -> Header:
    if len(data) < 4 or data[:4] != MAGIC:
        raise CorruptFileError("not an .aez file (bad magic bytes)")
    if len(data) < HEADER_SIZE + TRAILER_SIZE:
        raise CorruptFileError("truncated .aez file (header incomplete)")
    (_, version, flags, model_id, width, height, channels, mode, bits, codec, quality,
     payload_len) = _HEADER.unpack_from(data)
    if version != VERSION:
        raise CorruptFileError(f"unsupported .aez version {version} (this aecompress reads version {VERSION})")
    expected = HEADER_SIZE + payload_len + TRAILER_SIZE
    if len(data) < expected:
        raise CorruptFileError(f"truncated .aez file ({len(data)} of {expected} bytes)")
    if len(data) > expected:
        raise CorruptFileError(f"damaged .aez file ({len(data) - expected} unexpected trailing bytes)")
    if check_crc:
        (crc,) = struct.unpack_from("<I", data, HEADER_SIZE + payload_len)
        if zlib.crc32(data[: HEADER_SIZE + payload_len]) != crc:
            raise CorruptFileError("damaged .aez file (checksum mismatch)")
    if mode >= len(MODES) or codec >= len(CODECS) or channels not in (1, 3) or bits not in (8, 16):
        raise CorruptFileError("damaged .aez file (invalid header fields)")
    if width == 0 or height == 0 or width * height > MAX_PIXELS or width > 1 << 18 or height > 1 << 18:
        raise CorruptFileError(f"damaged .aez file (implausible size {width}x{height})")
    if quality != quality:  # NaN
        raise CorruptFileError("damaged .aez file (invalid quality)")
    return Header(model_id, width, height, channels, MODES[mode], bits, CODECS[codec], float(quality), flags, version)


def unpack(data: bytes) -> tuple[Header, bytes]:
    header = read_header(data)
    (payload_len,) = struct.unpack_from("<I", data, HEADER_SIZE - 4)
    return header, data[HEADER_SIZE:HEADER_SIZE + payload_len]


def split_payload(payload: bytes) -> tuple[bytes, bytes]:
    """Payload = u32 length of the range-coder stream, the stream, then the escape varints."""
    if len(payload) < 4:
        raise CorruptFileError("damaged .aez file (payload too short)")
    (n,) = struct.unpack_from("<I", payload)
    if 4 + n > len(payload):
        raise CorruptFileError("damaged .aez file (payload length)")
    return payload[4:4 + n], payload[4 + n:]


def join_payload(stream: bytes, escapes: bytes) -> bytes:
    return struct.pack("<I", len(stream)) + stream + escapes
