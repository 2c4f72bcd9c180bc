"""Choose a codec package's resolution ladder again, in place, from calibration photos.

    python -m aecompress.train.reladder models/photo [--data ../shared/data/train/photos]

The ladder (which resolution and quality level each point of the quality scale codes at,
aecompress/ladder.py) is the encoder's choice: a decoder reads the resolution from the file and
computes nothing from the ladder. So when the ladder changes (a new resolution the format records,
other calibration photos), files made before decode to the same pixels, and the new manifest lists
the package's old model id in `decodes` (the id hashes the manifest, ladder included). The measured
points go into `training.ladder_calibration`, the anchor of quality 75 is placed again; numpy and
onnxruntime only, no torch.

The default photos are those bench/export_photo.py chose the shipped ladder on: every sixth of the
training set's wiki_* and deb_* photos (photo-sized, not BSDS's small crops).
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..compress import open_codec
from ..ladder import calibrate_codec
from ..fsutil import write_bytes_atomic
from ..package import MANIFEST, ModelPackage

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "train" / "photos"


def calibration_photos(folder: Path) -> list[Path]:
    """Every sixth wiki_* and deb_* photo of the folder, as the shipped ladder was calibrated."""
    return [Path(p) for p in (sorted(glob.glob(str(folder / "wiki_*"))) + sorted(glob.glob(str(folder / "deb_*"))))[::6]]


def reladder(package: Path, photos: list[Path]) -> dict:
    """Recalibrate the ladder of the package folder in place; returns the new manifest."""
    codec = open_codec(str(package), "cpu", None)
    old_id = codec.pkg.model_id.hex()
    images = [np.asarray(Image.open(p).convert("RGB")) for p in photos]
    ladder, points = calibrate_codec(codec, images)
    m = json.loads((package / MANIFEST).read_text())
    m["resolution_ladder"] = ladder.to_manifest()
    if ladder.anchor:
        m["quality_anchor"] = ladder.anchor_manifest()
    else:
        m.pop("quality_anchor", None)
    m.setdefault("training", {})["ladder_calibration"] = {
        "images": len(images), "photos": [p.name for p in photos],
        "points (scale:level -> bpp, PSNR)": points}
    if ModelPackage(package, m, "cpu", None).model_id.hex() != old_id:
        # the same decoder: files of the old id decode to the same pixels
        m["decodes"] = sorted(set(m.get("decodes", [])) | {old_id})
    write_bytes_atomic(package / MANIFEST, (json.dumps(m, indent=2) + "\n").encode(), force=True)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package", type=Path)
    ap.add_argument("--data", type=Path, default=DATA, help="folder of calibration photos (wiki_* and deb_*)")
    a = ap.parse_args()
    photos = calibration_photos(a.data)
    if not photos:
        raise SystemExit(f"reladder: no wiki_* or deb_* photos in {a.data}")
    m = reladder(a.package, photos)
    print(json.dumps({k: m.get(k) for k in ("resolution_ladder", "quality_anchor", "decodes")}, indent=1))


if __name__ == "__main__":
    from ..entrypoint import configure_process

    configure_process()         # a program of its own, as the command line is (Pillow's limit, quiet library logs)
    main()
