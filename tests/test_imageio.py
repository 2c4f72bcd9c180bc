"""Image reading: EXIF orientation is applied to the pixels and cleared in the kept metadata."""

import numpy as np
from PIL import Image

import pytest

from aecompress.imageio import read_image, save_image

from .conftest import smooth_image


def test_exif_orientation_is_applied(tmp_path):
    img = smooth_image(40, 60)                               # 60 wide, 40 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6                                         # "rotate 90 degrees clockwise to display"
    Image.fromarray(img).save(tmp_path / "r.png", exif=exif)
    pic = read_image(tmp_path / "r.png")
    assert pic.pixels.shape == (60, 40, 3)                   # displayed upright: 40 wide, 60 high
    assert np.array_equal(pic.pixels, np.rot90(img, k=-1))
    kept = Image.Exif()
    kept.load(pic.exif)
    assert kept.get(0x0112) == 1                             # already applied: not applied twice


def test_no_orientation_keeps_the_pixels(tmp_path):
    img = smooth_image(30, 50)
    Image.fromarray(img).save(tmp_path / "p.png")
    assert np.array_equal(read_image(tmp_path / "p.png").pixels, img)


def test_animated_images_report_their_frame_count(tmp_path):
    frames = [Image.fromarray(smooth_image(24, 32, seed=i)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "still.gif")
    anim = read_image(tmp_path / "anim.gif")
    assert anim.frames == 3 and anim.pixels.shape == (24, 32, 3)
    assert read_image(tmp_path / "still.gif").frames == 1


def test_integer_images_keep_their_range(tmp_path):
    """16-bit greyscale stays 16-bit; 32-bit integer images are read by the range they use."""
    from aecompress.imageio import read_image

    ramp = np.arange(64 * 80, dtype=np.int64).reshape(64, 80)
    Image.fromarray((ramp * 12).astype(np.uint16)).save(tmp_path / "g16.png")
    pic = read_image(tmp_path / "g16.png")
    assert (pic.bits, pic.mode) == (16, "L") and np.array_equal(pic.pixels[:, :, 0], ramp * 12)

    small = (ramp % 200).astype(np.int32)                  # 8-bit data stored as 32-bit integers
    Image.fromarray(small, "I").save(tmp_path / "i8.tif")
    pic = read_image(tmp_path / "i8.tif")
    assert (pic.bits, pic.pixels.dtype) == (8, np.uint8) and np.array_equal(pic.pixels[:, :, 0], small)

    wide = (ramp * 40).astype(np.int32)                    # beyond 16 bits: scaled to them
    Image.fromarray(wide, "I").save(tmp_path / "i32.tif")
    pic = read_image(tmp_path / "i32.tif")
    assert pic.bits == 16 and int(pic.pixels.max()) == 65535 and pic.pixels[0, 0, 0] == 0


def test_a_float_image_with_nan_reads_quietly(tmp_path):
    """NaN samples of a float TIFF read as black, without numpy's cast warning on stderr."""
    import warnings

    a = np.linspace(0, 1, 12 * 10, dtype=np.float32).reshape(12, 10)
    a[3, 4] = np.nan
    Image.fromarray(a, "F").save(tmp_path / "f.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pic = read_image(tmp_path / "f.tif")
    assert pic.pixels[3, 4].max() == 0 and pic.pixels[11, 9].max() == 255


def _rgb16_file(path, pixels, fmt, orientation=1, **meta):
    """A 16-bit colour PNG or TIFF written by libraries other than ours (OpenCV-free: imagecodecs
    and tifffile directly), with an EXIF orientation when asked."""
    import imagecodecs
    import tifffile

    exif = Image.Exif()
    exif[0x0112] = orientation
    if fmt == "PNG":
        from aecompress.rgb16 import _chunk

        png = bytes(imagecodecs.png_encode(pixels))
        path.write_bytes(png[:33] + _chunk(b"eXIf", exif.tobytes()[6:]) + png[33:])
    else:
        tifffile.imwrite(path, pixels, photometric="rgb", compression=meta.get("compression"),
                         extrasamples=("unassalpha",) if pixels.shape[2] == 4 else None,
                         extratags=[(274, "H", 1, orientation, True)], metadata=None)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize("channels", [3, 4])
def test_16_bit_colour_is_read_at_16_bits_and_oriented(tmp_path, fmt, channels):
    """Pillow narrows 16-bit colour to 8 bits; read_image keeps all 16, oriented as Pillow orients
    the narrowed pixels (checked for every EXIF orientation against Pillow's own exif_transpose)."""
    from PIL import ImageOps

    rng = np.random.default_rng(channels)
    a = rng.integers(0, 65536, (5, 7, channels), dtype=np.uint16)
    for orientation in range(1, 9):
        p = tmp_path / f"o{orientation}.{fmt.lower()}"
        _rgb16_file(p, a, fmt, orientation, compression="lzw")
        pic = read_image(p)
        with Image.open(p) as im:
            narrowed = np.asarray(ImageOps.exif_transpose(im))
        assert pic.bits == 16 and pic.pixels.dtype == np.uint16, orientation
        assert pic.mode == ("RGBA" if channels == 4 else "RGB")
        assert np.array_equal(pic.pixels >> 8, narrowed), orientation
        if orientation == 1:
            assert np.array_equal(pic.pixels, a)


@pytest.mark.parametrize("fmt,suffix", [("PNG", "png"), ("TIFF", "tif")])
def test_16_bit_colour_is_written_at_16_bits_with_its_metadata(tmp_path, fmt, suffix):
    from PIL import ImageCms

    a = np.random.default_rng(1).integers(0, 65536, (6, 9, 3), dtype=np.uint16)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F], exif[0x0131] = "TestCam", "darktable"       # Make, Software
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    source = {"source_mode": "RGB", "dpi": (300, 300), "xmp": xmp, "compression": "tiff_lzw"}
    save_image(tmp_path / f"o.{suffix}", a, exif=exif.tobytes(), icc=icc, format=fmt, source=source)
    pic = read_image(tmp_path / f"o.{suffix}")
    assert pic.bits == 16 and np.array_equal(pic.pixels, a) and pic.icc == icc
    with Image.open(tmp_path / f"o.{suffix}") as im:
        assert im.format == fmt and im.size == (9, 6)
        assert im.getexif().get(0x010F) == "TestCam" and im.getexif().get(0x0131) == "darktable"
        assert round(im.info["dpi"][0]) == 300
        assert xmp in (im.info.get("xmp") or b"")
        if fmt == "TIFF":
            assert im.info["compression"] == "tiff_lzw"


def test_16_bit_colour_goes_to_8_bit_formats_rounded(tmp_path):
    a = np.full((4, 4, 3), 255, np.uint16)                    # 0.992 on the 8-bit scale (dropping the low byte: 0)
    save_image(tmp_path / "o.bmp", a)
    assert np.all(np.asarray(Image.open(tmp_path / "o.bmp")) == 1)


def test_interlaced_16_bit_png_reads_quietly_at_8_bits(tmp_path, capfd):
    """libpng (through imagecodecs) prints a warning on standard error for Adam7 files: those stay
    with Pillow's 8-bit reading, and nothing is printed."""
    import struct
    import zlib

    from aecompress.rgb16 import _chunk

    a = np.random.default_rng(2).integers(0, 65536, (9, 11, 3), dtype=np.uint16)
    raw = b""
    for y0, x0, dy, dx in [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2),
                           (1, 0, 2, 1)]:                      # the seven Adam7 passes, unfiltered rows
        sub = a[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\0" + row.astype(">u2").tobytes() for row in sub)
    ihdr = struct.pack(">IIBBBBB", 11, 9, 16, 2, 0, 0, 1)
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
    (tmp_path / "i.png").write_bytes(png)
    pic = read_image(tmp_path / "i.png")
    assert pic.bits == 8 and np.array_equal(pic.pixels, (a >> 8).astype(np.uint8))
    assert capfd.readouterr().err == ""


# ------------------------------------------------- rewriting a file the way it was (denoise's output)
def _rewrite(src, dst, pixels=None):
    """What `aecompress denoise` does around the network: read, then write in the source's way."""
    pic = read_image(src)
    save_image(dst, pic.pixels if pixels is None else pixels, mode=pic.mode, exif=pic.exif, icc=pic.icc,
               format=pic.format, source=pic.info)
    return pic


def test_jpeg_keeps_its_quantization_subsampling_and_progressive_mode(tmp_path):
    from PIL import JpegImagePlugin

    img = Image.fromarray(smooth_image(64, 80))
    for name, kw in [("a.jpg", dict(quality=97, subsampling=0, progressive=True)),
                     ("b.jpg", dict(quality=50, subsampling=2)), ("c.jpg", dict(quality=90, subsampling=1))]:
        img.save(tmp_path / name, **kw)
        _rewrite(tmp_path / name, tmp_path / f"out-{name}")
        with Image.open(tmp_path / name) as a, Image.open(tmp_path / f"out-{name}") as b:
            assert b.quantization == a.quantization, name
            assert JpegImagePlugin.get_sampling(b) == kw["subsampling"], name
            assert bool(b.info.get("progressive")) == bool(kw.get("progressive")), name


def test_lossless_webp_stays_lossless(tmp_path):
    rgba = np.concatenate([smooth_image(30, 40), np.full((30, 40, 1), 7, np.uint8)], axis=2)
    rgba[:5, :5, 3] = 0                                        # colour under transparent pixels kept too
    Image.fromarray(rgba, "RGBA").save(tmp_path / "l.webp", lossless=True, exact=True)
    Image.fromarray(smooth_image(30, 40)).save(tmp_path / "q.webp", quality=80)
    _rewrite(tmp_path / "l.webp", tmp_path / "out-l.webp")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out-l.webp")), rgba)
    assert b"VP8L" in (tmp_path / "out-l.webp").read_bytes()
    _rewrite(tmp_path / "q.webp", tmp_path / "out-q.webp")
    assert b"VP8L" not in (tmp_path / "out-q.webp").read_bytes()


def test_xmp_and_png_text_are_kept(tmp_path):
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="r"/><!-- kept --></x:xmpmeta>'
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp.decode())
    info.add_text("Title", "a cat")
    img = Image.fromarray(smooth_image(20, 30))
    img.save(tmp_path / "x.png", pnginfo=info)
    img.save(tmp_path / "x.tif", tiffinfo={700: xmp})
    for name in ("x.png", "x.tif"):
        _rewrite(tmp_path / name, tmp_path / f"out-{name}")
        with Image.open(tmp_path / f"out-{name}") as im:
            kept = im.info.get("xmp") if name.endswith("png") else im.tag_v2.get(700)
            assert b"<!-- kept -->" in (kept.encode() if isinstance(kept, str) else kept or b""), name
    assert Image.open(tmp_path / "out-x.png").text["Title"] == "a cat"


def _iptc_app13(caption: bytes) -> bytes:
    """An APP13 segment's payload: Photoshop's resource 0x0404 holding an IPTC caption record."""
    record = b"\x1c\x02\x78" + len(caption).to_bytes(2, "big") + caption
    resource = b"8BIM\x04\x04\0\0" + len(record).to_bytes(4, "big") + record + b"\0" * (len(record) & 1)
    return b"Photoshop 3.0\0" + resource


def test_comments_and_iptc_are_kept(tmp_path):
    img = Image.fromarray(smooth_image(24, 32))
    img.save(tmp_path / "c.jpg", quality=90, comment=b"a rainy day")
    app13 = _iptc_app13(b"A cat in the rain")
    data = (tmp_path / "c.jpg").read_bytes()
    (tmp_path / "c.jpg").write_bytes(data[:20] + b"\xff\xed" + (len(app13) + 2).to_bytes(2, "big") + app13
                                     + data[20:])              # after the JFIF segment
    img.quantize(16).save(tmp_path / "c.gif", comment=b"a gif comment")
    for name, comment in (("c.jpg", b"a rainy day"), ("c.gif", b"a gif comment")):
        _rewrite(tmp_path / name, tmp_path / f"out-{name}")
        with Image.open(tmp_path / f"out-{name}") as im:
            assert im.info.get("comment") == comment, name
    with Image.open(tmp_path / "out-c.jpg") as im:
        assert [d for m, d in im.applist if m == "APP13"] == [app13]


def test_png_colour_chunks_are_kept_at_8_and_16_bits(tmp_path):
    """gAMA, cHRM and sRGB: without a profile, what a viewer goes by (a linear PNG, gAMA 1.0, shows
    far darker without its chunk). sRGB is left out beside an ICC profile, as the specification asks."""
    import imagecodecs
    from PIL import ImageCms

    from aecompress.rgb16 import _chunk

    gama = _chunk(b"gAMA", (100000).to_bytes(4, "big"))
    chrm = _chunk(b"cHRM", b"".join(v.to_bytes(4, "big") for v in (31270, 32900, 64000, 33000, 30000, 60000,
                                                                      15000, 6000)))
    srgb = _chunk(b"sRGB", b"\1")
    eight = Image.fromarray(smooth_image(12, 16))
    eight.save(tmp_path / "e.png")
    sixteen = bytes(imagecodecs.png_encode(smooth_image(12, 16).astype(np.uint16) * 257))
    for name, png, chunks in (("e.png", (tmp_path / "e.png").read_bytes(), gama + chrm),
                              ("s.png", (tmp_path / "e.png").read_bytes(), srgb + gama),
                              ("d.png", sixteen, gama + chrm), ("ds.png", sixteen, srgb)):
        (tmp_path / name).write_bytes(png[:33] + chunks + png[33:])
        _rewrite(tmp_path / name, tmp_path / f"out-{name}")
        with Image.open(tmp_path / name) as a, Image.open(tmp_path / f"out-{name}") as b:
            for key in ("gamma", "chromaticity", "srgb"):
                assert b.info.get(key) == a.info.get(key), (name, key)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for name in ("s.png", "ds.png"):
        pic = read_image(tmp_path / name)
        assert pic.bits == (16 if name == "ds.png" else 8)
        save_image(tmp_path / f"icc-{name}", pic.pixels, icc=icc, format="PNG", source=pic.info)
        with Image.open(tmp_path / f"icc-{name}") as b:
            assert b.info["icc_profile"] == icc and "srgb" not in b.info, name


def test_a_tiff_without_a_resolution_gets_none(tmp_path):
    """Pillow reads a TIFF without resolution tags as 1 dpi; written out, that made a photo's print
    size hundreds of inches. A resolution the TIFF has is kept."""
    img = Image.fromarray(smooth_image(12, 16))
    img.save(tmp_path / "n.tif")
    img.save(tmp_path / "r.tif", dpi=(300, 300))
    for name, suffix in (("n.tif", "tif"), ("n.tif", "png"), ("r.tif", "tif")):
        pic = read_image(tmp_path / name)
        out = tmp_path / f"out-{name}.{suffix}"
        save_image(out, pic.pixels, mode=pic.mode, exif=pic.exif, icc=pic.icc, source=pic.info)
        with Image.open(out) as im:
            tags = getattr(im, "tag_v2", {})
            if name == "r.tif":
                assert tags.get(282) == 300 and tags.get(296) == 2
            else:
                assert 282 not in tags and 296 not in tags and b"pHYs" not in out.read_bytes(), suffix


def test_one_bit_and_palette_images_keep_their_mode(tmp_path):
    bits = smooth_image(24, 32)[:, :, 0] > 128
    Image.fromarray(bits).save(tmp_path / "b.tif", compression="group4")
    Image.fromarray(bits).save(tmp_path / "b.png")
    pal = Image.fromarray(smooth_image(24, 32)).quantize(16)
    pal.save(tmp_path / "t.png", transparency=3)                        # one transparent index
    pal.save(tmp_path / "u.png", transparency=bytes([0, 128] + [255] * 14))  # an alpha table
    for name in ("b.tif", "b.png", "t.png", "u.png"):
        _rewrite(tmp_path / name, tmp_path / f"out-{name}")
        with Image.open(tmp_path / name) as a, Image.open(tmp_path / f"out-{name}") as b:
            assert b.mode == a.mode and np.array_equal(np.asarray(b), np.asarray(a)), name
            assert b.info.get("transparency") == a.info.get("transparency"), name
            assert b.info.get("compression") == a.info.get("compression"), name


def test_colour_key_transparency_reads_as_alpha(tmp_path):
    rgb = smooth_image(10, 12)
    rgb[:3, :3] = 0
    Image.fromarray(rgb).save(tmp_path / "k.png", transparency=(0, 0, 0))
    pic = read_image(tmp_path / "k.png")
    assert pic.mode == "RGBA" and pic.has_alpha
    assert np.all(pic.pixels[:3, :3, 3] == 0) and np.all(pic.pixels[3:, 3:, 3] == 255)


def test_rotation_swaps_dpi_and_exif_size_and_ico_keeps_its_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    exif.get_ifd(0x8769).update({0xA002: 30, 0xA003: 20})       # PixelXDimension, PixelYDimension as stored
    Image.fromarray(smooth_image(20, 30)).save(tmp_path / "r.jpg", dpi=(300, 150), exif=exif)
    pic = _rewrite(tmp_path / "r.jpg", tmp_path / "out-r.jpg")
    assert pic.pixels.shape[:2] == (30, 20)
    with Image.open(tmp_path / "out-r.jpg") as im:
        assert im.size == (20, 30) and tuple(round(d) for d in im.info["dpi"]) == (150, 300)
        kept = im.getexif()
        assert kept[0x0112] == 1 and dict(kept.get_ifd(0x8769)) == {0xA002: 20, 0xA003: 30}
    Image.fromarray(smooth_image(60, 100)).save(tmp_path / "i.ico", sizes=[(100, 60)])
    _rewrite(tmp_path / "i.ico", tmp_path / "out-i.ico")
    assert Image.open(tmp_path / "out-i.ico").size == (100, 60)
    with pytest.raises(Exception, match="at most 256x256"):
        save_image(tmp_path / "big.ico", smooth_image(300, 20))


def test_pgm_and_pbm_names_get_grey_and_bitmap_files(tmp_path):
    img = smooth_image(12, 16)
    for name, mode in [("g.pgm", "L"), ("b.pbm", "1"), ("c.ppm", "RGB")]:
        save_image(tmp_path / name, img)
        assert Image.open(tmp_path / name).mode == mode, name


def test_a_jpeg_with_extra_images_is_its_first_picture(tmp_path):
    """Phones save Ultra HDR photos as a JPEG followed by a gain map (Pillow: MPO, 2 frames); they
    are photos, not animations: read as the JPEG they display as."""
    img = Image.fromarray(smooth_image(40, 60))
    img.save(tmp_path / "u.jpg", format="MPO", save_all=True, append_images=[img.resize((15, 10))], quality=90)
    assert Image.open(tmp_path / "u.jpg").format == "MPO"
    pic = read_image(tmp_path / "u.jpg")
    assert (pic.format, pic.frames, pic.info["extra_images"], pic.pixels.shape) == ("JPEG", 1, 1, (40, 60, 3))
    _rewrite(tmp_path / "u.jpg", tmp_path / "out.jpg")
    with Image.open(tmp_path / "out.jpg") as out, Image.open(tmp_path / "u.jpg") as src:
        assert out.format == "JPEG" and out.quantization == src.quantization


# ------------------------------------------------- review findings on the rewrite path
def test_palette_rewrite_keeps_every_index(tmp_path):
    """Unchanged pixels go back to exactly their own palette entries (Pillow's quantize(palette=)
    finds only an approximate nearest colour: 9% of a 256-colour photo's indices moved)."""
    photo = Image.fromarray(smooth_image(48, 64, seed=3)).quantize(256)
    grey = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (8, 1)), "L").convert("P")
    photo.save(tmp_path / "p.png")
    photo.save(tmp_path / "pt.png", transparency=5)
    grey.save(tmp_path / "g.png", transparency=0)
    # a GIF whose pixels leave palette entries unused, as a denoised one does: Pillow's GIF writer
    # would drop those and renumber the rest
    holes = Image.fromarray((np.arange(48 * 64, dtype=np.uint8).reshape(48, 64) % 7) * 2, "P")
    holes.putpalette([v for i in range(16) for v in (i * 16, 255 - i * 16, i * 8)])
    holes.save(tmp_path / "h.gif", optimize=False, transparency=4)
    for name in ("p.png", "pt.png", "g.png", "h.gif"):
        _rewrite(tmp_path / name, tmp_path / f"out-{name}")
        with Image.open(tmp_path / name) as a, Image.open(tmp_path / f"out-{name}") as b:
            assert b.mode == "P" and np.array_equal(np.asarray(b), np.asarray(a)), name
            assert b.getpalette() == a.getpalette() and b.info.get("transparency") == a.info.get("transparency")


def _jpeg_with_table_ids(path, ids):
    """A JPEG whose components use the quantization tables numbered `ids` (Pillow writes 0, 1, ...):
    its DQT table numbers and frame header selectors renumbered in place."""
    img = Image.fromarray(smooth_image(32, 40))
    img.save(path, qtables=[[10] * 64, [40] * 64], subsampling=2)
    b = bytearray(path.read_bytes())
    i = 2
    while i < len(b):
        marker, size = b[i + 1], int.from_bytes(b[i + 2:i + 4], "big")
        if marker == 0xDB:
            j = i + 4
            while j < i + 2 + size:
                b[j] = (b[j] & 0xF0) | ids[b[j] & 0x0F]
                j += 65
        elif marker == 0xC0:
            for c in range(b[i + 9]):
                b[i + 12 + 3 * c] = ids[b[i + 12 + 3 * c]]
            break
        i += 2 + size
    path.write_bytes(bytes(b))


def test_jpeg_rewrite_keeps_which_component_has_which_table(tmp_path):
    _jpeg_with_table_ids(tmp_path / "j.jpg", {0: 0, 1: 2})
    with Image.open(tmp_path / "j.jpg") as src:
        assert sorted(src.quantization) == [0, 2]
        chroma = list(src.quantization[2])
    _rewrite(tmp_path / "j.jpg", tmp_path / "out.jpg")
    with Image.open(tmp_path / "out.jpg") as out:
        tables = [list(out.quantization[c[3]]) for c in out.layer]
    assert tables[1] == tables[2] == chroma and tables[0] != chroma


def test_rewrite_drops_stale_raw_profiles_and_compresses_long_text(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    exif = Image.Exif()
    exif[0x0112] = 6
    info = PngInfo()
    info.add_text("Raw profile type exif", "\nexif\n      20\n" + exif.tobytes().hex(), zip=True)
    info.add_text("Comment", "x" * 20000, zip=True)
    Image.fromarray(smooth_image(20, 30)).save(tmp_path / "r.png", pnginfo=info)
    _rewrite(tmp_path / "r.png", tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as out:
        assert "Raw profile type exif" not in out.text and out.text["Comment"] == "x" * 20000
    assert (tmp_path / "out.png").stat().st_size < 4 * (tmp_path / "r.png").stat().st_size


def test_ico_keeps_all_its_sizes(tmp_path):
    Image.fromarray(smooth_image(64, 64)).save(tmp_path / "m.ico", sizes=[(16, 16), (32, 32), (64, 64)])
    _rewrite(tmp_path / "m.ico", tmp_path / "out.ico")
    assert sorted(Image.open(tmp_path / "out.ico").info["sizes"]) == [(16, 16), (32, 32), (64, 64)]


def test_encoding_an_icon_of_several_sizes_notes_that_only_the_largest_is_coded(tmp_path):
    """As for an animated image's other frames and an MPO's extra images: the others are not coded."""
    from aecompress.compress import coding_input, open_codec

    Image.fromarray(smooth_image(64, 64)).save(tmp_path / "m.ico", sizes=[(16, 16), (32, 32), (64, 64)])
    Image.fromarray(smooth_image(64, 64)).save(tmp_path / "one.ico", sizes=[(64, 64)])
    codec = open_codec(None, "cpu", 1)
    assert "an icon of 3 sizes: only the largest, 64x64, is coded" in coding_input(read_image(tmp_path / "m.ico"),
                                                                                      codec)[1]
    assert not [n for n in coding_input(read_image(tmp_path / "one.ico"), codec)[1] if "icon" in n]


def test_docs_list_the_suffixes_folder_scans_take():
    import re

    from aecompress.imageio import IMAGE_SUFFIXES

    from .conftest import ROOT

    text = (ROOT / "docs" / "denoise.md").read_text()
    start = text.index("A folder scan takes files by their image extension (")
    listed = re.findall(r"`(\.[a-z0-9]+)`", text[start:text.index(" in any case;", start)])
    assert sorted(listed) == sorted(IMAGE_SUFFIXES) and ".ico" not in listed


def test_pbm_of_greyscale_and_pgm_of_16_bit_colour(tmp_path):
    save_image(tmp_path / "g.pbm", smooth_image(12, 16)[:, :, :1])
    save_image(tmp_path / "c.pgm", smooth_image(12, 16).astype(np.uint16) * 257)
    assert Image.open(tmp_path / "g.pbm").mode == "1"
    assert read_image(tmp_path / "c.pgm").bits == 16 and read_image(tmp_path / "c.pgm").mode == "L"


def test_16_bit_grey_with_alpha_or_a_key_keeps_16_bits_and_its_transparency(tmp_path):
    """A 16-bit grey + alpha PNG (which Pillow opens as 8-bit RGBA) reads as 16-bit LA and is written
    back as one; a 16-bit grey PNG's key (tRNS, one 16-bit sample) keys the pixels with that sample
    as a 16-bit alpha channel, and a key that keys no pixel adds none."""
    import imagecodecs

    rng = np.random.default_rng(7)
    la = rng.integers(0, 65536, (9, 11, 2), dtype=np.uint16)
    (tmp_path / "la16.png").write_bytes(imagecodecs.png_encode(la))
    pic = read_image(tmp_path / "la16.png")
    assert (pic.mode, pic.bits) == ("LA", 16) and np.array_equal(pic.pixels, la)
    save_image(tmp_path / "out.png", pic.pixels, source=pic.info)
    back = read_image(tmp_path / "out.png")
    assert (back.mode, back.bits) == ("LA", 16) and np.array_equal(back.pixels, la)

    g = la[:, :, 0].copy()
    g[5, 6] = g[0, 0]
    Image.fromarray(g).save(tmp_path / "k.png", transparency=int(g[0, 0]))
    pic = read_image(tmp_path / "k.png")
    assert (pic.mode, pic.bits) == ("LA", 16) and np.array_equal(pic.pixels[:, :, 0], g)
    assert sorted(zip(*np.nonzero(pic.pixels[:, :, 1] == 0))) == [(0, 0), (5, 6)]
    assert np.all(pic.pixels[:, :, 1][pic.pixels[:, :, 1] != 0] == 65535)
    unused = next(v for v in range(65536) if not (g == v).any())
    Image.fromarray(g).save(tmp_path / "none.png", transparency=unused)
    pic = read_image(tmp_path / "none.png")
    assert (pic.mode, pic.bits) == ("L", 16) and np.array_equal(pic.pixels[:, :, 0], g)


def test_keys_that_key_nothing_add_no_alpha(tmp_path):
    """A 16-bit colour key is compared with the 16-bit samples (Pillow would compare it with its
    8-bit ones and key nothing): the pixels it keys become transparent, at 16 bits; a key that keys
    no pixel, like a 2-bit greyscale key (Pillow scales the pixels, not the key), adds no all-opaque
    alpha channel."""
    from aecompress.rgb16 import _chunk

    a = np.random.default_rng(5).integers(0, 65536, (6, 8, 3), dtype=np.uint16)
    a[4, 5] = a[0, 0]
    save_image(tmp_path / "k16.png", a)
    png = (tmp_path / "k16.png").read_bytes()
    for name, key in (("k16.png", a[0, 0]), ("none16.png", np.array([1, 2, 3], np.uint16))):
        (tmp_path / name).write_bytes(png[:33] + _chunk(b"tRNS", key.astype(">u2").tobytes()) + png[33:])
    pic = read_image(tmp_path / "k16.png")
    assert (pic.mode, pic.bits) == ("RGBA", 16) and np.array_equal(pic.pixels[:, :, :3], a)
    assert sorted(zip(*np.nonzero(pic.pixels[:, :, 3] == 0))) == [(0, 0), (4, 5)]
    assert np.all(pic.pixels[:, :, 3][pic.pixels[:, :, 3] != 0] == 65535)
    # written back (as denoise writes it): a 16-bit RGBA PNG with the same transparent pixels
    save_image(tmp_path / "out16.png", pic.pixels, source=pic.info)
    back = read_image(tmp_path / "out16.png")
    assert (back.mode, back.bits) == ("RGBA", 16) and np.array_equal(back.pixels, pic.pixels)
    pic = read_image(tmp_path / "none16.png")
    assert (pic.mode, pic.bits) == ("RGB", 16) and np.array_equal(pic.pixels, a)
    import struct
    import zlib

    rows = b"".join(b"\0\xaa" for _ in range(4))                # 4 x 4 pixels of 2-bit value 2, filter 0
    png = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 2, 0, 0, 0, 0))
           + _chunk(b"tRNS", struct.pack(">H", 2)) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b""))
    (tmp_path / "g.png").write_bytes(png)
    assert read_image(tmp_path / "g.png").mode == "L"


def test_16_bit_png_with_an_odd_icc_profile_reads_quietly(tmp_path, capfd):
    """libpng warns on standard error about ICC profiles it finds wanting (here: a greyscale profile
    on colour pixels); the 16-bit decoder gets only the pixel chunks."""
    from PIL import ImageCms

    from aecompress.rgb16 import _chunk
    import zlib

    a = np.random.default_rng(6).integers(0, 65536, (6, 8, 3), dtype=np.uint16)
    save_image(tmp_path / "i.png", a)
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    icc[16:20] = b"GRAY"
    png = (tmp_path / "i.png").read_bytes()
    (tmp_path / "i.png").write_bytes(png[:33] + _chunk(b"iCCP", b"x\0\0" + zlib.compress(bytes(icc))) + png[33:])
    pic = read_image(tmp_path / "i.png")
    assert pic.bits == 16 and np.array_equal(pic.pixels, a)
    assert capfd.readouterr().err == ""


def test_16_bit_png_keeps_its_text(tmp_path):
    a = np.random.default_rng(7).integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    save_image(tmp_path / "t.png", a, source={"png_text": {"Title": "tiles", "Comment": "y" * 3000}})
    with Image.open(tmp_path / "t.png") as im:
        im.load()
        assert im.text["Title"] == "tiles" and im.text["Comment"] == "y" * 3000
    assert read_image(tmp_path / "t.png").bits == 16


def test_saving_under_an_mpo_name_writes_a_jpeg_at_the_quality_asked(tmp_path):
    img = Image.fromarray(smooth_image(32, 48))
    img.save(tmp_path / "s.mpo", format="MPO", save_all=True, append_images=[img], quality=60)
    _rewrite(tmp_path / "s.mpo", tmp_path / "kept.mpo")
    save_image(tmp_path / "q95.mpo", smooth_image(32, 48))
    with Image.open(tmp_path / "s.mpo") as src, Image.open(tmp_path / "kept.mpo") as kept:
        assert kept.format == "JPEG" and kept.quantization[0] == src.quantization[0]
    img.save(tmp_path / "ref.jpg", quality=95)
    with Image.open(tmp_path / "q95.mpo") as q, Image.open(tmp_path / "ref.jpg") as ref:
        assert q.quantization[0] == ref.quantization[0]


def test_coarse_jpeg_tables_are_rewritten_quietly(tmp_path, capfd):
    Image.fromarray(smooth_image(16, 16)).save(tmp_path / "c.jpg", qtables=[[300] * 64, [400] * 64])
    capfd.readouterr()
    _rewrite(tmp_path / "c.jpg", tmp_path / "out.jpg")
    assert capfd.readouterr().err == ""
    assert Image.open(tmp_path / "out.jpg").quantization[0][0] == 255


def test_odd_tiffs_read_and_rewrite(tmp_path):
    """Planar 16-bit colour (Pillow misreads it uncompressed), a BigTIFF (its EXIF bytes had a
    header no writer takes) and a resolution of 1/0 (dpi NaN)."""
    import tifffile

    a = np.random.default_rng(8).integers(0, 65536, (12, 20, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(a, -1, 0), photometric="rgb", planarconfig="separate",
                     metadata=None)
    pic = read_image(tmp_path / "planar.tif")
    assert pic.bits == 16 and np.array_equal(pic.pixels, a)
    tifffile.imwrite(tmp_path / "big.tif", (a >> 8).astype(np.uint8), photometric="rgb", bigtiff=True)
    _rewrite(tmp_path / "big.tif", tmp_path / "big-out.tif")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "big-out.tif")), (a >> 8).astype(np.uint8))
    tifffile.imwrite(tmp_path / "r0.tif", a, photometric="rgb", resolution=(300, 300), metadata=None)
    import struct

    b = bytearray((tmp_path / "r0.tif").read_bytes())         # X/YResolution's denominators set to 0
    ifd = struct.unpack_from("<I", b, 4)[0]
    for i in range(struct.unpack_from("<H", b, ifd)[0]):
        tag, _, _, at = struct.unpack_from("<HHII", b, ifd + 2 + 12 * i)
        if tag in (282, 283):
            struct.pack_into("<I", b, at + 4, 0)
    (tmp_path / "r0.tif").write_bytes(bytes(b))
    _rewrite(tmp_path / "r0.tif", tmp_path / "r0-out.tif")
    assert read_image(tmp_path / "r0-out.tif").bits == 16


def test_16_bit_tiff_keeps_exif_and_gps_directories(tmp_path):
    """Exposure settings and location live in EXIF's own directories, which tifffile does not write:
    they are appended and pointed at, and read back as they were (Pillow and tifffile both read the file)."""
    import tifffile
    from PIL.TiffImagePlugin import IFDRational

    a = np.random.default_rng(9).integers(0, 65536, (6, 8, 3), dtype=np.uint16)
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    shot = exif.get_ifd(0x8769)
    shot[0x829A], shot[0x8827], shot[0x9003] = IFDRational(1, 250), 400, "2024:05:06 07:08:09"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (IFDRational(48, 1), IFDRational(51, 1), IFDRational(30, 1))
    save_image(tmp_path / "e.tif", a, exif=exif.tobytes(), format="TIFF", source={"compression": "tiff_lzw"})
    with Image.open(tmp_path / "e.tif") as im:
        back = im.getexif()
        assert back[0x010F] == "TestCam"
        assert back.get_ifd(0x8769)[0x829A] == IFDRational(1, 250) and back.get_ifd(0x8769)[0x8827] == 400
        assert back.get_ifd(0x8769)[0x9003] == "2024:05:06 07:08:09"
        assert back.get_ifd(0x8825)[1] == "N" and back.get_ifd(0x8825)[2] == (48, 51, 30)
    assert np.array_equal(tifffile.imread(tmp_path / "e.tif"), a) and read_image(tmp_path / "e.tif").bits == 16


@pytest.mark.parametrize("shape, mode", [((6, 8, 3), "RGB"), ((6, 8, 4), "RGBA"), ((6, 8), "L"), ((6, 8), "I;16")])
@pytest.mark.parametrize("compression", ["tiff_lzw", "tiff_adobe_deflate"])
def test_compressed_tiff_keeps_exif_directories(tmp_path, shape, mode, compression):
    """libtiff, Pillow's writer of compressed TIFFs, refuses EXIF with its own or GPS directory (as
    nearly every camera's is): denoising an LZW TIFF from a photo editor failed with 'cannot save as
    TIFF (Error setting from dictionary)'. Such files are written by tifffile, compression kept."""
    a = np.random.default_rng(4).integers(0, 65536 if mode == "I;16" else 256, shape).astype(
        np.uint16 if mode == "I;16" else np.uint8)
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif.get_ifd(0x8769)[0x8827] = 400
    exif.get_ifd(0x8825)[1] = "N"
    source = {"source_mode": mode, "compression": compression, "dpi": (300.0, 300.0)}
    save_image(tmp_path / "e.tif", a, exif=exif.tobytes(), mode=mode, source=source)
    with Image.open(tmp_path / "e.tif") as im:
        assert im.mode == mode and im.info["compression"] == compression and im.info["dpi"] == (300, 300)
        back = im.getexif()
        assert back[0x010F] == "TestCam" and back.get_ifd(0x8769)[0x8827] == 400 and back.get_ifd(0x8825)[1] == "N"
        assert np.array_equal(np.asarray(im), a)


@pytest.mark.parametrize("mode, compression", [("CMYK", "tiff_lzw"), ("1", "group4"), ("RGB", "jpeg")])
def test_other_compressed_tiffs_with_exif_directories_are_written(tmp_path, mode, compression):
    """A CMYK, 1-bit or JPEG-compressed TIFF whose EXIF has its own and GPS directories could not be
    written at all (libtiff refuses those directories, and tifffile is not used for these): it keeps
    EXIF's first directory (camera, date, copyright), as docs/denoise.md says."""
    shape = {"CMYK": (6, 8, 4), "1": (6, 8), "RGB": (16, 16, 3)}[mode]
    a = np.random.default_rng(5).integers(0, 256, shape, dtype=np.uint8)
    if mode == "1":
        a = np.where(a > 127, 255, 0).astype(np.uint8)
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif.get_ifd(0x8769)[0x8827] = 400
    exif.get_ifd(0x8825)[1] = "N"
    save_image(tmp_path / "e.tif", a, exif=exif.tobytes(), mode=mode,
               source={"source_mode": mode, "compression": compression})
    with Image.open(tmp_path / "e.tif") as im:
        assert im.mode == mode and im.info["compression"] == compression and im.getexif()[0x010F] == "TestCam"


def _patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0) claiming another size."""
    i = data.index(b"\xff\xc0")
    return data[:i + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[i + 9:]


def test_a_jpeg_claiming_far_more_pixels_than_its_data_is_refused_at_once(tmp_path, monkeypatch):
    """A 10 kB JPEG whose header says 19000x19000: Pillow fills the missing blocks in as grey, and
    the run took minutes and 3 GB on 361 megapixels of nothing. A Huffman-coded block costs at least
    a bit, so the file is too short for its size and is refused before any pixel is decoded."""
    import io
    import time

    from aecompress.errors import AecError
    from aecompress.imageio import MAX_PIXELS, jpeg_data_too_short

    buf = io.BytesIO()
    Image.fromarray(smooth_image(120, 160)).save(buf, "JPEG", quality=90)
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(_patch_jpeg_size(buf.getvalue(), 19000, 19000))
    with pytest.raises(AecError, match="too large"):     # Pillow's own limit (its default), a library caller's
        read_image(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", MAX_PIXELS)     # the command line's and the app's
    t = time.perf_counter()
    with pytest.raises(AecError, match="needs more data than the file holds"):
        read_image(bomb)
    assert time.perf_counter() - t < 2
    # the bound is a floor no real file goes under: flat pictures with optimised, progressive tables
    for mode in ("L", "RGB"):
        for kw in ({}, {"optimize": True}, {"progressive": True, "optimize": True}):
            flat = io.BytesIO()
            Image.new(mode, (4000, 3000), 128).save(flat, "JPEG", **kw)
            assert not jpeg_data_too_short(flat.getvalue(), 4000, 3000), (mode, kw)
    assert read_image(tmp_path / "bomb.jpg", buf.getvalue()).pixels.shape == (120, 160, 3)


def _cut_scan(data: bytes, keep: float) -> bytes:
    """The JPEG's first image with only the first `keep` of its scans (from the first's data to the
    end marker), and its end marker after the cut: what a download or copy cut short, with the
    marker put back, looks like."""
    start = data.index(b"\xff\xda")
    start += 2 + int.from_bytes(data[start + 2:start + 4], "big")
    end = data.index(b"\xff\xd9", start)
    return data[:start + int((end - start) * keep)] + b"\xff\xd9"


def test_a_jpeg_cut_short_before_its_end_marker_is_refused(tmp_path):
    """A JPEG missing the last 40 % of its data but ending with its end marker decoded, the missing
    part grey, without a word (libjpeg warns; Pillow drops the warning), and encode and denoise
    went on. A complete scan decodes to the same pixels whatever follows it; a cut-short one does
    not: the file is refused as damaged. None of a range of complete JPEGs is."""
    import io
    import subprocess
    import sys

    from PIL import ImageCms

    from aecompress.errors import AecError

    rgb = Image.fromarray(smooth_image(100, 150))
    exif = Image.Exif()
    exif[0x0112] = 6
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    made = []
    for im, kw in [(rgb, {}), (rgb, {"quality": 100}), (rgb, {"quality": 20, "optimize": True}),
                   (rgb, {"progressive": True}), (rgb, {"progressive": True, "optimize": True, "subsampling": 0}),
                   (rgb, {"subsampling": 0}), (rgb, {"subsampling": 1}), (rgb.convert("L"), {}),
                   (rgb.convert("L"), {"progressive": True}), (rgb.convert("CMYK"), {}),
                   (rgb, {"exif": exif.tobytes(), "icc_profile": icc}), (rgb, {"restart_marker_rows": 1}),
                   (rgb, {"restart_marker_blocks": 5, "progressive": True}), (rgb.crop((0, 0, 37, 21)), {}),
                   (Image.new("RGB", (64, 48), (128, 128, 128)), {})]:
        buf = io.BytesIO()
        im.save(buf, "JPEG", **kw)
        made.append((buf.getvalue(), kw))
    buf = io.BytesIO()
    rgb.save(buf, "MPO", save_all=True, append_images=[rgb.rotate(90)])
    made.append((buf.getvalue(), "MPO"))
    for data, kw in made:
        read_image(tmp_path / "whole.jpg", data)                  # complete: read as before
        for keep in (0.6, 0.95):
            with pytest.raises(AecError, match="JPEG data ends before the last of its"):
                read_image(tmp_path / "cut.jpg", _cut_scan(data, keep))

    # cut at a restart marker: the interval before it is whole, and the ones after it are missing
    data = made[11][0]
    rst = data.index(b"\xff\xd4")
    with pytest.raises(AecError, match="JPEG data ends before"):
        read_image(tmp_path / "cut.jpg", data[:rst] + b"\xff\xd9")

    # from the command line: one line, exit 1 as for any damaged image, nothing written
    (tmp_path / "cut.jpg").write_bytes(_cut_scan(made[0][0], 0.6))
    for cmd in (["encode", str(tmp_path / "cut.jpg")], ["denoise", str(tmp_path / "cut.jpg")]):
        r = subprocess.run([sys.executable, "-m", "aecompress", *cmd], capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert "cut.jpg: cannot read image (its JPEG data ends before the last of its 150x100 pixels" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.jpg"]


def test_icns_output_is_refused_unless_it_is_the_icon_size(tmp_path):
    """Pillow's ICNS writer stretched any picture to a 1024x1024 square."""
    from aecompress.errors import AecError

    with pytest.raises(AecError, match="1024x1024 square"):
        save_image(tmp_path / "x.icns", smooth_image(120, 160))
    assert not (tmp_path / "x.icns").exists()


def test_wide_samples_that_change_on_reading_are_noted(tmp_path):
    """32-bit integer and floating-point images: what reading does to their values is said (the
    samples were clipped or rescaled without a word)."""
    ints = np.linspace(-100, 140_000, 2400).astype(np.int32).reshape(40, 60)
    Image.fromarray(ints, "I").save(tmp_path / "i.tif")
    pic = read_image(tmp_path / "i.tif")
    assert pic.pixels.dtype == np.uint16 and pic.pixels.max() == 65535
    assert any("negative samples clipped to 0" in n for n in pic.notes)
    assert any("scaled to 16 bits" in n for n in pic.notes)
    Image.fromarray(np.linspace(-0.5, 1.5, 2400, dtype=np.float32).reshape(40, 60), "F").save(tmp_path / "f.tif")
    notes = read_image(tmp_path / "f.tif").notes
    assert len(notes) == 1 and "read as 0-255, stored as 8 bits" in notes[0] and "clipped" in notes[0]
    Image.fromarray(np.linspace(0, 1, 2400, dtype=np.float32).reshape(40, 60), "F").save(tmp_path / "g.tif")
    assert read_image(tmp_path / "g.tif").notes == ["floating-point samples read as 0-1, stored as 8 bits"]
    assert read_image(tmp_path / "g.tif").pixels.max() == 255
    Image.fromarray(smooth_image(40, 60)).save(tmp_path / "plain.png")
    assert read_image(tmp_path / "plain.png").notes == []
