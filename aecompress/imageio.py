"""Image input and output through Pillow: modes, EXIF orientation, 16-bit, alpha, metadata.

Pixels travel through the package as numpy arrays of shape (H, W, C), uint8 or uint16.
"""

from __future__ import annotations

import functools
import io
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import rgb16
from .cstderr import quiet
from .entrypoint import pillow_limit
from .errors import AecError
from .fsutil import check_writable, refuse_device, write_bytes_atomic

MAX_PIXELS = 400_000_000       # refuse anything larger (about 20000 x 20000)
# what a folder scan picks up: photo and still-image formats Pillow reads (AVIF: Pillow 11.3 and later)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".bmp", ".tif", ".tiff", ".webp", ".avif", ".gif",
                  ".ppm", ".pgm", ".pnm", ".pbm", ".tga", ".jp2", ".j2k", ".qoi"}


def ico_smaller_sizes(pic: "Picture") -> list[tuple[int, int]]:
    """The sizes an ICO holds besides the one read (Pillow reads the largest), smallest first: a
    copy cannot keep their own pixels (imageio writes them again from the one picture)."""
    return [tuple(z) for z in pic.info.get("ico_sizes", []) if tuple(z) != (pic.width, pic.height)]


def is_image_name(p: Path) -> bool:
    """Whether a file's name says it is an image a folder scan should pick up (hidden files are not)."""
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


# Pillow's process-wide settings (its decompression-bomb limit, its logger) are the caller's: only the
# command line and the desktop app set them (entrypoint.py), here when they started before Pillow loaded
pillow_limit()


@dataclass
class Picture:
    pixels: np.ndarray              # (H, W, C) uint8 or uint16
    mode: str                       # "L", "LA", "RGB" or "RGBA"
    bits: int = 8                   # 8 or 16 bits per sample in the source
    format: str | None = None       # Pillow's name of the source format ("PNG", "JPEG", ...)
    exif: bytes | None = None
    icc: bytes | None = None
    info: dict = field(default_factory=dict)    # what a faithful rewrite needs (see _source_info)
    frames: int = 1                 # frames in the source; only the first is read
    notes: list[str] = field(default_factory=list)   # what reading changed in the samples (clipped, scaled)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def has_alpha(self) -> bool:
        return self.mode in ("LA", "RGBA")


def _to_array(im: Image.Image, keyed: bool = True,
              notes: list[str] | None = None) -> tuple[np.ndarray, str, int]:
    """keyed: read a colour-key transparency (PNG tRNS on RGB or greyscale) as an alpha channel.
    notes: gets a line for each change to the sample values (32-bit integer and floating-point
    images, whose range 8- and 16-bit outputs cannot hold)."""
    notes = [] if notes is None else notes
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        a = np.asarray(im).astype(np.uint16)
        key = im.info.get("transparency")
        if keyed and isinstance(key, int) and 0 <= key <= 65535:
            hit = a == key                  # a 16-bit grey key, compared with the 16-bit samples
            if hit.any():
                return np.stack([a, np.where(hit, np.uint16(0), np.uint16(65535))], axis=2), "LA", 16
        return a[:, :, None], "L", 16
    if mode == "I":
        # 32-bit integers say nothing about their range: 8-bit data stored wide stays 8-bit (it read
        # as nearly black when taken for 16-bit), 16-bit stays 16-bit, wider is scaled to 16 bits
        a = np.asarray(im).astype(np.int64)
        if int(a.min(initial=0)) < 0:
            notes.append(f"{int((a < 0).sum()):,} negative samples clipped to 0")
            a = np.clip(a, 0, None)
        top = int(a.max(initial=0))
        if top <= 255:
            return a.astype(np.uint8)[:, :, None], "L", 8
        if top > 65535:
            notes.append(f"32-bit integer samples scaled to 16 bits (the largest, {top:,}, to 65,535)")
            a = (a * 65535 + top // 2) // top
        return a.astype(np.uint16)[:, :, None], "L", 16
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        a = np.where(np.isnan(a), np.float32(0), a)        # NaN samples read as black
        top = 1.0 if a.max(initial=0) <= 1.0 else 255.0
        out = (a < 0) | (a > top)
        notes.append(f"floating-point samples read as 0-{top:g}, stored as 8 bits"
                     + (f" ({int(out.sum()):,} outside that range clipped)" if out.any() else ""))
        a = np.clip(np.round(a / top * 255), 0, 255).astype(np.uint8)
        return a[:, :, None], "L", 8
    if keyed and mode in ("L", "RGB") and "transparency" in im.info:
        # a colour key as alpha, when it keys any pixel (a low-bit-depth greyscale key, which Pillow
        # does not scale with the pixels, keys none)
        keyed_im = im.convert("LA" if mode == "L" else "RGBA")
        if int(np.asarray(keyed_im.getchannel("A")).min()) < 255:
            im = keyed_im
    if mode == "1":
        im = im.convert("L")
    elif mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")
    a = np.asarray(im)
    if a.ndim == 2:
        a = a[:, :, None]
    # Pillow reads 16-bit colour PNG and TIFF as 8-bit RGB(A): read_image takes those from rgb16
    return np.ascontiguousarray(a), im.mode, 8


# Baseline TIFF tags that describe a file's pixel layout rather than the photo. Pillow's getexif()
# returns a TIFF's whole first IFD; written into another file these would contradict its pixels (a
# CMYK or float TIFF's PhotometricInterpretation or SampleFormat on an 8-bit RGB output). The
# resolution tags too: dpi is written from the picture's info (a bogus ResolutionUnit, copied, made
# libtiff refuse the whole file).
_TIFF_LAYOUT_TAGS = frozenset({
    254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281, 282, 283, 284, 292, 293,
    296, 317, 318, 319, 320, 322, 323, 324, 325, 332, 334, 338, 339, 340, 341, 347, 512, 513, 514, 515,
    517, 518, 519, 520, 521, 529, 530, 531, 532, 700, 34377, 34675})

_ICC_SPACES = {"L": b"GRAY", "LA": b"GRAY", "RGB": b"RGB ", "RGBA": b"RGB ", "P": b"RGB ", "CMYK": b"CMYK"}


def icc_colour_space(icc: bytes | None) -> bytes | None:
    """The data colour space an ICC profile describes ('RGB ', 'GRAY', 'CMYK', ...), from its header."""
    return bytes(icc[16:20]) if icc and len(icc) >= 20 else None


def _source_info(im: Image.Image, fmt: str | None, encoded=None) -> dict:
    """What writing a processed copy in the source's own format and mode needs (denoise keeps them):
    source_mode, and when present TIFF compression, dpi, XMP, PNG text, a palette and its
    transparency, a PNG's colour chunks (gAMA, cHRM, sRGB), a JPEG's quantization tables, chroma
    subsampling and progressive mode, a JPEG's or GIF's comment, a JPEG's APP13 (IPTC) segments,
    whether a WebP is lossless. encoded: the file's path or bytes (for what Pillow does not tell)."""
    info: dict = {"source_mode": im.mode}
    if fmt == "TIFF" and im.info.get("compression") not in (None, "raw"):
        info["compression"] = im.info["compression"]
    for key in ("dpi", "xmp"):
        if im.info.get(key):
            info[key] = im.info[key]
    if "dpi" in info and not all(np.isfinite(float(d)) and float(d) > 0 for d in info["dpi"]):
        del info["dpi"]                  # a resolution of 1/0 reads as NaN, which no writer takes
    if fmt == "TIFF" and 282 not in getattr(im, "tag_v2", {}):
        info.pop("dpi", None)            # Pillow reads a TIFF without a resolution as 1 dpi: none is written
    if fmt == "TIFF" and not info.get("xmp") and getattr(im, "tag_v2", {}).get(700):
        info["xmp"] = im.tag_v2[700]
    # not XMP (kept as such) nor ImageMagick's raw profiles (EXIF, XMP, ICC, IPTC as hex text), which
    # would contradict what is rewritten (an EXIF orientation already applied to the pixels)
    text = {k: v for k, v in (getattr(im, "text", None) or {}).items()
            if k != "XML:com.adobe.xmp" and not k.startswith("Raw profile type")} if fmt == "PNG" else {}
    if text:
        info["png_text"] = text
    if fmt == "PNG":
        # the colour chunks (gamma, chromaticities, sRGB intent), which viewers without an ICC
        # profile go by (a linear-light PNG, gAMA 1.0, looks far darker without its chunk)
        colour = {}
        if im.info.get("gamma"):
            colour["gAMA"] = round(im.info["gamma"] * 100000).to_bytes(4, "big")
        if len(im.info.get("chromaticity") or ()) == 8:
            colour["cHRM"] = b"".join(round(v * 100000).to_bytes(4, "big") for v in im.info["chromaticity"])
        if im.info.get("srgb") in (0, 1, 2, 3):
            colour["sRGB"] = bytes([im.info["srgb"]])
        if colour:
            info["png_colour"] = colour
    if im.mode == "P":
        info["palette"] = im.getpalette()
        if "transparency" in im.info:
            info["transparency"] = im.info["transparency"]
    if fmt in ("JPEG", "GIF") and im.info.get("comment"):
        info["comment"] = im.info["comment"]
    if fmt == "JPEG":
        # Photoshop's APP13 segments: IPTC captions, keywords, credit and copyright, which Pillow
        # reads but does not write (copied as they are, as exiftool and ImageMagick copy them)
        app13 = [data for marker, data in getattr(im, "applist", None) or [] if marker == "APP13"]
        if app13:
            info["app13"] = app13
    if fmt == "JPEG" and getattr(im, "quantization", None):
        from PIL import JpegImagePlugin

        # Pillow gives the i-th table to the i-th component (the last to the rest): one per component,
        # in component order, keeps which component had which table
        layer = getattr(im, "layer", None) or []
        if layer and all(c[3] in im.quantization for c in layer):
            tables = [list(im.quantization[c[3]]) for c in layer]
            while len(tables) > 1 and tables[-1] == tables[-2]:
                tables.pop()
        else:
            tables = [list(v) for _, v in sorted(im.quantization.items())]
        # steps above 255 (12-bit precision tables) are not baseline: libjpeg writes them with a
        # "Caution" on standard error; at 255 the step is finer, never coarser
        info["qtables"] = [[min(int(v), 255) for v in t] for t in tables]
        sampling = JpegImagePlugin.get_sampling(im)
        if sampling >= 0:
            info["subsampling"] = sampling
        if im.info.get("progressive") or im.info.get("progression"):
            info["progressive"] = True
    if fmt == "ICO" and im.info.get("sizes"):
        info["ico_sizes"] = sorted(im.info["sizes"])
    if fmt == "WEBP" and encoded is not None and _webp_lossless(encoded):
        info["lossless"] = True
    return info


def _webp_lossless(encoded) -> bool:
    """Whether a WebP file codes its picture losslessly (a VP8L chunk), walking its RIFF chunks."""
    f = io.BytesIO(encoded) if isinstance(encoded, (bytes, bytearray)) else open(encoded, "rb")
    with f:
        if f.read(12)[8:] != b"WEBP":
            return False
        while True:
            head = f.read(8)
            if len(head) < 8:
                return False
            kind, size = head[:4], int.from_bytes(head[4:], "little")
            if kind in (b"VP8L", b"VP8 ", b"ANMF"):
                return kind == b"VP8L"
            f.seek(size + (size & 1), 1)


def _convert_cmyk(im: Image.Image, icc: bytes | None, to: str) -> Image.Image:
    """CMYK to sRGB (to="RGB") or back (to="CMYK") through the file's own CMYK ICC profile when it
    has one (Pillow's plain conversion ignores profiles), else Pillow's plain conversion."""
    if icc_colour_space(icc) == b"CMYK":
        try:
            from PIL import ImageCms

            cmyk, srgb = ImageCms.ImageCmsProfile(io.BytesIO(icc)), ImageCms.createProfile("sRGB")
            src, dst = (cmyk, srgb) if to == "RGB" else (srgb, cmyk)
            return ImageCms.profileToProfile(im, src, dst, outputMode=to)
        except Exception:  # noqa: BLE001 - a damaged profile: fall back to the plain conversion
            pass
    return im.convert(to)


def jpeg_data_too_short(source: Path | bytes, width: int, height: int) -> bool:
    """True when a Huffman-coded JPEG is too short to hold the size its header claims.

    Each 8x8 block of the first component costs at least one bit (its DC difference), so a file
    under ceil(w/8) ceil(h/8) / 8 bytes is damaged: a 10 kB file whose header claims 19000x19000
    pixels, which Pillow would fill in as grey (1 GB of pixels) without a word. Arithmetic-coded
    JPEGs (SOF9-15, rare), whose flat blocks cost less than a bit, are not judged."""
    size = len(source) if isinstance(source, (bytes, bytearray)) else os.path.getsize(source)
    need = -(-width // 8) * -(-height // 8) // 8
    if size >= need:
        return False
    try:
        with (io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")) as f:
            if f.read(2) != b"\xff\xd8":
                return False
            while True:                                   # the segments before the frame header
                head = f.read(4)
                if len(head) < 4 or head[0] != 0xFF:
                    return False
                marker = head[1]
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    return marker < 0xC9                  # SOF0-7: Huffman coding
                f.seek(int.from_bytes(head[2:], "big") - 2, 1)
    except OSError:
        return False


# entropy-coded data ends at the first marker that is not a restart marker (0xFF 0x00 is a stuffed
# 0xFF; fill bytes, more 0xFF, may come before a marker)
_SCAN_END = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")
_RESTART = re.compile(rb"\xff[\xd0-\xd7]")
# what a cut-short scan is given in place of its missing data: no 0xFF, so never a marker; it starts
# with 1 bits, as the missing data zero-filled does not (libjpeg decodes a bad code as 0 too)
_JPEG_FILLER = b"\xfe\xfd\xfb\xf7" + bytes((i * 151 + 17) % 255 for i in range(252))


def _jpeg_scans(data: bytes):
    """The first image of a JPEG file, in outline: (frame, scans, where its last scan ends), with
    frame = (Huffman-coded, width, height, {component: (h, v) sampling factors}) and scans =
    [(component ids, restart interval, restart markers in it)]; None where it does not parse."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, n, frame, interval, scans, end = 2, len(data), None, 0, [], None
    while pos < n and data[pos] == 0xFF:
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            return None
        marker = data[pos]
        pos += 1
        if marker == 0xD9:                                  # end of image
            return (frame, scans, end) if frame and scans else None
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:        # no length
            continue
        length = int.from_bytes(data[pos:pos + 2], "big")
        seg = data[pos + 2:pos + length]
        if len(seg) != length - 2 or length < 2:
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if frame is not None or len(seg) < 6 or len(seg) < 6 + 3 * seg[5]:
                return None
            comps = {seg[6 + 3 * i]: (seg[7 + 3 * i] >> 4, seg[7 + 3 * i] & 15) for i in range(seg[5])}
            if not comps or min(min(c) for c in comps.values()) < 1:
                return None
            frame = (marker < 0xC8, int.from_bytes(seg[3:5], "big"), int.from_bytes(seg[1:3], "big"), comps)
        elif marker == 0xDD and len(seg) >= 2:
            interval = int.from_bytes(seg[:2], "big")
        pos += length
        if marker == 0xDA:
            if frame is None or not seg or len(seg) < 1 + 2 * seg[0]:
                return None
            ids = [seg[1 + 2 * i] for i in range(seg[0])]
            if any(i not in frame[3] for i in ids):
                return None
            m = _SCAN_END.search(data, pos)
            if m is None:
                return None
            end = m.start()
            scans.append((ids, interval, len(_RESTART.findall(data, pos, end))))
            pos = end
    return None


def _scan_mcus(frame, ids: list[int]) -> int:
    """The MCUs of a scan: a block of its component's when it codes one, else the frame's MCUs."""
    def ceil(a: int, b: int) -> int:
        return -(-a // b)

    _, width, height, comps = frame
    hmax, vmax = max(h for h, _ in comps.values()), max(v for _, v in comps.values())
    if len(ids) == 1:
        h, v = comps[ids[0]]
        return ceil(ceil(width * h, hmax), 8) * ceil(ceil(height * v, vmax), 8)
    return ceil(width, 8 * hmax) * ceil(height, 8 * vmax)


def jpeg_cut_short(data: bytes, im: Image.Image) -> bool:
    """True when the last scan of a Huffman-coded JPEG ends before its last block: a file cut short
    with an end marker after the cut (or a marker inside the data). libjpeg then fills the rest in
    grey and warns, and Pillow drops the warning. `im` is the file's first image, loaded.

    Two checks, neither of which can fire on a complete file. A scan with restart markers must hold
    one between each two intervals: fewer mean data is missing. And a complete scan decodes to the
    same pixels whatever follows its last byte (the decoder stops after its last block and skips
    bytes before the next marker), while a cut-short one decodes what is put after the cut in place
    of the grey: so the file is decoded again with other bytes there, and any pixel that changes
    means the data ran out. Arithmetic-coded files (rare), whose decoder reads past the end of the
    data as zeros by design, and anything that does not parse are not judged (False)."""
    try:
        parsed = _jpeg_scans(data)
    except (IndexError, ValueError):                    # a header cut inside: Pillow's to report
        return False
    if parsed is None or not parsed[0][0] or not parsed[0][1] or not parsed[0][2]:
        return False
    frame, scans, end = parsed
    for ids, interval, restarts in scans:
        if interval and restarts < -(-_scan_mcus(frame, ids) // interval) - 1:
            return True
    try:
        with Image.open(io.BytesIO(data[:end] + _JPEG_FILLER + b"\xff\xd9")) as other:
            other.load()
            if other.mode != im.mode or other.size != im.size:
                return False
            width, height = im.size
            rows = max(1, (1 << 20) // max(width, 1))       # compared a megapixel at a time
            return any(im.crop(box).tobytes() != other.crop(box).tobytes()
                       for box in ((0, y, width, min(height, y + rows)) for y in range(0, height, rows)))
    except Exception:  # noqa: BLE001 - the other decode failing says nothing about the file
        return False


def _read_limit() -> int:
    """The most pixels read_image reads: MAX_PIXELS, or less where Pillow's own limit refuses sooner
    (twice PIL.Image.MAX_IMAGE_PIXELS, a library caller's setting; the programs set it to MAX_PIXELS)."""
    pillow = Image.MAX_IMAGE_PIXELS
    return MAX_PIXELS if pillow is None else min(MAX_PIXELS, 2 * pillow)


def read_image(path: str | Path, data: bytes | None = None) -> Picture:
    """Read any image Pillow can, with EXIF orientation applied. One-line AecError on failure.

    data: the file's bytes, already read (from standard input); `path` then only names it.
    Images over MAX_PIXELS are refused; so are those over twice PIL.Image.MAX_IMAGE_PIXELS, Pillow's
    own limit, which is the caller's to set (Pillow's default: about 179 million pixels; the command
    line and the desktop app raise it to MAX_PIXELS)."""
    path = Path(path)
    if data is None and not path.exists():
        raise AecError(f"{path}: a link that leads nowhere (a loop, or a missing target)" if path.is_symlink()
                       else f"{path}: no such file")
    if data is None and path.is_dir():
        raise AecError(f"{path} is a folder")
    if data is None:
        refuse_device(path)
    try:
        with warnings.catch_warnings(), quiet():
            warnings.simplefilter("ignore", UserWarning)        # e.g. Pillow's multi-line note on corrupt EXIF
            # Pillow warns above PIL.Image.MAX_IMAGE_PIXELS (the caller's setting): the limit here is
            # MAX_PIXELS, checked below. Pillow's refusal above twice its limit stands (too_large)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path if data is None else io.BytesIO(data)) as im:
                fmt = im.format
                frames = int(getattr(im, "n_frames", 1) or 1)
                extra = 0
                if fmt == "MPO":
                    # a JPEG with more images after it (an Ultra HDR photo's gain map, a depth map,
                    # a stereo camera's second view): the first is the picture
                    fmt, extra, frames = "JPEG", frames - 1, 1
                if im.width * im.height > MAX_PIXELS:
                    raise AecError(f"{path}: {im.width}x{im.height} is too large (limit {MAX_PIXELS:,} pixels)")
                if fmt == "JPEG" and jpeg_data_too_short(path if data is None else data, im.width, im.height):
                    raise AecError(f"{path}: cannot read image (a {im.width}x{im.height} JPEG needs more data than "
                                   "the file holds: truncated or damaged)")
                deep = rgb16.is_deep(im)
                grey_alpha = deep and rgb16.is_grey_alpha(im)      # both ask the tiles, which load() drops
                planar = deep and fmt == "TIFF" and getattr(im, "tag_v2", {}).get(284) == 2
                # Pillow turns a TIFF upright as it loads it (and drops the tag): the stored orientation
                stored = im.getexif().get(0x0112, 1) if fmt == "TIFF" else None
                im.load()
                if fmt == "JPEG" and jpeg_cut_short(path.read_bytes() if data is None else data, im):
                    raise AecError(f"{path}: cannot read image (its JPEG data ends before the last of its "
                                   f"{im.width}x{im.height} pixels: truncated or damaged)")
                info = _source_info(im, fmt, path if data is None else data)
                icc = im.info.get("icc_profile")
                exif = im.getexif()
                orientation = exif.get(0x0112, 1)
                if orientation != 1:
                    from PIL import ImageOps          # only when there is a rotation to apply (~6 ms import)

                    im = ImageOps.exif_transpose(im)
                if exif and 0x0112 in exif:
                    exif[0x0112] = 1        # orientation already applied to the pixels
                if (stored or orientation) in (5, 6, 7, 8) and 0x8769 in exif:
                    sub = exif.get_ifd(0x8769)      # turned a quarter: the width and height EXIF records swap
                    if 0xA002 in sub and 0xA003 in sub:
                        sub[0xA002], sub[0xA003] = sub[0xA003], sub[0xA002]
                if fmt == "TIFF":
                    for tag in _TIFF_LAYOUT_TAGS & set(exif):
                        del exif[tag]
                exif_bytes = exif.tobytes() if exif else None
                if exif_bytes and exif_bytes[6:10] in (b"II+\0", b"MM\0+"):
                    # a BigTIFF's directory, which no EXIF reader (nor Pillow's TIFF writer) takes:
                    # its tags again, in a classic one
                    classic = Image.Exif()
                    for tag, value in exif.items():
                        classic[tag] = value
                    exif_bytes = classic.tobytes()
                if orientation != 1:
                    info.update((k, v) for k, v in _source_info(im, fmt).items() if k in ("xmp", "dpi"))
                if (stored or orientation) in (5, 6, 7, 8) and info.get("dpi"):
                    info["dpi"] = tuple(info["dpi"])[::-1]      # turned a quarter: width and height swap
                if im.mode == "CMYK":
                    im = _convert_cmyk(im, icc, "RGB")
                notes: list[str] = []
                arr, mode, bits = _to_array(im, keyed=not deep, notes=notes)   # a 16-bit key is not Pillow's 8 bits
                if grey_alpha and mode == "RGBA":
                    arr, mode = arr[:, :, [0, 3]], "LA"     # 16-bit grey + alpha, which Pillow opens as RGBA
                if deep:
                    arr, bits = _deep_pixels(path, data, fmt, arr, bits, stored or orientation, planar)
                    if bits == 16 and mode == "RGB":
                        arr, mode = _key_as_alpha16(arr, im.info.get("transparency"))
    except AecError:
        raise
    except Image.DecompressionBombError:
        raise AecError(f"{path}: image is too large (limit {_read_limit():,} pixels)") from None
    except MemoryError:
        raise AecError(f"{path}: not enough memory to read this image") from None
    except Image.UnidentifiedImageError:
        raise AecError(f"{path}: cannot read image (not a format Pillow reads)") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AecError(f"{path}: cannot read image ({reason})") from None
    if arr.size == 0:
        raise AecError(f"{path}: image is empty")
    if extra:
        info["extra_images"] = extra
    return Picture(arr, mode, bits, fmt, exif_bytes, icc, info, frames, notes)


def _key_as_alpha16(arr: np.ndarray, key) -> tuple[np.ndarray, str]:
    """A 16-bit RGB PNG's colour key (tRNS: three 16-bit samples) as an alpha channel, when it keys
    any pixel, as the 8-bit reading does (_to_array)."""
    if not (isinstance(key, tuple) and len(key) == 3):
        return arr, "RGB"
    keyed = np.ones(arr.shape[:2], dtype=bool)
    for c in range(3):
        keyed &= arr[:, :, c] == key[c]
    if not keyed.any():
        return arr, "RGB"
    alpha = np.where(keyed, np.uint16(0), np.uint16(65535))
    return np.concatenate([arr, alpha[:, :, None]], axis=2), "RGBA"


def _deep_pixels(path: Path, data: bytes | None, fmt: str, arr: np.ndarray, bits: int,
                 orientation: int, planar: bool = False) -> tuple[np.ndarray, int]:
    """The 16-bit samples of a 16-bit colour PNG or TIFF that Pillow read as 8-bit (arr), or arr itself
    unless the other reader gives exactly Pillow's pixels in their high bytes (same layout, same
    orientation)."""
    try:
        a = rgb16.read(path.read_bytes() if data is None else data, fmt, arr.shape[2], orientation)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception:  # noqa: BLE001 - a layout the 16-bit readers do not take: Pillow's 8 bits stand
        return arr, bits
    if a is None or a.shape != arr.shape:
        return arr, bits
    if planar:                      # Pillow misreads uncompressed planar 16-bit colour: nothing to check against
        return a, 16
    for y in range(0, a.shape[0], 256):               # in bands: a whole shifted copy is 6 bytes a pixel
        if not np.array_equal(a[y:y + 256] >> 8, arr[y:y + 256]):
            return arr, bits
    return a, 16


def to_rgb8(pic: Picture) -> np.ndarray:
    """(H, W, 3) uint8: greyscale replicated, alpha dropped, 16-bit rounded to 8-bit."""
    a = pic.pixels
    if a.dtype == np.uint16:
        a = rgb16.narrow(a)
    if pic.mode in ("L", "LA"):
        a = np.repeat(a[:, :, :1], 3, axis=2)
    else:
        a = a[:, :, :3]
    return np.ascontiguousarray(a)


@functools.lru_cache(maxsize=8)
def _srgb_transform(icc: bytes):
    """(LittleCMS transform to sRGB, profile name) for an RGB ICC profile that is not sRGB in effect
    (216 probe colours move by more than one level), else None; built once per profile."""
    from PIL import ImageCms

    try:
        prof = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        # NOCACHE: the transform is shared between threads (the GUI's display and coding), and
        # LittleCMS's one-pixel cache is not thread-safe
        transform = ImageCms.buildTransform(prof, ImageCms.createProfile("sRGB"), "RGB", "RGB",
                                            flags=ImageCms.Flags.NOCACHE)
        probe = np.stack(np.meshgrid(*[np.arange(0, 256, 51, dtype=np.uint8)] * 3), axis=-1).reshape(1, -1, 3)
        moved = np.asarray(ImageCms.applyTransform(Image.fromarray(probe), transform)).astype(np.int16)
    except Exception:  # noqa: BLE001 - a damaged profile: the numbers as they are
        return None
    if np.abs(moved - probe).max() <= 1:
        return None
    return transform, " ".join((ImageCms.getProfileDescription(prof) or "").split()) or "its ICC profile"


def srgb_conversion(icc: bytes | None) -> str | None:
    """The name of an RGB ICC profile whose pixels to_srgb would convert; None when it would not."""
    found = _srgb_transform(bytes(icc)) if icc_colour_space(icc) == b"RGB " else None
    return found[1] if found else None


def to_srgb(rgb: np.ndarray, icc: bytes | None) -> tuple[np.ndarray, str | None]:
    """(H, W, 3) uint8 pixels described by an RGB ICC profile, converted to sRGB (perceptual intent),
    and the profile's name; the pixels as they are and None when there is no RGB profile, when it
    is sRGB in effect, or when it cannot be read."""
    found = _srgb_transform(bytes(icc)) if icc_colour_space(icc) == b"RGB " else None
    if found is None:
        return rgb, None
    from PIL import ImageCms

    try:
        return np.asarray(ImageCms.applyTransform(Image.fromarray(rgb), found[0])), found[1]
    except Exception:  # noqa: BLE001
        return rgb, None


def to_channels8(pic: Picture, channels: int) -> np.ndarray:
    """(H, W, channels) uint8 for a model with 1 or 3 input channels."""
    rgb = to_rgb8(pic)
    if channels == 3:
        return rgb
    if pic.mode in ("L", "LA"):
        return rgb[:, :, :1].copy()
    g = np.round(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    return np.clip(g, 0, 255).astype(np.uint8)[:, :, None]


# the formats Pillow writes 16-bit greyscale in; the others get it rounded to 8 bits
_DEEP_GREY_FORMATS = ("PNG", "TIFF", "PPM", "JPEG2000")


def from_array(a: np.ndarray, mode: str | None = None, fmt: str | None = None) -> Image.Image:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.dtype == np.uint16:
        if a.ndim == 2 and mode != "1":
            if fmt is None or fmt in _DEEP_GREY_FORMATS:
                return Image.fromarray(a)           # 16-bit greyscale stays 16-bit
            return Image.fromarray(rgb16.narrow(a))
        if mode == "L":                             # 16-bit colour to greyscale: 16-bit greyscale (.pgm)
            y = a[:, :, :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            return Image.fromarray(np.clip(np.round(y), 0, 65535).astype(np.uint16))
        a = rgb16.narrow(a)
    im = Image.fromarray(np.ascontiguousarray(a))
    if mode and im.mode != mode:
        im = im.convert(mode)
    return im


_CMYK_FORMATS = ("JPEG", "TIFF")


_ONE_BIT_FORMATS = ("PNG", "TIFF", "BMP", "PPM", "GIF", "PCX", "XBM", "IM")
_PALETTE_FORMATS = ("PNG", "GIF", "BMP", "TIFF")
_QUALITY_FORMATS = ("JPEG", "WEBP", "AVIF")
DEFAULT_QUALITY = 95


def _restore_mode(im: Image.Image, fmt: str, source: dict, icc: bytes | None) -> Image.Image:
    """Back to the source's mode where the output format can hold it: CMYK (through the ICC profile
    it was read with), 1-bit (thresholded at the middle, without dithering) and palette images
    (each pixel onto the nearest entry of its own palette, transparent entries kept)."""
    src = source.get("source_mode")
    if src == "CMYK" and im.mode == "RGB" and fmt in _CMYK_FORMATS:
        return _convert_cmyk(im, icc, "CMYK")
    if src == "1" and im.mode == "L" and fmt in _ONE_BIT_FORMATS:
        return im.convert("1", dither=Image.Dither.NONE)
    if (src == "P" and source.get("palette") and fmt in _PALETTE_FORMATS
            and im.mode == ("RGBA" if "transparency" in source else "RGB")):
        return _to_palette(im, source["palette"], source.get("transparency")) or im
    return im


def _nearest(colours: np.ndarray, entries: np.ndarray) -> np.ndarray:
    """For (N, 3) uint8 colours, the index of the nearest of (K, 3) entries (squared distance; the
    first of equals). Exact, unlike Pillow's quantize(palette=), which finds an approximate one:
    |e|^2 - 2 c.e in float32 is integer arithmetic below 2^24, so a matrix product ranks exactly."""
    packed = colours.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)
    unique, inverse = np.unique(packed, return_inverse=True)
    rgb = np.stack([unique >> 16, (unique >> 8) & 255, unique & 255], axis=1).astype(np.float32)
    e = entries.astype(np.float32)
    e2 = (e * e).sum(axis=1)
    best = np.empty(unique.size, np.intp)
    for i in range(0, unique.size, 16384):                   # bounded memory: 16384 x K scores a step
        best[i:i + 16384] = (e2[None, :] - 2 * (rgb[i:i + 16384] @ e.T)).argmin(axis=1)
    return best[inverse.ravel()]


def _to_palette(im: Image.Image, palette: list, transparency=None) -> Image.Image | None:
    """RGB or RGBA pixels onto a palette. With transparency (a single transparent index, or PNG's
    per-entry alpha table), each pixel takes the nearest colour among the entries of its own alpha;
    None when a pixel's alpha is no entry's (the alpha was not the palette's)."""
    entries = np.asarray(palette, np.uint8)[: len(palette) // 3 * 3].reshape(-1, 3)
    n = len(entries)
    alpha_of = np.full(n, 255, np.uint8)
    if isinstance(transparency, int):
        if not 0 <= transparency < n:
            return None
        alpha_of[transparency] = 0
    elif transparency is not None:
        t = np.frombuffer(bytes(transparency), np.uint8)[:n]
        alpha_of[: t.size] = t
    a = np.asarray(im)
    rgb = a[:, :, :3].reshape(-1, 3)
    alpha = a[:, :, 3].ravel() if im.mode == "RGBA" else np.full(rgb.shape[0], 255, np.uint8)
    index = np.zeros(rgb.shape[0], np.uint8)
    for value in np.unique(alpha):
        allowed = np.flatnonzero(alpha_of == value)
        if allowed.size == 0:
            return None
        where = alpha == value
        index[where] = allowed[_nearest(rgb[where], entries[allowed])]
    out = Image.fromarray(index.reshape(a.shape[:2]), "P")
    out.putpalette(palette)
    if transparency is not None:
        out.info["transparency"] = transparency
    return out


def _prepared(pixels: np.ndarray, fmt: str, mode: str | None, exif: bytes | None, icc: bytes | None,
              quality: int | None, png_level: int, source: dict | None = None) -> tuple[Image.Image, dict]:
    im = from_array(pixels, mode, fmt)
    kwargs: dict = {}
    source = source or {}
    if source:
        im = _restore_mode(im, fmt, source, icc)
        if fmt == "TIFF" and source.get("compression"):
            kwargs["compression"] = source["compression"]
        if source.get("dpi") is not None:
            kwargs["dpi"] = source["dpi"]
        xmp = source.get("xmp")
        if fmt == "PNG" and (xmp or source.get("png_colour") or source.get("png_text")):
            from PIL.PngImagePlugin import PngInfo

            info = kwargs["pnginfo"] = PngInfo()  # Pillow's PNG writer takes no xmp= of its own
            if xmp:
                info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8", "replace") if isinstance(xmp, bytes)
                              else str(xmp), zip=False)
            for kind, body in (source.get("png_colour") or {}).items():   # Pillow drops sRGB beside an ICC profile
                info.add(kind.encode(), body)
            for key, value in (source.get("png_text") or {}).items():
                info.add_text(key, value, zip=len(value) > 1024)
        elif xmp and fmt == "TIFF":
            kwargs["tiffinfo"] = {700: xmp if isinstance(xmp, bytes) else str(xmp).encode()}
        elif xmp:
            kwargs["xmp"] = xmp
        if im.mode == "P" and "transparency" in im.info:
            kwargs["transparency"] = im.info["transparency"]
        if im.mode == "P" and fmt == "GIF":
            kwargs["optimize"] = False      # the palette as it was: Pillow's default drops unused entries and renumbers
    if exif:
        kwargs["exif"] = exif
    if fmt in ("JPEG", "GIF") and source.get("comment"):
        kwargs["comment"] = source["comment"]
    if icc and icc_colour_space(icc) == _ICC_SPACES.get(im.mode, icc_colour_space(icc)):
        kwargs["icc_profile"] = icc         # never a profile for another colour space (a CMYK one on RGB)
    if fmt == "JPEG":
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGB")
        if quality is None and source.get("qtables") and source.get("source_mode") in ("RGB", "L", "CMYK", "YCbCr"):
            # the source's own quantization tables and chroma subsampling: its quality, as it was
            # chosen (a q95 4:4:4 photo stays that; cjpeg or ImageMagick keep it alike)
            kwargs["qtables"] = source["qtables"]
            if "subsampling" in source and im.mode == "RGB":
                kwargs["subsampling"] = source["subsampling"]
        else:
            kwargs["quality"] = DEFAULT_QUALITY if quality is None else quality
            if "subsampling" in source and im.mode == "RGB":
                kwargs["subsampling"] = source["subsampling"]
        if source.get("progressive"):
            kwargs["progressive"] = True
        if source.get("app13"):
            kwargs["extra"] = b"".join(b"\xff\xed" + (len(d) + 2).to_bytes(2, "big") + d for d in source["app13"])
    elif fmt == "WEBP" and source.get("lossless"):
        kwargs.update(lossless=True, exact=True)     # exact: colour under transparent pixels kept too
    elif fmt in _QUALITY_FORMATS or (fmt == "TIFF" and kwargs.get("compression") == "jpeg"):
        kwargs["quality"] = DEFAULT_QUALITY if quality is None else quality
    if fmt == "PNG":
        kwargs["compress_level"] = png_level
    if fmt == "ICNS" and im.size != (1024, 1024):
        # Pillow's writer stretches any picture to a 1024x1024 square (and its smaller copies)
        raise AecError(f"an ICNS icon is a 1024x1024 square, this image is {im.width}x{im.height}")
    if fmt == "ICO":
        if max(im.size) > 256:
            raise AecError(f"an ICO image is at most 256x256 pixels, this one is {im.width}x{im.height}")
        kwargs["sizes"] = [im.size] + [tuple(z) for z in source.get("ico_sizes", []) if max(z) < max(im.size)]
    return im, kwargs


def format_named(path: str | Path, source: Path | None = None, source_format: str | None = None) -> str | None:
    """The format a processed copy is written in: the source's own (None here: save_image keeps it)
    when the output's name has no extension or the source's extension, else the format its
    extension names (`denoise photo.png -o photo.jpg` writes a JPEG). AecError for an extension
    no Pillow writer knows."""
    suffix = Path(path).suffix.lower()
    if not suffix or (source is not None and suffix == Path(source).suffix.lower()):
        return source_format
    Image.preinit()
    fmt = Image.EXTENSION.get(suffix) or Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        raise AecError(f"{path}: unknown image format '{Path(path).suffix}' (no writer for it)")
    if fmt == "MPO" or (fmt == "JPEG" and source_format == "MPO"):
        fmt = "JPEG"
    return fmt


def _palette_note(pixels: np.ndarray) -> str | None:
    """What a GIF's palette does to a colour picture of more than 256 colours, or None."""
    if pixels.ndim != 3 or pixels.shape[2] < 3:
        return None
    rgb = pixels[..., :3].astype(np.uint64)              # 8 or 16 bits a sample: one integer a colour
    if len(np.unique((rgb[..., 0] << 32) | (rgb[..., 1] << 16) | rgb[..., 2])) <= 256:
        return None
    return "a GIF holds 256 colours at most: the picture was reduced to a 256-colour palette (.png keeps every colour)"


def save_image(path: str | Path, pixels: np.ndarray, force: bool = False, mode: str | None = None,
               exif: bytes | None = None, icc: bytes | None = None, format: str | None = None,
               quality: int | None = None, png_level: int = 1, source: dict | None = None) -> str | None:
    """Write pixels atomically in the format the extension (or `format`) names. Returns a note on
    what the format did to the picture, or None: a photo written to a GIF lost colours to its
    palette (a palette source's own palette goes back to it, with nothing to say).

    quality: of a lossy format (JPEG, lossy WebP, AVIF, JPEG-in-TIFF); None: a JPEG source's own
    quantization tables for a JPEG, else DEFAULT_QUALITY. A lossless source stays lossless.

    source: a Picture's `info` from read_image, to write a processed copy the way the source was
    (its CMYK or palette mode, TIFF compression, dpi and XMP), as `aecompress denoise` does.

    PNG uses zlib level 1 by default: measured on a decoded 768x512 photo, 5x faster than Pillow's
    default level 6 (28 vs 138 ms) for a file 8% larger, and 1.5x faster than level 3 for 2.7% more."""
    path = Path(path)
    Image.preinit()      # the common formats; importing every plugin (registered_extensions) costs ~50 ms
    fmt = (format or ("PNG" if not path.suffix else None) or Image.EXTENSION.get(path.suffix.lower())
           or Image.registered_extensions().get(path.suffix.lower()))           # no extension: PNG
    if fmt is None:
        raise AecError(f"{path}: unknown image format '{path.suffix}'")
    if fmt == "MPO":
        fmt = "JPEG"                    # one picture: a JPEG (Pillow's MPO writer ignores quality and tables)
    if format is None:
        # Pillow writes by mode (colour: P6) whatever the name; .pgm and .pbm name greyscale and bitmap
        colour = pixels.ndim == 3 and pixels.shape[2] >= 3
        mode = {".pgm": "L" if colour else mode, ".pbm": "1"}.get(path.suffix.lower(), mode)
    check_writable(path, force)
    try:
        buf = _encoded(pixels, fmt, mode, quality, png_level, exif, icc, source)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise AecError(f"{path}: cannot save as {fmt} ({exc})") from None
    # encoded in memory (the file's size, written without a copy), then written and synced by our own
    # writer: Pillow's JPEG encoder, writing to a file on a full disk, can return normally with the
    # file cut short (seen with Pillow 13)
    write_bytes_atomic(path, buf.getbuffer(), force)
    if fmt == "GIF" and (source or {}).get("source_mode") != "P":
        return _palette_note(pixels)
    return None


def _encoded(pixels: np.ndarray, format: str, mode: str | None, quality: int | None, png_level: int,
             exif: bytes | None = None, icc: bytes | None = None, source: dict | None = None) -> io.BytesIO:
    with quiet():                    # libtiff and libjpeg print their complaints on descriptor 2
        if (pixels.dtype == np.uint16 and pixels.ndim == 3 and format in rgb16.FORMATS
                and (pixels.shape[2] in (3, 4) or (pixels.shape[2] == 2 and format == "PNG"))):
            return rgb16.encode(pixels, format, exif, icc, source, png_level)
        im, kwargs = _prepared(pixels, format, mode, exif, icc, quality, png_level, source)
        buf = io.BytesIO()
        try:
            im.save(buf, format=format, **kwargs)
        except RuntimeError:
            # libtiff (Pillow's writer of compressed TIFFs) refuses EXIF with its own or GPS
            # directory, as nearly every camera's is ("Error setting from dictionary"): tifffile
            # writes greyscale and colour TIFFs with the same compression; other modes (palette,
            # 1-bit, CMYK) and JPEG-in-TIFF keep EXIF's first directory only
            if not (format == "TIFF" and kwargs.get("exif")):
                raise
            if im.mode in ("L", "LA", "RGB", "RGBA", "I;16") and rgb16.TIFF_COMPRESSION.get(kwargs.get("compression")):
                return rgb16.tiff(np.asarray(im), kwargs["exif"], kwargs.get("icc_profile"), source or {})
            kwargs["exif"] = _first_directory(kwargs["exif"])
            buf = io.BytesIO()
            im.save(buf, format=format, **kwargs)
        return buf


def _first_directory(exif: bytes) -> bytes:
    """EXIF without its own, GPS and interoperability directories (the pointers to them dropped)."""
    ex = Image.Exif()
    ex.load(exif)
    for tag in (0x8769, 0x8825, 0xA005):
        if tag in ex:
            del ex[tag]
    return ex.tobytes()


def image_bytes(pixels: np.ndarray, format: str = "PNG", mode: str | None = None, quality: int = 95,
                png_level: int = 1) -> bytes:
    """The image file save_image would write, in memory (for standard output)."""
    return _encoded(pixels, format, mode, quality, png_level).getvalue()
