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
