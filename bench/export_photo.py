"""Export the photo codec checkpoint into models/photo (calibrating the integer hyper-synthesis).

    python bench/export_photo.py runs/photo/checkpoint.pt models/photo
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import numpy as np
from PIL import Image

from aecompress.train.export import export_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", default="../shared/data/train/photos")
    ap.add_argument("--hardware", default="2-core x86-64 CPU (no GPU), torch 2.13 CPU")
    args = ap.parse_args()
    files = sorted(glob.glob(f"{args.data}/bsds_*"))[::40] + sorted(glob.glob(f"{args.data}/wiki_*"))[:4]
    calib = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    desc = ("Default photo codec: mean-scale hyperprior (Minnen 2018) with GDN, 64/128 channels, one "
            "variable-rate model with 9 quality levels (gain units), integer hyper-synthesis.")
    # the resolution ladder is chosen on photo-sized images (1024 px): BSDS's small 481x321 crops of
    # texture favour full resolution more than the photos users have (and the validation set) do
    ladder = [np.asarray(Image.open(f).convert("RGB"))
              for f in (sorted(glob.glob(f"{args.data}/wiki_*")) + sorted(glob.glob(f"{args.data}/deb_*")))[::6]]
    export_checkpoint(args.checkpoint, args.out, "photo", calib, desc, {"hardware": args.hardware},
                      ladder_calib=ladder)
    print(json.dumps(json.loads((args.out / "manifest.json").read_text())["training"], indent=1)[:600])


if __name__ == "__main__":
    main()
