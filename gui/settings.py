"""Settings that persist between runs (last folders, model, quality, device, ...), kept in QSettings.

The file lives where Qt keeps per-user INI files (~/.config/aecompress/aecompress-gui.ini on Linux),
or at $AECOMPRESS_GUI_SETTINGS when that is set (tests point it at a temporary folder).
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings

ORG, APP = "aecompress", "aecompress-gui"
ENV = "AECOMPRESS_GUI_SETTINGS"


def _qsettings() -> QSettings:
    path = os.environ.get(ENV)
    if path:
        return QSettings(path, QSettings.Format.IniFormat)
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORG, APP)


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
    @property
    def model(self) -> str:
        return self._get("compress/model", "photo")

    @model.setter
    def model(self, v: str) -> None:
        self._set("compress/model", v)

    @property
    def quality(self) -> int:
        return min(max(self._get("compress/quality", 75, int), 1), 100)

    @quality.setter
    def quality(self, v: int) -> None:
        self._set("compress/quality", int(v))

    @property
    def rate_mode(self) -> int:
        """0: quality, 1: target bits per pixel, 2: target file size."""
        v = self._get("compress/rate_mode", 0, int)
        return v if v in (0, 1, 2) else 0

    @rate_mode.setter
    def rate_mode(self, v: int) -> None:
        self._set("compress/rate_mode", int(v))

    @property
    def target_bpp(self) -> float:
        return min(max(self._get("compress/target_bpp", 0.5, float), 0.01), 24.0)

    @target_bpp.setter
    def target_bpp(self, v: float) -> None:
        self._set("compress/target_bpp", float(v))

    @property
    def target_kb(self) -> float:
        return min(max(self._get("compress/target_kb", 20.0, float), 0.1), 1_000_000.0)

    @target_kb.setter
    def target_kb(self, v: float) -> None:
        self._set("compress/target_kb", float(v))

    @property
    def denoise_strength(self) -> int:
        return min(max(self._get("denoise/strength", 100, int), 0), 100)

    @denoise_strength.setter
    def denoise_strength(self, v: int) -> None:
        self._set("denoise/strength", int(v))

    @property
    def batch_action(self) -> int:
        """0: compress the images of the queue, 1: denoise them."""
        v = self._get("batch/action", 0, int)
        return v if v in (0, 1) else 0

    @batch_action.setter
    def batch_action(self, v: int) -> None:
        self._set("batch/action", int(v))

    @property
    def extra_models(self) -> list[str]:
        """Package folders the user added with "Add model folder..."."""
        return self._get("models/extra", [], list)

    @extra_models.setter
    def extra_models(self, v: list[str]) -> None:
        self._set("models/extra", list(v))

    @property
    def device(self) -> str:
        v = self._get("runtime/device", "auto")
        return v if v in ("auto", "cpu", "cuda") else "auto"

    @device.setter
    def device(self, v: str) -> None:
        self._set("runtime/device", v)

    @property
    def threads(self) -> int:
        """CPU threads per model (aecompress --threads); 0: onnxruntime's default."""
        return min(max(self._get("runtime/threads", 0, int), 0), 256)

    @threads.setter
    def threads(self, v: int) -> None:
        self._set("runtime/threads", int(v))

    # denoising
    @property
    def denoise_auto(self) -> bool:
        return self._get("denoise/auto", True, bool)

    @denoise_auto.setter
    def denoise_auto(self, v: bool) -> None:
        self._set("denoise/auto", bool(v))

    @property
    def denoise_sigma(self) -> int:
        return min(max(self._get("denoise/sigma", 25, int), 0), 75)

    @denoise_sigma.setter
    def denoise_sigma(self, v: int) -> None:
        self._set("denoise/sigma", int(v))

    @property
    def denoise_ensemble(self) -> int:
        """Runs of the model per image, averaged over flips and rotations (aecompress denoise --ensemble)."""
        from aecompress.denoise import ENSEMBLES

        v = self._get("denoise/ensemble", 1, int)
        return v if v in ENSEMBLES else 1

    @denoise_ensemble.setter
    def denoise_ensemble(self, v: int) -> None:
        self._set("denoise/ensemble", int(v))

    # batch
    @property
    def skip_existing(self) -> bool:
        return self._get("batch/skip_existing", True, bool)

    @skip_existing.setter
    def skip_existing(self, v: bool) -> None:
        self._set("batch/skip_existing", bool(v))

    @property
    def batch_output(self) -> str:
        """Output folder for batches; empty means "next to each input"."""
        return self._get("batch/output", "")

    @batch_output.setter
    def batch_output(self, v: str) -> None:
        self._set("batch/output", v)

    # window
    @property
    def geometry(self) -> QByteArray | None:
        v = self.qs.value("window/geometry")
        return v if isinstance(v, QByteArray) else None

    @geometry.setter
    def geometry(self, v: QByteArray) -> None:
        self._set("window/geometry", v)

    @property
    def compare_mode(self) -> str:
        v = self._get("window/compare_mode", "split")
        return v if v in ("split", "side") else "split"

    @compare_mode.setter
    def compare_mode(self, v: str) -> None:
        self._set("window/compare_mode", v)

    def sync(self) -> None:
        self.qs.sync()
