"""Image reading: EXIF orientation is applied to the pixels and cleared in the kept metadata."""

import numpy as np
from PIL import Image

from aecompress.imageio import read_image

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
