"""16-bit colour PNG and TIFF files (and 16-bit grey + alpha PNGs), which Pillow can only hold as 8 bits.

Pillow reads a 16-bit RGB or RGBA PNG or TIFF as 8 bits a sample (a 16-bit grey + alpha PNG as
8-bit RGBA), so a photo developed to 16-bit and denoised would come back with half its precision
gone. imageio.read_image asks `is_deep` first and takes such pixels from here (libpng through
imagecodecs for PNG, tifffile for TIFF) while Pillow still reads the metadata; save_image writes
(H, W, 3 or 4) uint16 pixels (PNG also (H, W, 2)) back here, with the metadata the 8-bit writer
keeps (ICC profile, EXIF, dpi, XMP; TIFF: its compression).

Interlaced 16-bit colour PNGs stay with Pillow's 8 bits (see `read`), and so does a file whose 16
bits do not match Pillow's 8 (imageio._deep_pixels checks). TIFF output writes EXIF's
first-directory tags (make, model, date, artist, copyright, ...) and its EXIF and GPS directories
(exposure settings, location), appended after the image (`_attach`).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from .errors import AecError

FORMATS = ("PNG", "TIFF")

# Pillow's TIFF compression names -> tifffile's; anything else is written uncompressed
TIFF_COMPRESSION = {"tiff_lzw": "lzw", "tiff_adobe_deflate": "zlib", "tiff_deflate": "zlib",
                     "packbits": "packbits", "zstd": "zstd", "lzma": "lzma", "webp": None, "jpeg": None}

# EXIF tags of a TIFF's first directory that describe the photo (not its pixel layout), as ASCII
_TIFF_TEXT_TAGS = (269, 270, 271, 272, 285, 305, 306, 315, 316, 33432)  # 270/305/306 go by name


def is_deep(im: Image.Image) -> bool:
    """Whether an opened (not yet loaded) PNG or TIFF stores 16-bit colour that Pillow narrows to 8 bits."""
    if im.format not in FORMATS or im.mode not in ("RGB", "RGBA") or not im.tile:
        return False
    if im.format == "TIFF":             # planar files' tiles name one plane ("R"): ask the directory
        tags = getattr(im, "tag_v2", {})
        bits = tags.get(258)
        return (tags.get(262) == 2 and isinstance(bits, tuple) and len(bits) >= 3    # RGB, 16 bits a sample
                and all(b == 16 for b in bits))
    args = im.tile[0][3]
    raw = args[0] if isinstance(args, tuple) and args else args
    return isinstance(raw, str) and ";16" in raw


def is_grey_alpha(im: Image.Image) -> bool:
    """Whether an opened PNG stores 16-bit grey with alpha (which Pillow opens as 8-bit RGBA)."""
    if im.format != "PNG" or not im.tile:
        return False
    args = im.tile[0][3]
    raw = args[0] if isinstance(args, tuple) and args else args
    return isinstance(raw, str) and raw.startswith("LA;16")


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """The EXIF orientation applied to (H, W, C) pixels, as PIL.ImageOps.exif_transpose does."""
    return {
        2: lambda: a[:, ::-1],
        3: lambda: a[::-1, ::-1],
        4: lambda: a[::-1],
        5: lambda: a.transpose(1, 0, 2),
        6: lambda: np.rot90(a, -1),
        7: lambda: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda: np.rot90(a, 1),
    }.get(orientation, lambda: a)()


def read(data: bytes, fmt: str, channels: int, orientation: int = 1) -> np.ndarray | None:
    """(H, W, channels) uint16 pixels of a 16-bit colour PNG or TIFF (first page), oriented; None when
    its layout is not plain 16-bit RGB(A) (the caller then keeps Pillow's 8-bit reading)."""
    if fmt == "PNG":
        import imagecodecs

        if data[28:29] != b"\0":
            # Adam7 interlaced (IHDR's last byte): imagecodecs' libpng decodes it right but prints a
            # warning on the process' standard error, which one-line output cannot have
            return None
        a = imagecodecs.png_decode(_pixel_chunks(data))
    else:
        tifffile = _tifffile()
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages[0]
            a = page.asarray()
            if page.axes.startswith("S") and a.ndim == 3:      # planar: one plane per sample
                a = np.moveaxis(a, 0, -1)
    if a.dtype != np.uint16 or a.ndim != 3 or a.shape[2] < channels:
        return None
    return np.ascontiguousarray(_orient(a[:, :, :channels], orientation))


def _pixel_chunks(png: bytes) -> bytes:
    """The PNG with only IHDR, IDAT and IEND: libpng prints warnings on standard error for
    chunks it finds wanting (an ICC profile with another illuminant, a known-incorrect sRGB profile),
    and the metadata comes from Pillow anyway."""
    out, pos = [png[:8]], 8
    while pos + 8 <= len(png):
        size = int.from_bytes(png[pos:pos + 4], "big")
        kind = png[pos + 4:pos + 8]
        end = pos + 12 + size
        if kind in (b"IHDR", b"IDAT", b"IEND"):
            out.append(png[pos:end])
        if kind == b"IEND":
            break
        pos = end
    return b"".join(out)


def narrow(a: np.ndarray) -> np.ndarray:
    """16-bit samples rounded to 8 bits (Pillow's own narrowing drops the low byte)."""
    return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def encode(a: np.ndarray, fmt: str, exif: bytes | None, icc: bytes | None, source: dict | None,
           png_level: int) -> io.BytesIO:
    """A 16-bit colour PNG or TIFF of (H, W, 3 or 4) uint16 pixels, or a 16-bit grey + alpha PNG of
    (H, W, 2), with the source's metadata."""
    source = source or {}
    if icc and icc[16:20] != (b"GRAY" if a.shape[2] == 2 else b"RGB "):
        icc = None                          # never a profile of another colour space
    if fmt == "PNG":
        return _png(a, exif, icc, source.get("dpi"), source.get("xmp"), source.get("png_text") or {}, png_level,
                    source.get("png_colour") or {})
    if fmt == "TIFF":
        return tiff(a, exif, icc, source)
    raise AecError(f"16-bit colour cannot be written as {fmt}")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(a: np.ndarray, exif: bytes | None, icc: bytes | None, dpi, xmp, text: dict, level: int,
         colour: dict | None = None) -> io.BytesIO:
    """colour: the source's gAMA, cHRM and sRGB chunk bodies by name (sRGB left out beside an ICC
    profile, as the PNG specification asks and Pillow does)."""
    import imagecodecs

    png = memoryview(imagecodecs.png_encode(np.ascontiguousarray(a), level=level))
    # metadata chunks go straight after IHDR (signature 8 bytes + IHDR 25), before the pixel data
    extra = b""
    for kind, body in (colour or {}).items():
        if not (icc and kind == "sRGB"):
            extra += _chunk(kind.encode(), body)
    if icc:
        extra += _chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(icc))
    if dpi:
        ppm = [max(1, round(float(d) / 0.0254)) for d in dpi]
        extra += _chunk(b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1))
    if exif:
        body = exif[6:] if exif.startswith(b"Exif\0\0") else exif
        extra += _chunk(b"eXIf", body)
    if xmp:
        packet = xmp if isinstance(xmp, bytes) else str(xmp).encode()
        extra += _chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + packet)
    for key, value in text.items():
        body = value.encode()
        packed = len(body) > 1024
        extra += _chunk(b"iTXt", key.encode("latin-1", "replace")[:79] + b"\0" + bytes([packed, 0]) + b"\0\0"
                        + (zlib.compress(body) if packed else body))
    out = io.BytesIO()
    for part in (png[:33], extra, png[33:]):           # one copy of the pixel data, not three
        out.write(part)
    return out


def _tifffile():
    """tifffile. Its log is left as the caller set it up: the command line and the desktop app keep
    it off standard error, where its warnings would reach through Python's last-resort handler in the
    middle of one-line output (entrypoint.py)."""
    import tifffile

    return tifffile


# EXIF's own and GPS directories: tifffile will not write their pointer tags, so it writes a
# placeholder tag one below each (nothing else sorts between), which _attach renames and points at the
# directory appended after the image
_SUB_IFDS = {34664: (34665, 0x8769), 34852: (34853, 0x8825)}     # placeholder: (pointer tag, EXIF key)


def tiff(a: np.ndarray, exif: bytes | None, icc: bytes | None, source: dict) -> io.BytesIO:
    """A TIFF of (H, W, 3 or 4) colour or (H, W) / (H, W, 2) grey pixels, 8 or 16 bits, with the
    source's compression (those tifffile writes), dpi, XMP and EXIF, its own and GPS directories
    included (imageio writes 8-bit TIFFs this way when libtiff cannot write those directories)."""
    from PIL import TiffImagePlugin

    tifffile = _tifffile()

    text: dict = {}
    subs: dict = {}
    if exif:
        ex = Image.Exif()
        ex.load(exif)
        text = {tag: ex[tag] for tag in _TIFF_TEXT_TAGS if isinstance(ex.get(tag), str) and ex[tag].isascii()}
        for placeholder, (tag, key) in _SUB_IFDS.items():
            try:
                ifd = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"II", group=tag)
                for k, v in ex.get_ifd(key).items():
                    ifd[k] = v
                if len(ifd):
                    ifd.tobytes(0)                  # a directory Pillow cannot write is left out
                    subs[placeholder] = (tag, ifd)
            except Exception:  # noqa: BLE001 - odd EXIF values: that directory is not kept
                continue
    # tifffile writes these three itself (its own name as the software unless told otherwise)
    named = {"description": text.pop(270, None), "software": text.pop(305, False), "datetime": text.pop(306, None)}
    tags = [(tag, "s", 0, value, True) for tag, value in text.items()]
    tags += [(placeholder, "I", 1, 0, True) for placeholder in subs]
    if source.get("xmp"):
        xmp = source["xmp"] if isinstance(source["xmp"], bytes) else str(source["xmp"]).encode()
        tags.append((700, "B", len(xmp), xmp, True))
    kwargs: dict = {}
    if source.get("dpi"):
        kwargs.update(resolution=tuple(float(d) for d in source["dpi"]), resolutionunit="INCH")
    compression = TIFF_COMPRESSION.get(source.get("compression"))
    buf = io.BytesIO()
    grey = a.ndim == 2 or a.shape[2] <= 2
    alpha = a.ndim == 3 and a.shape[2] in (2, 4)
    tifffile.imwrite(buf, np.ascontiguousarray(a), photometric="minisblack" if grey else "rgb",
                     planarconfig="contig" if a.ndim == 3 else None,
                     extrasamples=("unassalpha",) if alpha else None, compression=compression,
                     iccprofile=icc or None, extratags=tags, metadata=None, byteorder="<", bigtiff=False,
                     **named, **kwargs)
    if subs:
        _attach(buf, subs)
    return buf


def _attach(buf: io.BytesIO, subs: dict) -> None:
    """Append each directory to the little-endian TIFF in buf and turn its placeholder entry in the
    first directory into the pointer to it (a LONG offset, as EXIF writers do)."""
    view = buf.getbuffer()
    first = struct.unpack_from("<I", view, 4)[0]
    entries = {}
    for i in range(struct.unpack_from("<H", view, first)[0]):
        at = first + 2 + 12 * i
        code = struct.unpack_from("<H", view, at)[0]
        if code in subs:
            entries[code] = at
    del view                                            # the buffer grows below
    for placeholder, at in entries.items():
        tag, ifd = subs[placeholder]
        buf.seek(0, io.SEEK_END)
        if buf.tell() % 2:
            buf.write(b"\0")                           # directories start on a word boundary
        pos = buf.tell()
        buf.write(ifd.tobytes(pos))
        buf.seek(at)
        buf.write(struct.pack("<HHII", tag, 4, 1, pos))
    buf.seek(0)
