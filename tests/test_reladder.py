"""Choosing a package's resolution ladder again (aecompress.train.reladder): the encoder's choice
changes, files made before decode to the same pixels."""

import json
import shutil

import numpy as np
from PIL import Image

from aecompress.compress import decode_bytes, encode_picture, open_codec
from aecompress.imageio import Picture
from aecompress.ladder import SCALES
from aecompress.train.reladder import reladder

from .conftest import ROOT, SAMPLE, smooth_image


def test_reladder_rewrites_the_ladder_and_keeps_old_files_decodable(tmp_path):
    pkg = tmp_path / "photo"
    shutil.copytree(ROOT / "models" / "photo", pkg)
    m = json.loads((pkg / "manifest.json").read_text())
    m["resolution_ladder"] = [{"scale": 1, "lo": 0.0, "hi": 8.0}]       # full resolution only
    m.pop("quality_anchor")
    (pkg / "manifest.json").write_text(json.dumps(m))
    before = open_codec(str(pkg), "cpu", 1)
    old_id = before.pkg.model_id
    cat = np.asarray(Image.open(SAMPLE).convert("RGB"))
    old_file = encode_picture(Picture(cat, "RGB"), before, quality=90).data

    photo = tmp_path / "calib.png"
    Image.fromarray(smooth_image(192, 256, seed=3)).save(photo)
    new = reladder(pkg, [photo])
    assert old_id.hex() in new["decodes"] and len(new["decodes"]) == len(set(new["decodes"]))
    assert new["training"]["ladder_calibration"]["photos"] == ["calib.png"]
    points = new["training"]["ladder_calibration"]["points (scale:level -> bpp, PSNR)"]
    assert len(points) == len(SCALES) * before.levels                   # every scale and level measured
    after = open_codec(str(pkg), "cpu", 1)
    assert after.pkg.model_id != old_id
    assert [r["scale"] for r in new["resolution_ladder"]] != [1]         # the calibration chose other rungs
    # the old file decodes with the new package, to the pixels the old one gives
    old_pixels = decode_bytes(old_file, before.pkg)[0]
    assert np.array_equal(decode_bytes(old_file, after.pkg)[0], old_pixels)
