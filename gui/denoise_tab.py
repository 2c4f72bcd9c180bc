"""The Denoise tab: an image, a denoiser model, the noise level (automatic or set) and a strength.

Denoising goes through aecompress.denoise.denoise_array (tiled, cancellable between tiles), the same
function `aecompress denoise` uses. Strength mixes the denoised result with the input (100% = the
model's output); it is applied to the finished result, so changing it does not re-run the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QCheckBox, QComboBox, QLabel, QPushButton, QSlider, QSpinBox, QWidget

from aecompress.imageio import Picture, save_image, to_rgb8, to_srgb

from .compare import ComparePanel, difference_image, pyramid, to_qimage
from .compress_tab import IMAGE_FILTER, SAVE_EXTENSIONS, Source, load_source
from .runtime import Runtime, provider_text
from .settings import Settings
from .widgets import ImageTab, ResultGrid, SidePanel, ask_save_path, group, note_label, row, saved_text
from .workers import WorkQueue


def blend(noisy: np.ndarray, denoised: np.ndarray, strength: float) -> np.ndarray:
    """Mix the model's output with its input: strength 1 is the output, 0 the input."""
    if strength >= 1.0:
        return denoised
    peak = 65535 if denoised.dtype == np.uint16 else 255
    mix = noisy.astype(np.float32) + (denoised.astype(np.float32) - noisy.astype(np.float32)) * strength
    return np.clip(np.round(mix), 0, peak).astype(denoised.dtype)


def _display(pic: Picture, pixels: np.ndarray) -> np.ndarray:
    """What the screen shows of pixels in the picture's mode and colour space: 8-bit sRGB (the
    original beside it is shown so too: compress_tab.load_source)."""
    return to_srgb(to_rgb8(Picture(pixels, pic.mode, pic.bits)), pic.icc)[0]


@dataclass
class Denoised:
    picture: Picture
    output: np.ndarray            # the model's output, same shape and dtype as the input
    shown: np.ndarray             # output mixed at `strength`
    strength: float
    info: dict
    sigma_after: float
    after: list[QImage]           # pyramids (compare.pyramid), built on the worker
    diff: list[QImage]


class DenoiseTab(ImageTab):
    def __init__(self, runtime: Runtime, settings: Settings, work: WorkQueue, saves: WorkQueue,
                 parent: QWidget | None = None):
        super().__init__(runtime, settings, work, saves, parent)
        self.source: Source | None = None
        self.result: Denoised | None = None
        self._stale = False           # the model, ensemble or noise level changed since `result`; a new run is on
        self._job = None
        self._blend_job = None
        self._blend_timer = QTimer(self)
        self._blend_timer.setSingleShot(True)
        self._blend_timer.setInterval(120)
        self._blend_timer.timeout.connect(self._reblend)

        self.panel = ComparePanel(self, ("Input", "Denoised"))
        self.panel.view.diff_label = "Removed noise (\u00d7 8)"
        self.panel.view.placeholder = ("Drop a noisy photo here", "or use File \u203a Open (Ctrl+O)")
        side = SidePanel(self)
        self.model = self.model_picker("denoiser", settings.denoise_model)
        self.ensemble = QComboBox(self)
        for n, label in ((1, "1 run (fastest)"), (2, "2 runs, averaged"), (4, "4 runs, averaged"),
                         (8, "8 runs, averaged (cleanest)")):
            self.ensemble.addItem(label, n)
        self.ensemble.setToolTip("Average the model over flipped and rotated copies of the image: "
                                 "N times slower, slightly cleaner (aecompress denoise --ensemble N)")
        self.ensemble.setCurrentIndex(max(0, self.ensemble.findData(settings.denoise_ensemble)))
        self.ensemble.currentIndexChanged.connect(self._ensemble_changed)
        side.add(group("Model", self.model, self.ensemble))

        self.auto = QCheckBox("Automatic noise level", self)
        self.auto.setChecked(settings.denoise_auto)
        self.sigma = QSlider(Qt.Orientation.Horizontal, self)
        self.sigma.setRange(0, 75)
        self.sigma.setValue(settings.denoise_sigma)
        self.sigma_spin = QSpinBox(self)
        self.sigma_spin.setRange(0, 75)
        self.sigma_spin.setPrefix("\u03c3 ")
        self.sigma_spin.setValue(settings.denoise_sigma)
        self.sigma.valueChanged.connect(self.sigma_spin.setValue)
        self.sigma_spin.valueChanged.connect(self.sigma.setValue)
        srow = self._sigma_row = row(self, self.sigma, self.sigma_spin)
        self.sigma_note = note_label("", self)
        self.auto.toggled.connect(self._noise_changed)
        self._noise_timer = QTimer(self)
        self._noise_timer.setSingleShot(True)
        self._noise_timer.setInterval(400)
        self._noise_timer.timeout.connect(self._noise_changed)
        self.sigma.sliderReleased.connect(self._noise_changed)
        # keys, the wheel and the spin box's arrows: once the value rests (a drag waits for the release)
        self.sigma.valueChanged.connect(lambda _v: None if self.sigma.isSliderDown() else self._noise_timer.start())
        side.add(group("Noise level", self.auto, srow, self.sigma_note))

        self.strength = QSlider(Qt.Orientation.Horizontal, self)
        self.strength.setRange(0, 100)
        self.strength.setValue(settings.denoise_strength)
        self.strength_label = QLabel(f"{settings.denoise_strength}%", self)
        self.strength_label.setMinimumWidth(40)
        self.strength.valueChanged.connect(self._strength_changed)
        strow = row(self, self.strength, self.strength_label)
        side.add(group("Strength", strow, note_label("How much of the denoised result to use; lower keeps more "
                                                     "of the original grain.", self)))

        self.grid = ResultGrid([("noise", "Noise level"), ("dims", "Image"), ("time", "Time"),
                                ("provider", "Provider")], self)
        self.stopped_note = note_label("", self)         # Esc stopped the run: what is shown, and why
        self.stopped_note.hide()
        side.add(group("Result", self.grid, self.stopped_note))
        self.save_btn = QPushButton("Save image\u2026", self)
        self.save_btn.setObjectName("primary")
        self.save_btn.clicked.connect(lambda: self.save_image())
        side.add(self.save_btn)
        self.lay_out(self.panel, side)
        self._noise_controls()
        self._update_buttons()

    # -- controls --------------------------------------------------------------------------------
    def _takes_sigma(self) -> bool:
        key = self.model.key()
        if not key:
            return False
        try:
            from aecompress.package import load_package
            return bool(load_package(key).manifest.get("sigma_input", False))
        except Exception:  # noqa: BLE001 - a broken package shows its error when it runs
            return False

    def _noise_controls(self) -> None:
        manual_ok = self._takes_sigma()
        # with the level estimated, the manual value (kept for later) is hidden, not shown greyed
        # beside an estimate that differs from it; the note gives the estimate once there is one
        self._sigma_row.setVisible(not self.auto.isChecked())
        # a blind model takes no level: the slider is greyed (moving it re-ran the model for nothing)
        for w in (self.sigma, self.sigma_spin):
            w.setEnabled(manual_ok)
            w.setToolTip("" if manual_ok else "This model finds the noise level itself")
        if self.auto.isChecked():
            self.sigma_note.setText("Estimated from the image (on the 0\u2013255 scale).")
        elif manual_ok:
            self.sigma_note.setText("The model is told this noise level.")
        else:
            self.sigma_note.setText("This model finds the noise level itself and takes none. "
                                    "Use Strength to denoise less.")

    def _model_changed(self, key: str) -> None:
        self.settings.denoise_model = key
        self.run()

    def keep_settings(self) -> None:
        """Store the noise level now, not when its timer fires (the window is closing)."""
        self._noise_timer.stop()
        self.settings.denoise_auto = self.auto.isChecked()
        self.settings.denoise_sigma = self.sigma.value()

    def _noise_changed(self, *_):
        self.keep_settings()
        self._noise_controls()
        if self.source is not None:
            self.run()

    def _strength_changed(self, v: int) -> None:
        self.strength_label.setText(f"{v}%")
        self.settings.denoise_strength = v
        self._blend_timer.start()

    def _ensemble_changed(self, *_):
        self.settings.denoise_ensemble = self.ensemble.currentData()
        self.run()

    def sigma_arg(self):
        return "auto" if self.auto.isChecked() else float(self.sigma.value())

    # -- input and work --------------------------------------------------------------------------
    def open_path(self, path: str | Path) -> None:
        path = Path(path)
        self.open_source(Source(path.name, path))

    def open_picture(self, pic: Picture, name: str = "pasted image") -> None:
        self.open_source(Source(name, None, pic))

    def open_source(self, src: Source) -> None:
        self.source, self.result, self._stale = src, None, False
        self.grid.clear()
        self.panel.view.set_images(None)
        self.panel.set_pair_controls(False)
        self._update_buttons()
        self.run()

    def run(self) -> None:
        if self.source is None:
            return
        if self._job is not None:
            self._job.cancel()
        self.stopped_note.hide()
        if self.result is not None:
            self._stale = True
            self._update_buttons()
        key = self.model.key()
        if not key:
            self.errorOccurred.emit("no denoiser model is installed: add a model folder "
                                    "(File \u203a Add model folder\u2026)")
            return
        src, runtime, sigma, strength = self.source, self.runtime, self.sigma_arg(), self.strength.value() / 100
        ensemble = self.ensemble.currentData()

        def job(token, emit):
            from aecompress.denoise import denoise_array, estimate_sigma

            pic, img = load_source(src)
            emit(("picture", pic, img))
            token.check()
            pkg = runtime.denoiser(key)
            out, info = denoise_array(pic.pixels, pkg, sigma=sigma, cancel=lambda: token.cancelled, ensemble=ensemble)
            token.check()
            shown = blend(pic.pixels, out, strength)
            a, b = _display(pic, pic.pixels), _display(pic, shown)
            return Denoised(pic, out, shown, strength, info, estimate_sigma(out), pyramid(to_qimage(b)),
                            pyramid(difference_image(a, b)))

        self.panel.view.set_busy(f"Denoising {src.name}\u2026")
        self.statusMessage.emit(f"Denoising {src.name}\u2026")
        self._job = self.work.submit(job, name="denoise", progress=self._progress, done=self._done,
                                     error=self._failed, cancelled=lambda: None)

    def _progress(self, payload) -> None:
        if payload[0] == "picture":
            _, pic, img = payload
            self.source.picture = pic
            if self.panel.view.before is None:
                self.panel.view.set_images(img, None, None, ("Input", "Denoised"))
            frames = f", frame 1 of {pic.frames}" if pic.frames > 1 else ""   # saving writes this frame only
            self.grid.set("dims", f"{pic.width} \u00d7 {pic.height}, {pic.mode}{frames}")

    def jobs(self) -> list:
        return [self._job, self._blend_job]

    def timers(self) -> list:
        """A noise level set by key or wheel runs once it rests, a new strength is mixed once it rests."""
        return ([self._noise_timer] if self.source is not None else []) + \
            ([self._blend_timer] if self.result is not None else [])

    def busy_with(self) -> str:
        return f"denoising {self.source.name}" if self.work.pending(self._job) else ""

    def files(self) -> list[Path]:
        return [self.source.path] if self.source is not None and self.source.path is not None else []

    def _stopped_by_user(self, jobs: list, timers: list) -> None:
        """Esc stopped the run (or the one a noise level still settling was about to start): the tab
        says so, as the Compress tab does, until the next run (a mixing at a new strength that Esc
        stopped puts the slider back instead)."""
        if self._blend_timer in timers:
            self._strength_back()
        if self._noise_timer in timers:
            self.keep_settings()              # the level set is kept; the result shown is for the one before
            if self.result is not None:
                self._stale = True
                self._update_buttons()
        elif not any(j is self._job for j in jobs):
            return
        if self.result is not None and self._stale:
            text = "Stopped: the result shown is for the earlier settings; change a setting to denoise again."
        elif self.result is None:
            text = "Stopped before the image was denoised: change a setting, or open it again, to denoise it."
        else:
            return
        self.stopped_note.setText(text)
        self.stopped_note.show()

    def _done(self, r: Denoised) -> None:
        self.result, self._stale = r, False
        self.stopped_note.hide()
        info = r.info
        self.panel.view.set_busy("")
        self.panel.view.set_after(r.after, r.diff)
        self.panel.set_pair_controls(True)
        est = info.get("sigma_estimate")
        if est is not None:
            before = f"\u03c3 \u2248 {est:.1f}"
            if self.auto.isChecked():
                self.sigma_note.setText(f"Estimated from the image: \u03c3 \u2248 {est:.1f} (on the 0\u2013255 scale).")
        else:
            before = "blind"
            if info.get("sigma") is not None:
                before = f"\u03c3 {info['sigma']:g} (set" + ("" if self._takes_sigma() else ", not used by this blind model") + ")"
        self.grid.set("noise", f"{before} \u2192 {r.sigma_after:.1f} after")
        self.grid.set("time", f"{info.get('seconds', 0):.2f} s")
        self.grid.set("provider", provider_text(info.get("provider"), long=False))
        self.providerUsed.emit(info.get("provider") or "")
        self._update_buttons()
        self.statusMessage.emit(f"Denoised {self.source.name} in {info.get('seconds', 0):.2f} s")
        if self.strength.value() / 100 != r.strength:     # Strength moved while the model ran
            self._reblend()

    def _reblend(self) -> None:
        r = self.result
        if r is None:
            return
        strength = self.strength.value() / 100

        def job(token, emit):
            shown = blend(r.picture.pixels, r.output, strength)
            a, b = _display(r.picture, r.picture.pixels), _display(r.picture, shown)
            return shown, pyramid(to_qimage(b)), pyramid(difference_image(a, b))

        def done(res) -> None:
            if self.result is r:
                r.shown, r.after, r.diff = res
                r.strength = strength
                self.panel.view.set_after(r.after, r.diff)
                self._update_buttons()

        def back() -> None:
            if self.result is r:
                self._strength_back()

        def failed(message: str) -> None:
            back()
            self.errorOccurred.emit(message)

        self._blend_job = self.work.submit(job, name="blend", done=done, error=failed, cancelled=back)

    def _strength_back(self) -> None:
        """The Strength slider goes back to the strength of the result shown (and saved)."""
        self.strength.blockSignals(True)
        self.strength.setValue(round(self.result.strength * 100))
        self.strength.blockSignals(False)
        self.strength_label.setText(f"{self.strength.value()}%")
        self.settings.denoise_strength = self.strength.value()

    def _failed(self, message: str) -> None:
        if self._stale:                       # what is on screen is not what the settings ask for
            self.result, self._stale = None, False
            # nor are the denoised image and its numbers, which can no longer be saved
            for key in ("noise", "time", "provider"):
                self.grid.set(key, "\u2013")
            self.panel.view.set_after(None)
            self.panel.set_pair_controls(False)
        self.panel.view.set_busy("")
        self.errorOccurred.emit(message)
        self._update_buttons()

    def _update_buttons(self) -> None:
        self.save_btn.setEnabled(self.result is not None and not self._stale)

    def _current(self) -> bool:
        """Whether the result shown is mixed at the Strength the slider shows."""
        r = self.result
        if r is not None and self._stale:
            busy = self._job is not None and not self._job.cancelled and self.work.busy
            self.statusMessage.emit("still denoising with the new settings: save when it is done" if busy else
                                    "stopped before the result for the new settings was made: change a setting "
                                    "to make it, then save")
            return False
        if r is not None and r.strength != self.strength.value() / 100:
            self.statusMessage.emit("still mixing at the new strength: save when it is done")
            return False
        return r is not None

    def save_image(self, path: str | Path | None = None) -> Path | None:
        """Save the denoised image as `aecompress denoise` writes it: the input's mode (CMYK and palette
        included, where the format holds them), bit depth, EXIF, colour profile, dpi and XMP. An
        animated input's first frame (the one shown) is offered as PNG: one frame written back as an
        animation would silently drop the others."""
        r = self.result
        if not self._current():
            return None
        if path is None:
            suffix = self.source.path.suffix if self.source.path is not None else ".png"
            if r.picture.frames > 1:
                suffix = ".png"
            path = ask_save_path(self, self.settings, "Save denoised image", f"{self.source.stem}.denoised{suffix}",
                                 IMAGE_FILTER, ".png", SAVE_EXTENSIONS)
            if path is None:
                return None
        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(".png")
        pic, shown = r.picture, r.shown
        self.saves.submit(lambda token, emit: save_image(path, shown, force=True, mode=pic.mode, exif=pic.exif,
                                                         icc=pic.icc, source=pic.info),
                          name="save", done=lambda note: self.statusMessage.emit(saved_text(path, note)),
                          error=self.errorOccurred.emit)
        return path
