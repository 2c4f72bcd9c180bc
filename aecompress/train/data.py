"""Training data: image folders loaded into memory, random crops, labels from folder names."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import AecError
from ..imageio import IMAGE_SUFFIXES, read_image, to_channels8


@dataclass
class ImageSet:
    images: list[np.ndarray]          # HxWxC uint8
    paths: list[Path]
    labels: list[str]                 # name of the parent folder relative to the root ("" at top)
    skipped: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def find_images(root: Path) -> list[Path]:
    """The images in a folder and its subfolders, leaving out hidden files and folders and model
    packages (a folder with a manifest: its report's curves.png and recon.png are not photos)
    and training runs' checkpoint folders, so a run whose --out lies inside --data does not train
    on its own outputs when it runs again."""
    root = Path(root)
    if root.is_file():
        return [root]
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and not (Path(folder, d) / "manifest.json").exists()
                   and not (d.endswith(".work") and (Path(folder, d) / "checkpoint.pt").exists())]
        found += [Path(folder, f) for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found)


def read_pixels(path: Path, mode: str = "RGB") -> np.ndarray:
    """(H, W, 1 or 3) uint8 as the runtime reads images (aecompress.imageio: EXIF orientation applied,
    16-bit samples reduced to 8 bits, CMYK through its profile, alpha dropped). AecError when unreadable."""
    return to_channels8(read_image(path), 1 if mode == "L" else 3)


def any_readable(paths: list[Path]) -> bool:
    """Whether at least one of paths is an image that can be read (stops at the first)."""
    for p in paths:
        try:
            read_image(p)
            return True
        except AecError:
            continue
    return False


def load_folder(root: Path, mode: str = "RGB", jpeg_downscale: bool = False, max_side: int | None = None,
                limit: int | None = None) -> ImageSet:
    """Read every image below root (as the runtime does: read_pixels). Unreadable files are skipped
    and listed in .skipped.

    jpeg_downscale halves JPEG sources (hides their compression artefacts when they serve as
    clean targets); max_side caps the longer side.
    """
    root = Path(root)
    out = ImageSet([], [], [])
    for p in find_images(root):
        if limit is not None and len(out) >= limit:
            break
        try:
            arr = read_pixels(p, mode)
        except AecError:                      # any unreadable file is skipped and counted
            out.skipped.append(p)
            continue
        h, w = arr.shape[:2]
        size = (w, h)
        if jpeg_downscale and p.suffix.lower() in {".jpg", ".jpeg"}:
            size = (max(1, w // 2), max(1, h // 2))
        if max_side and max(size) > max_side:
            s = max_side / max(size)
            size = (max(1, round(size[0] * s)), max(1, round(size[1] * s)))
        if size != (w, h):
            im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).resize(size, Image.LANCZOS)
            arr = np.asarray(im, dtype=np.uint8).reshape(size[1], size[0], -1)
        out.images.append(arr)
        out.paths.append(p)
        rel = p.parent.relative_to(root) if root.is_dir() else Path("")
        out.labels.append(str(rel) if str(rel) != "." else "")
    return out


def random_crops_hwc(images: list[np.ndarray], batch: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(batch, size, size, C) uint8, random position and flips; small images are reflect-padded."""
    out = []
    for _ in range(batch):
        im = images[rng.integers(len(images))]
        h, w = im.shape[:2]
        if h < size or w < size:
            im = np.pad(im, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), mode="reflect")
            h, w = im.shape[:2]
        y = rng.integers(h - size + 1)
        x = rng.integers(w - size + 1)
        crop = im[y:y + size, x:x + size]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        if rng.random() < 0.5:
            crop = crop[::-1]
        out.append(crop)
    return np.stack(out)


def random_crops(images: list[np.ndarray], batch: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(batch, C, size, size) float32 in [0, 1], random position and flips; small images are padded."""
    return (random_crops_hwc(images, batch, size, rng).transpose(0, 3, 1, 2) / 255.0).astype(np.float32)
