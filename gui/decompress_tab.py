"""The Decompress tab: an .aez file's decoded image and its header, and saving it as an image.

Decoding goes through aecompress.compress.decode_bytes (the model is found by the id in the header,
among installed packages and folders added in the app); the header comes from file_info, as in
`aecompress info`. Optionally the original can be opened beside it to see the difference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QFileDialog, QPushButton, QWidget

from aecompress.compress import decode_bytes, file_info
from aecompress.errors import AecError, UnknownModelError
from aecompress.imageio import read_image, save_image, to_channels8, to_rgb8, to_srgb
from aecompress.metrics import ms_ssim, psnr

from .compare import ComparePanel, difference_image, pyramid, to_qimage
from .compress_tab import IMAGE_FILTER, SAVE_EXTENSIONS, size_text
from .runtime import APP_MODEL_HINT, Runtime, provider_text
from .settings import Settings
from .widgets import ImageTab, ResultGrid, SidePanel, ask_save_path, group, note_label, saved_text
from .workers import WorkQueue


@dataclass
class Decoded:
    path: Path
    info: dict
    pixels: np.ndarray
    image: list[QImage]           # a pyramid (compare.pyramid), built on the worker
    seconds: float
    provider: str
    model: str


class DecompressTab(ImageTab):
    def __init__(self, runtime: Runtime, settings: Settings, work: WorkQueue, saves: WorkQueue,
                 parent: QWidget | None = None):
        super().__init__(runtime, settings, work, saves, parent)
        self.decoded: Decoded | None = None
        self.path: Path | None = None             # the file opened last (decoded or not)
        self._job = None
        self._compare_job = None
        self._unknown_model = False   # the last file failed for want of its model package
        self._original: Path | None = None        # the image last opened to compare with
        self.panel = ComparePanel(self, ("Decoded", "Original"))
        self.panel.view.placeholder = ("Drop an .aez file here", "or use File \u203a Open (Ctrl+O)")
        side = SidePanel(self)
        self.grid = ResultGrid([("file", "File"), ("size", "File size"), ("dims", "Dimensions"),
                                ("bpp", "Bits per pixel"), ("colour", "Colour"), ("model", "Model"),
                                ("quality", "Quality"), ("codec", "Codec"), ("model_id", "Model id"),
                                ("version", "Format version"), ("time", "Decode time"),
                                ("provider", "Provider")], self)
        self.notes = note_label("", self)
        self.notes.hide()
        side.add(group("Compressed file", self.grid, self.notes))
        self.metrics = ResultGrid([("psnr", "PSNR"), ("msssim", "MS-SSIM")], self)
        self.compare_btn = QPushButton("Compare with original\u2026", self)
        self.compare_btn.setToolTip("Open the image this file was made from, to see it beside the decoded one")
        self.compare_btn.clicked.connect(lambda: self.compare_with())
        self.metrics_box = group("Against the original", self.metrics, self.compare_btn)
        side.add(self.metrics_box)
        self.save_btn = QPushButton("Save image\u2026", self)
        self.save_btn.setObjectName("primary")
        self.save_btn.clicked.connect(lambda: self.save_image())
        side.add(self.save_btn)
        self.lay_out(self.panel, side)
        self._update_buttons()

    def open_path(self, path: str | Path) -> None:
        path = Path(path)
        for j in (self._job, self._compare_job):
            if j is not None:
                j.cancel()
        self.decoded, self.path, self._unknown_model = None, path, False
        self.grid.clear()
        self.metrics.clear()
        self.notes.hide()
        self.panel.view.set_images(None)
        self.panel.set_pair_controls(False)
        self._update_buttons()
        runtime = self.runtime

        def job(token, emit):
            extra = runtime.extra_packages()
            info = file_info(path, extra)
            emit(("info", info))
            token.check()
            data = path.read_bytes()
            t0 = time.perf_counter()
            try:
                pixels, header, codec = decode_bytes(data, None, runtime.device, runtime.threads, extra=extra,
                                                     check=token.check, hint=APP_MODEL_HINT)
            except AecError as exc:
                if isinstance(exc, UnknownModelError):
                    emit(("unknown model",))          # adding a model folder may fix this one
                raise type(exc)(f"{path}: {exc}") from None
            seconds = time.perf_counter() - t0
            return Decoded(path, info, pixels, pyramid(to_qimage(pixels)), seconds, codec.pkg.provider, codec.pkg.name)

        self.panel.view.set_busy(f"Decoding {path.name}\u2026")
        self.statusMessage.emit(f"Decoding {path.name}\u2026")
        self._job = self.work.submit(job, name="decode", progress=self._show_info, done=self._done,
                                     error=self._failed, cancelled=lambda: None)

    def _show_info(self, payload) -> None:
        if payload[0] == "unknown model":
            self._unknown_model = True
        if payload[0] != "info":
            return
        d = payload[1]
        self.grid.set("file", Path(d["file"]).name)
        self.grid.set("size", size_text(d["bytes"]))
        self.grid.set("dims", f"{d['width']} \u00d7 {d['height']}"
                      + (f", coded at {d['resolution']} resolution" if d.get("scale", 1) != 1 else ""))
        self.grid.set("bpp", f"{d['bpp']:.3f}")
        colour = f"{d['mode']}, {d['bits']}-bit source"
        if d.get("alpha_dropped"):
            colour += ", alpha dropped"
        self.grid.set("colour", colour)
        self.grid.set("model", d.get("model") or "not installed")
        q = d.get("quality")
        self.grid.set("quality", f"{q:g}" if q is not None else f"level {d['quality_level']:g}")
        self.grid.set("codec", str(d["codec"]))
        self.grid.set("model_id", str(d["model_id"]))
        self.grid.set("version", str(d["version"]))

    def _done(self, r: Decoded) -> None:
        self.decoded = r
        self.panel.view.set_busy("")
        self.panel.view.set_images(r.image, None, None, ("Decoded", "Original"))
        self.panel.set_pair_controls(False)
        self.grid.set("time", f"{r.seconds:.2f} s")
        self.grid.set("provider", provider_text(r.provider, long=False))
        self.providerUsed.emit(r.provider)
        self._update_buttons()
        self.statusMessage.emit(f"Decoded {r.path.name}: {r.info['width']}\u00d7{r.info['height']} "
                                f"with model {r.model} in {r.seconds:.2f} s")

    def _failed(self, message: str) -> None:
        self.panel.view.set_busy("")
        self.errorOccurred.emit(message)
        self._update_buttons()

    def _compare_failed(self, message: str) -> None:
        self.errorOccurred.emit(message)

    def retry(self) -> None:
        """Decode again a file that failed for want of its model (after a model folder was added)."""
        if self.decoded is None and self.path is not None and self._unknown_model:
            self.open_path(self.path)

    def jobs(self) -> list:
        return [self._job, self._compare_job]

    def files(self) -> list[Path]:
        return [p for p in (self.path, self._original) if p is not None]

    def busy_with(self) -> str:
        if self.work.pending(self._job):
            return f"decoding {self.path.name}"
        if self.work.pending(self._compare_job):
            return f"comparing {self.path.name} with its original"
        return ""

    def _update_buttons(self) -> None:
        self.save_btn.setEnabled(self.decoded is not None)
        self.compare_btn.setEnabled(self.decoded is not None)

    def compare_with(self, original: str | Path | None = None) -> None:
        """Show the original image beside the decoded one, with PSNR and MS-SSIM."""
        if self.decoded is None:
            return
        if original is None:
            name, _ = QFileDialog.getOpenFileName(self, "Open the original image", self.settings.folder("open"),
                                                  IMAGE_FILTER)
            if not name:
                return
            original = name
        original = self._original = Path(original)
        dec = self.decoded

        def job(token, emit):
            pic = read_image(original)
            # in sRGB, as the encoder coded it: a photo in another RGB space beside its decode
            ref = (to_channels8(pic, 1) if dec.pixels.shape[2] == 1 else to_srgb(to_rgb8(pic), pic.icc)[0])
            if ref.shape != dec.pixels.shape:
                raise AecError(f"{original} is {pic.width}\u00d7{pic.height}, the decoded image is "
                               f"{dec.pixels.shape[1]}\u00d7{dec.pixels.shape[0]}")
            return (pyramid(to_qimage(ref)), psnr(ref, dec.pixels), ms_ssim(ref, dec.pixels),
                    pyramid(difference_image(ref, dec.pixels)))

        def done(r) -> None:
            if self.decoded is not dec:              # another file was opened meanwhile
                return
            img, p, m, diff = r
            self.panel.view.set_images(img, dec.image, diff, ("Original", "Decoded"))
            self.panel.set_pair_controls(True)
            self.metrics.set("psnr", f"{p:.2f} dB")
            self.metrics.set("msssim", f"{m:.4f}")

        if self._compare_job is not None:
            self._compare_job.cancel()
        self._compare_job = self.work.submit(job, name="compare", done=done, error=self._compare_failed,
                                             cancelled=lambda: None)

    def save_image(self, path: str | Path | None = None) -> Path | None:
        if self.decoded is None:
            return None
        if path is None:
            path = ask_save_path(self, self.settings, "Save decoded image", self.decoded.path.stem + ".png",
                                 IMAGE_FILTER, ".png", SAVE_EXTENSIONS)
            if path is None:
                return None
        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(".png")
        pixels = self.decoded.pixels
        self.saves.submit(lambda token, emit: save_image(path, pixels, force=True),
                          name="save", done=lambda note: self.statusMessage.emit(saved_text(path, note)),
                          error=self.errorOccurred.emit)
        return path
