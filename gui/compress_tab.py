"""The Compress tab: an image, a model, a quality (or a target bpp/size) and the result beside it.

The slow, quality-independent analysis transform runs once per image and model; moving the quality
slider then re-runs only the entropy coding (exact file size at once) and the reconstruction, on a
worker, debounced. Targets (bpp, size) go through aecompress.compress.encode_picture, like
`aecompress encode --bpp/--size`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QImage
from PySide6.QtWidgets import (QComboBox, QDoubleSpinBox, QLabel, QPushButton, QSlider, QSpinBox, QStackedWidget,
                               QWidget)

from aecompress.codec import Analysis, Codec
from aecompress.compress import encode_picture, in_mode, output_for
# the same conversion encode_picture applies before coding (alpha, 16-bit, greyscale models)
from aecompress.compress import coding_input
from aecompress.fsutil import write_bytes_atomic
from aecompress.imageio import IMAGE_SUFFIXES, Picture, read_image, save_image, to_rgb8, to_srgb
from aecompress.ladder import resolution_name
from aecompress.metrics import ms_ssim, psnr

from .compare import ComparePanel, difference_image, pyramid, to_qimage
from .runtime import Runtime, provider_text
from .settings import Settings
from .widgets import ImageTab, ResultGrid, SidePanel, ask_save_path, group, note_label, row, saved_text
from .workers import WorkQueue

DEBOUNCE_MS = 150
IMAGE_EXTENSIONS = tuple(sorted(IMAGE_SUFFIXES))         # what folder scans pick up: the Open filter


def _writable_extensions() -> tuple[str, ...]:
    """Every extension Pillow can write (.ico, .pcx, ... too): a save name with one keeps it."""
    from PIL import Image

    Image.init()
    return tuple(sorted(e for e, f in Image.registered_extensions().items() if f in Image.SAVE))


SAVE_EXTENSIONS = _writable_extensions()
IMAGE_FILTER = f"Images ({' '.join('*' + s for s in IMAGE_EXTENSIONS)})"


def human_bytes(n: int) -> str:
    if n < 1000:
        return f"{n} bytes"
    if n < 1_000_000:
        return f"{n / 1000:.1f} kB"
    return f"{n / 1_000_000:.2f} MB"


def ratio_text(x: float) -> str:
    """A compression ratio, '41.5'; below 1 (a tiny image's file is larger than its pixels) with the
    digits the CLI gives it, '0.032' (it read '0.0 : 1')."""
    return f"{x:.{1 if x >= 1 else 3}f}"


def size_text(n: int) -> str:
    """'5.3 kB (5,285 bytes)'; small sizes once: '50 bytes'."""
    return human_bytes(n) + (f" ({n:,} bytes)" if n >= 1000 else "")


@dataclass
class Source:
    """An image to work on: a file, or pixels pasted from the clipboard (path None)."""

    name: str
    path: Path | None = None
    picture: Picture | None = None

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    @property
    def file_bytes(self) -> int | None:
        try:
            return self.path.stat().st_size if self.path is not None else None
        except OSError:
            return None


def load_source(src: Source) -> tuple[Picture, list[QImage]]:
    """Read the picture (on a worker) and make its display image (as a pyramid, see compare.pyramid),
    in sRGB: a photo in another RGB space (Display P3, Adobe RGB) shows as it looks, and as its
    reconstruction (coded in sRGB) shows."""
    pic = src.picture if src.picture is not None else read_image(src.path)
    return pic, pyramid(to_qimage(to_srgb(to_rgb8(pic), pic.icc)[0]))


@dataclass
class Prepared:
    picture: Picture
    codec: Codec
    reference: np.ndarray         # the pixels that are coded (after mode conversion)
    analysis: Analysis
    notes: list[str]
    seconds: float


@dataclass
class Result:
    data: bytes
    recon: np.ndarray
    position: float                # on the codec's quality scale
    quality: float
    psnr: float
    ms_ssim: float | None          # None until computed (it comes last: slow on large images)
    seconds_encode: float
    seconds_decode: float
    provider: str
    after: list[QImage]            # pyramids (compare.pyramid), built on the worker
    diff: list[QImage]
    notes: list[str] = field(default_factory=list)
    rate: tuple = ()               # the CompressTab.rate() it was made for


class CompressTab(ImageTab):
    def __init__(self, runtime: Runtime, settings: Settings, work: WorkQueue, saves: WorkQueue,
                 parent: QWidget | None = None):
        super().__init__(runtime, settings, work, saves, parent)
        self.source: Source | None = None
        self.prepared: Prepared | None = None
        self.result: Result | None = None
        self._stale = False           # the settings changed since `result` was made; a new one is on its way
        self._prep_job = None
        self._prep_failed = False
        self._enc_job = None
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self.encode)

        self.panel = ComparePanel(self, ("Original", "Compressed"))
        side = SidePanel(self)

        self.model = self.model_picker("codec", settings.model)
        side.add(group("Model", self.model))

        self.rate_mode = QComboBox(self)
        self.rate_mode.addItems(["Quality 1\u2013100", "Target bits per pixel", "Target file size"])
        self.quality = QSlider(Qt.Orientation.Horizontal, self)
        self.quality.setRange(1, 100)
        self.quality.setValue(settings.quality)
        self.quality.setPageStep(5)
        self.quality_spin = QSpinBox(self)
        self.quality_spin.setRange(1, 100)
        self.quality_spin.setValue(settings.quality)
        self.quality.valueChanged.connect(self.quality_spin.setValue)
        self.quality_spin.valueChanged.connect(self.quality.setValue)
        self.quality.valueChanged.connect(self._rate_changed)
        qrow = row(self, self.quality, self.quality_spin)
        self.bpp = QDoubleSpinBox(self)
        self.bpp.setRange(0.01, 24.0)
        self.bpp.setDecimals(2)
        self.bpp.setSingleStep(0.05)
        self.bpp.setValue(settings.target_bpp)
        self.bpp.setSuffix(" bpp")
        self.bpp.valueChanged.connect(self._rate_changed)
        self.size_kb = QDoubleSpinBox(self)
        self.size_kb.setRange(0.1, 1_000_000)
        self.size_kb.setDecimals(1)
        self.size_kb.setValue(settings.target_kb)
        self.size_kb.setSuffix(" kB")
        self.size_kb.valueChanged.connect(self._rate_changed)
        self.rate_stack = QStackedWidget(self)
        for w in (qrow, self.bpp, self.size_kb):
            self.rate_stack.addWidget(w)
        self.rate_stack.setFixedHeight(qrow.sizeHint().height() + 4)
        self.rate_mode.setCurrentIndex(settings.rate_mode)
        self.rate_stack.setCurrentIndex(settings.rate_mode)
        self.rate_mode.currentIndexChanged.connect(self.rate_stack.setCurrentIndex)
        self.rate_mode.currentIndexChanged.connect(self._rate_changed)
        self.estimate = QLabel("", self)
        self.estimate.setObjectName("estimate")
        self.estimate.setWordWrap(True)         # a longer note wraps instead of widening the side panel
        self.refine = QSpinBox(self)
        self.refine.setRange(0, 200)
        self.refine.setSingleStep(10)
        self.refine.setSpecialValueText("no refinement (fast)")
        self.refine.setPrefix("refine ")
        self.refine.setSuffix(" steps")
        self.refine.setValue(settings.refine)
        self.refine.setToolTip("Slower; smaller files at equal PSNR: optimise the latent for this image (encode --refine). "
                               "50 steps on 2 cores: about 9 s for a 500x500 photo at q 75, 20 s at q 95; files decode as usual.")
        self.refine.valueChanged.connect(self._rate_changed)
        self._refine_tip = self.refine.toolTip()
        side.add(group("Quality", self.rate_mode, self.rate_stack, self.refine, self.estimate))

        self.grid = ResultGrid([("size", "File size"), ("bpp", "Bits per pixel"), ("ratio", "Compression"),
                                ("psnr", "PSNR"), ("msssim", "MS-SSIM"), ("quality", "Quality"),
                                ("time", "Time"), ("provider", "Provider")], self)
        self.notes = note_label("", self)
        self.notes.hide()
        side.add(group("Result", self.grid, self.notes))

        self.save_aez_btn = QPushButton("Save .aez\u2026", self)
        self.save_aez_btn.setObjectName("primary")
        self.save_aez_btn.setToolTip("Save the compressed file (Ctrl+S)")
        self.save_img_btn = QPushButton("Save image\u2026", self)
        self.save_img_btn.setToolTip("Save the reconstruction as PNG, JPEG, WebP, ...")
        self.save_aez_btn.clicked.connect(lambda: self.save_aez())
        self.save_img_btn.clicked.connect(lambda: self.save_image())
        side.add(row(self, self.save_aez_btn, self.save_img_btn, stretch_first=False))
        self.lay_out(self.panel, side)
        self._update_buttons()

    # -- input -----------------------------------------------------------------------------------
    def open_path(self, path: str | Path) -> None:
        path = Path(path)
        self.open_source(Source(path.name, path))

    def open_picture(self, pic: Picture, name: str = "pasted image") -> None:
        self.open_source(Source(name, None, pic))

    def open_source(self, src: Source) -> None:
        self.source, self.prepared, self.result, self._stale = src, None, None, False
        self.grid.clear()
        self.estimate.setText("")
        self.notes.hide()
        self.panel.view.set_images(None)
        self.panel.set_pair_controls(False)
        self._update_buttons()
        self.prepare()

    def prepare(self) -> None:
        """Read the image and run the analysis transform (once per image, model and device)."""
        if self.source is None:
            return
        self._set_stale()                 # the result shown was made with the model or device before
        for j in (self._prep_job, self._enc_job):
            if j is not None:
                j.cancel()
        self.prepared = None
        src, key, runtime = self.source, self.model.key(), self.runtime
        if not key:
            self.errorOccurred.emit("no codec model is installed: add a model folder "
                                    "(File \u203a Add model folder\u2026)")
            return

        def job(token, emit):
            pic, img = load_source(src)
            emit(("picture", pic, img))
            token.check()
            codec = runtime.codec(key)
            ref, notes = coding_input(pic, codec)
            token.check()
            t0 = time.perf_counter()
            analysis = codec.analyse(ref, check=token.check)
            return Prepared(pic, codec, ref, analysis, notes, time.perf_counter() - t0)

        self._set_busy(f"Analysing {src.name}\u2026")
        self._prep_failed = False
        self._prep_job = self.work.submit(job, name="analyse", progress=self._prep_progress, done=self._prepared,
                                          error=self._analysis_failed, cancelled=lambda: None)

    def _analysis_failed(self, message: str) -> None:
        self._prep_failed = True                # a change of quality or target tries the image again
        self._failed(message)

    def _prep_progress(self, payload) -> None:
        if payload[0] == "picture":
            _, pic, img = payload
            self.source.picture = pic
            self.panel.view.set_images(img, None, None, ("Original", "Compressed"))
            self.panel.set_pair_controls(False)
            self.statusMessage.emit(f"{self.source.name}: {pic.width}\u00d7{pic.height}, {pic.mode}"
                                    + (f", {pic.bits}-bit" if pic.bits != 8 else ""))

    def _prepared(self, p: Prepared) -> None:
        self.prepared = p
        self._fit_controls(p.codec)
        self.providerUsed.emit(p.codec.pkg.provider)
        self.encode()

    def _fit_controls(self, codec) -> None:
        """Grey what the model has nothing behind, saying why: a model of one quality level (a dense
        codec) codes every image at it, so there is no quality or target to choose, and refinement
        needs a hyperprior codec with a refinement graph. The values stay for the next model."""
        one_level = codec.span <= 0
        for w in (self.rate_mode, self.rate_stack):
            w.setEnabled(not one_level)
            w.setToolTip(f"model {codec.pkg.name} has one quality level: every image is coded at it"
                         if one_level else "")
        problem = codec.refine_problem()
        self.refine.setEnabled(problem is None)
        self.refine.setToolTip(problem or self._refine_tip)

    # -- rate ------------------------------------------------------------------------------------
    def _rate_changed(self, *_):
        s = self.settings
        s.rate_mode, s.quality, s.target_bpp, s.target_kb = (self.rate_mode.currentIndex(), self.quality.value(),
                                                             self.bpp.value(), self.size_kb.value())
        s.refine = self.refine.value()
        if self.prepared is not None:
            self._set_stale()
            if self._enc_job is not None:     # its result would be for the value before
                self._enc_job.cancel()
            self._debounce.start()
        elif self.source is not None and self._prep_job is not None and (self._prep_job.cancelled or self._prep_failed):
            self.prepare()                    # its analysis was stopped (Esc) or failed: run it again

    def rate(self) -> tuple[str, float]:
        i = self.rate_mode.currentIndex()
        if i == 1:
            return "bpp", self.bpp.value()
        if i == 2:
            return "size", self.size_kb.value() * 1000
        return "quality", float(self.quality.value())

    def _model_changed(self, key: str) -> None:
        self.settings.model = key
        self.reload()

    def reload(self) -> None:
        """Re-run everything for the current image (after a model or device change)."""
        if self.source is not None:
            self.prepare()

    def encode(self) -> None:
        """Code the analysed image at the current quality (or target) on a worker."""
        self._debounce.stop()
        p = self.prepared
        if p is None:
            return
        if self._enc_job is not None:
            self._enc_job.cancel()
        self._set_stale()
        mode, value = self.rate()
        steps = self.refine.value()

        def job(token, emit):
            codec, pic = p.codec, p.picture
            t0 = time.perf_counter()
            notes = list(p.notes)
            if mode == "quality":
                data, st = codec.code(p.analysis, codec.quality_to_position(value), pic.mode, pic.bits,
                                      pic.has_alpha, refine=steps, check=token.check)
                t_enc = p.seconds + time.perf_counter() - t0
                emit(("estimate", len(data)))
                token.check()
                t1 = time.perf_counter()
                recon, position = codec.reconstruct(st, pic.height, pic.width, token.check), st["position"]
                t_dec = time.perf_counter() - t1
                scale = st["scale"]
            else:
                enc = encode_picture(pic, codec, target_bpp=value if mode == "bpp" else None,
                                     target_size=int(value) if mode == "size" else None, analysis=p.analysis,
                                     check=token.check, refine=steps)
                data, recon, position, notes, scale = enc.data, enc.recon, enc.position, enc.notes, enc.scale
                t_enc, t_dec = p.seconds + time.perf_counter() - t0, 0.0
            if scale != 1:
                notes = notes + [f"coded at {resolution_name(scale)} resolution and upsampled (the model's low-rate setting)"
                                 if scale > 1 else f"coded at {resolution_name(scale)} resolution and downsampled "
                                 "(the model's high-rate setting)"]
            token.check()
            # metrics in the source's channel layout, as the decoded file will be (greyscale: one channel)
            ref_m, rec_m = in_mode(p.reference, pic.mode), in_mode(recon, pic.mode)
            res = Result(data, recon, position, codec.position_to_quality(position), psnr(ref_m, rec_m), None,
                         t_enc, t_dec, codec.pkg.provider, pyramid(to_qimage(recon)),
                         pyramid(difference_image(p.reference, recon)), notes, (mode, value))
            emit(("result", res))
            token.check()
            return replace(res, ms_ssim=ms_ssim(ref_m, rec_m, token.check))

        self._set_busy(("Compressing" if mode == "quality" else "Searching for the target")
                       + (f" and refining ({steps} steps)" if steps and p.codec.can_refine() else "") + "\u2026")
        self._enc_job = self.work.submit(job, name="encode", progress=self._estimate, done=self._encoded,
                                         error=self._failed, cancelled=self._stopped)

    def _estimate(self, payload) -> None:
        if payload[0] == "result":
            self._encoded(payload[1])
        elif payload[0] == "estimate":
            n = payload[1]
            pic = self.prepared.picture
            self.estimate.setText(f"\u2248 {human_bytes(n)} \u00b7 {n * 8 / (pic.width * pic.height):.3f} bpp")

    def _encoded(self, r: Result) -> None:
        if r.rate != self.rate():             # made for a setting the user has moved away from
            return
        self.result, self._stale = r, False
        pic = self.prepared.picture
        n, px = len(r.data), pic.width * pic.height
        self.estimate.setText(f"{human_bytes(n)} \u00b7 {n * 8 / px:.3f} bpp")
        self.grid.set("size", size_text(n))
        self.grid.set("bpp", f"{n * 8 / px:.3f}")
        ratio = f"{ratio_text(px * 3 / n)} : 1 vs raw"
        fb = self.source.file_bytes
        if fb:
            ratio += f"\n{ratio_text(fb / n)} : 1 vs the {self.source.path.suffix.lstrip('.').upper() or 'input'} file"
        self.grid.set("ratio", ratio)
        self.grid.set("psnr", "\u221e (lossless)" if r.psnr == float("inf") else f"{r.psnr:.2f} dB")
        self.grid.set("msssim", f"{r.ms_ssim:.4f}" if r.ms_ssim is not None else "computing\u2026")
        self.grid.set("quality", f"{r.quality:.0f}" if abs(r.quality - round(r.quality)) < 0.05 else f"{r.quality:.1f}")
        t = f"{r.seconds_encode:.2f} s to encode"
        if r.seconds_decode:
            t += f"\n{r.seconds_decode:.2f} s to decode"
        self.grid.set("time", t)
        self.grid.set("provider", provider_text(r.provider, long=False))
        self.notes.setText("\n".join(f"Note: {x}" for x in r.notes))
        self.notes.setVisible(bool(r.notes))
        self.panel.view.set_after(r.after, r.diff)
        self.panel.set_pair_controls(True)
        self.providerUsed.emit(r.provider)
        self._update_buttons()
        if r.ms_ssim is None:
            self._set_busy("Measuring MS-SSIM\u2026")
            return
        self._set_busy("")
        self.statusMessage.emit(f"{self.source.name}: {human_bytes(n)}, {n * 8 / px:.3f} bpp, "
                                f"PSNR {r.psnr:.2f} dB, MS-SSIM {r.ms_ssim:.4f}")

    def _failed(self, message: str) -> None:
        if self._stale:                       # what is on screen is not what the settings ask for
            self.result, self._stale = None, False
            # nor are its numbers: the panel described a result that can no longer be saved
            self.grid.clear()
            self.notes.hide()
            self.estimate.setText("")
            self.panel.view.set_after(None)
            self.panel.set_pair_controls(False)
        self._set_busy("")
        self.errorOccurred.emit(message)
        self._update_buttons()

    def _set_busy(self, text: str) -> None:
        self.panel.view.set_busy(text)
        if text:
            self.statusMessage.emit(text)

    def _set_stale(self) -> None:
        if self.result is not None and not self._stale:
            self._stale = True
            self.estimate.setText("\u2026")
            self._update_buttons()

    def _working(self) -> bool:
        """Whether a result for the current settings is on its way (an analysis or a coding that was not
        stopped, or one about to start once the quality rests)."""
        return self._debounce.isActive() or any(self.work.pending(j) for j in (self._prep_job, self._enc_job))

    def jobs(self) -> list:
        return [self._prep_job, self._enc_job]

    def timers(self) -> list:
        return [self._debounce]

    def files(self) -> list[Path]:
        return [self.source.path] if self.source is not None and self.source.path is not None else []

    def busy_with(self) -> str:
        """The analysis or the coding of a result not yet shown (the MS-SSIM of the result shown,
        measured last, is not worth asking about)."""
        if self.work.pending(self._prep_job) or (self.work.pending(self._enc_job)
                                                 and (self._stale or self.result is None)):
            return f"compressing {self.source.name}"
        return ""

    def _stopped_by_user(self, jobs: list, timers: list) -> None:
        r = self.result
        if r is not None and not self._stale and r.ms_ssim is None and any(j is self._enc_job for j in jobs):
            self.grid.set("msssim", "not measured (stopped)")     # it said "computing…" for good
        self._stopped()                       # at once: a coding that never started has no cancelled callback

    def _stopped(self) -> None:
        """Esc while the result for a new setting was being made: the result shown stays, and says
        it is the earlier one (the status bar and Save, which stay off, no longer wait for it). A
        coding cancelled because the setting moved on, or the model changed, stopped nothing: the
        result for the new setting is on its way (this said "stopped" until it came)."""
        if self._stale and self.result is not None and not self._working():
            self.estimate.setText("stopped: the result shown is the earlier one")

    def _update_buttons(self) -> None:
        ok = self.result is not None and not self._stale
        self.save_aez_btn.setEnabled(ok)
        self.save_img_btn.setEnabled(ok)

    # -- saving ----------------------------------------------------------------------------------
    def _current(self) -> bool:
        """Whether the result shown is the one for the current settings (not one being replaced)."""
        if self.result is not None and self._stale:
            working = self._working()
            self.statusMessage.emit("still compressing at the new setting: save when it is done" if working else
                                    "stopped before the result for the new setting was made: change a setting "
                                    "to make it, then save")
        return self.result is not None and not self._stale

    def save_aez(self, path: str | Path | None = None) -> Path | None:
        """Write the compressed file; asks where unless given a path. Returns the path written."""
        if not self._current():
            return None
        if path is None:
            suggested = output_for(Path(self.source.name), None, False, ".aez").name
            path = ask_save_path(self, self.settings, "Save compressed file", suggested, "aecompress files (*.aez)",
                                 ".aez", (".aez",))
            if path is None:
                return None
        path = Path(path)
        data = self.result.data
        self.saves.submit(lambda token, emit: write_bytes_atomic(path, data, force=True), name="save",
                          done=lambda _: self.statusMessage.emit(f"Saved {path} ({human_bytes(len(data))})"),
                          error=self.errorOccurred.emit)
        return path

    def save_image(self, path: str | Path | None = None) -> Path | None:
        if not self._current():
            return None
        if path is None:
            path = ask_save_path(self, self.settings, "Save reconstruction", f"{self.source.stem}-compressed.png",
                                 IMAGE_FILTER, ".png", SAVE_EXTENSIONS)
            if path is None:
                return None
        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(".png")
        mode = self.prepared.picture.mode if self.prepared is not None else "RGB"
        recon = in_mode(self.result.recon, mode)                # as `aecompress decode` writes it
        self.saves.submit(lambda token, emit: save_image(path, recon, force=True),
                          name="save", done=lambda note: self.statusMessage.emit(saved_text(path, note)),
                          error=self.errorOccurred.emit)
        return path
