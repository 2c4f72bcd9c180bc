"""Settings that persist between runs (last folders, model, quality, device, ...), kept in QSettings.

The file lives where Qt keeps per-user INI files (~/.config/aecompress/aecompress-gui.ini on Linux),
or at $AECOMPRESS_GUI_SETTINGS when that is set (tests point it at a temporary folder).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings

from aecompress.denoise import ENSEMBLES

ORG, APP = "aecompress", "aecompress-gui"
ENV = "AECOMPRESS_GUI_SETTINGS"


def _qsettings() -> QSettings:
    path = os.environ.get(ENV)
    if path:
        return QSettings(path, QSettings.Format.IniFormat)
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORG, APP)


class _Setting:
    """One persisted value, as a property of Settings: read with its kind, the default when missing or
    unreadable (NaN and infinities included), clamped to [lo, hi] or kept to `choices`; written as
    its kind."""

    def __init__(self, key: str, default, kind=str, lo=None, hi=None, choices=None, doc: str | None = None):
        self.key, self.default, self.kind = key, default, kind
        self.lo, self.hi, self.choices = lo, hi, choices
        self.__doc__ = doc

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        v = obj._get(self.key, self.default, self.kind)
        if self.choices is not None and v not in self.choices:
            return self.default
        if self.lo is not None:
            if not math.isfinite(v):                # min/max would let NaN through, and make inf the maximum
                return self.default
            v = min(max(v, self.lo), self.hi)
        return list(v) if isinstance(v, list) else v      # a fresh list: the default is shared

    def __set__(self, obj, v) -> None:
        obj._set(self.key, self.kind(v))


class Settings:
    """Typed access to the persisted values; every getter has a sensible default."""

    def __init__(self, qs: QSettings | None = None):
        self.qs = qs if qs is not None else _qsettings()

    def _get(self, key: str, default, kind=str):
        v = self.qs.value(key, default)
        if v is None:
            return default
        try:
            if kind is bool:
                return v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")
            if kind is list:
                if isinstance(v, str):
                    return [v] if v else []
                return [str(x) for x in v]
            return kind(v)
        except (TypeError, ValueError):
            return default

    def _set(self, key: str, value) -> None:
        self.qs.setValue(key, value)

    # folders
    def folder(self, which: str) -> str:
        """Last folder used for `which` ("open", "save", "batch_out"), or the home folder."""
        d = self._get(f"folders/{which}", "")
        return d if d and Path(d).is_dir() else str(Path.home())

    def set_folder(self, which: str, path: str | Path) -> None:
        p = Path(path)
        self._set(f"folders/{which}", str(p if p.is_dir() else p.parent))

    # compression
    model = _Setting("compress/model", "photo")
    quality = _Setting("compress/quality", 75, int, lo=1, hi=100)
    rate_mode = _Setting("compress/rate_mode", 0, int, choices=(0, 1, 2),
                         doc="0: quality, 1: target bits per pixel, 2: target file size.")
    target_bpp = _Setting("compress/target_bpp", 0.5, float, lo=0.01, hi=24.0)
    target_kb = _Setting("compress/target_kb", 20.0, float, lo=0.1, hi=1_000_000.0)
    refine = _Setting("compress/refine", 0, int, lo=0, hi=200,
                      doc="Steps of encoder-side latent refinement (encode --refine); 0: off.")
    extra_models = _Setting("models/extra", [], list, doc='Package folders the user added with "Add model folder...".')

    # runtime
    device = _Setting("runtime/device", "auto", choices=("auto", "cpu", "cuda"))
    threads = _Setting("runtime/threads", 0, int, lo=0, hi=256,
                       doc="CPU threads per model (aecompress --threads); 0: onnxruntime's default.")

    # denoising
    denoise_model = _Setting("denoise/model", "", doc="The denoiser (package name or added folder); empty: the first.")
    denoise_strength = _Setting("denoise/strength", 100, int, lo=0, hi=100)
    denoise_auto = _Setting("denoise/auto", True, bool)
    denoise_sigma = _Setting("denoise/sigma", 25, int, lo=0, hi=75)
    denoise_ensemble = _Setting("denoise/ensemble", 1, int, choices=ENSEMBLES,
                                doc="Runs of the model per image, averaged over flips and rotations "
                                    "(aecompress denoise --ensemble).")

    # batch
    batch_action = _Setting("batch/action", 0, int, choices=(0, 1),
                            doc="0: compress the images of the queue, 1: denoise them.")
    skip_existing = _Setting("batch/skip_existing", True, bool)
    batch_output = _Setting("batch/output", "", doc='Output folder for batches; empty means "next to each input".')

    # window
    @property
    def geometry(self) -> QByteArray | None:
        v = self.qs.value("window/geometry")
        return v if isinstance(v, QByteArray) else None

    @geometry.setter
    def geometry(self, v: QByteArray) -> None:
        self._set("window/geometry", v)

    compare_mode = _Setting("window/compare_mode", "split", choices=("split", "side"))

    def sync(self) -> None:
        self.qs.sync()
