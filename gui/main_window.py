"""The main window: tabs for Compress, Decompress, Denoise and Batch, drag and drop, clipboard paste,
the device choice, the execution provider in the status bar, and error messages in the window.

Files dropped or opened are routed by type: one .aez file to Decompress, one image to Compress (or
Denoise when that tab is showing), several files (or any, while the Batch tab shows) to the Batch
queue, which then compresses or denoises images like the tab that was showing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QGuiApplication, QImage, QKeySequence
from PySide6.QtWidgets import (QComboBox, QFileDialog, QFrame, QHBoxLayout, QInputDialog, QLabel, QMainWindow,
                               QMessageBox, QProgressBar, QSpinBox, QTabWidget, QToolButton, QVBoxLayout, QWidget)

from aecompress import __version__ as VERSION
from aecompress.errors import AecError
from aecompress.imageio import Picture, is_image_name

from .batch_queue import BatchTab
from .compare import from_qimage
from .compress_tab import IMAGE_FILTER, CompressTab
from .decompress_tab import DecompressTab
from .denoise_tab import DenoiseTab
from .runtime import PROVIDER_NAMES, Runtime
from .settings import Settings
from .widgets import ZWSP, CleanCopyLabel, breakable
from .workers import WorkQueue

DEVICES = [("Auto", "auto"), ("CPU", "cpu"), ("CUDA", "cuda")]
OPEN_FILTER = IMAGE_FILTER[:-1] + " *.aez);;aecompress files (*.aez);;All files (*)"
CLOSE_WAIT_MS = 120_000        # the longest a model step may take before the app quits anyway


class ErrorBanner(QFrame):
    """A dismissable message across the top of the window (errors never open modal dialogs)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("errorBanner")
        self.label = CleanCopyLabel("", self)
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        icon = QLabel("\u26a0", self)
        icon.setObjectName("errorIcon")
        close = QToolButton(self)
        close.setText("\u2715")
        close.setAutoRaise(True)
        close.setToolTip("Dismiss")
        close.clicked.connect(self.hide)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(12, 6, 6, 6)
        lay.addWidget(icon)
        lay.addWidget(self.label, 1)
        lay.addWidget(close)
        self.hide()

    def show_message(self, text: str, detail: str = "") -> None:
        """Show `text`, with `detail` (the message naming files by their full path) as its tooltip."""
        self.label.setText(breakable(text))      # a long path wraps within the window instead of widening it
        self.label.setToolTip(detail)
        self.show()

    @property
    def text(self) -> str:
        return self.label.text().replace(ZWSP, "") if self.isVisible() else ""


def picture_from_qimage(img: QImage) -> Picture:
    a = from_qimage(img)
    return Picture(a, "RGBA" if a.shape[2] == 4 else "RGB", 8, None)


class MainWindow(QMainWindow):
    def __init__(self, settings: Settings | None = None, runtime: Runtime | None = None):
        super().__init__()
        self.settings = settings or Settings()
        self.runtime = runtime or Runtime(self.settings.device, self.settings.extra_models,
                                          self.settings.threads or None)
        self.work = WorkQueue(self, threads=1)           # interactive work, one step at a time
        self.batch_work = WorkQueue(self, threads=1)     # the batch queue, beside it
        self.saves = WorkQueue(self, threads=1)          # files the user saves: never cancelled, finished on quit
        self.setWindowTitle("aecompress")
        self.setAcceptDrops(True)
        self._closing = False
        self._named = None              # the tab whose file the window title names

        self.compress = CompressTab(self.runtime, self.settings, self.work, self.saves, self)
        self.decompress = DecompressTab(self.runtime, self.settings, self.work, self.saves, self)
        self.denoise = DenoiseTab(self.runtime, self.settings, self.work, self.saves, self)
        self.batch = BatchTab(self.runtime, self.settings, self.batch_work, self._batch_options, self)
        self.tabs = QTabWidget(self)
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.compress, "Compress")
        self.tabs.addTab(self.decompress, "Decompress")
        self.tabs.addTab(self.denoise, "Denoise")
        self.tabs.addTab(self.batch, "Batch")
        self.tabs.currentChanged.connect(lambda _i: self.batch._refresh_actions())
        for tab in (self.compress, self.decompress, self.denoise, self.batch):
            tab.errorOccurred.connect(self.show_error)
            tab.statusMessage.connect(self.show_status)
            tab.providerUsed.connect(self.set_provider)
        for tab in (self.compress, self.decompress, self.denoise):
            tab.errorOccurred.connect(lambda _m, t=tab: self._tab_failed(t))
        for tab in (self.compress, self.denoise):
            tab.addFolderRequested.connect(lambda: self.add_model_folder())
        mode = self.settings.compare_mode
        for tab in (self.compress, self.decompress, self.denoise):
            tab.panel.set_mode(mode)
            tab.panel.view.modeChanged.connect(self._mode_changed)

        self.banner = ErrorBanner(self)
        central = QWidget(self)
        lay = QVBoxLayout(central)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(self.banner)
        lay.addWidget(self.tabs, 1)
        self.setCentralWidget(central)

        self._build_status_bar()
        self._build_menus()
        geo = self.settings.geometry
        if geo is None or not self.restoreGeometry(geo):
            self.resize(1180, 760)
        for q in (self.work, self.batch_work, self.saves):
            q.busyChanged.connect(self._busy_changed)

    # -- chrome ----------------------------------------------------------------------------------
    def _build_status_bar(self) -> None:
        sb = self.statusBar()
        self.busy_bar = QProgressBar(self)
        self.busy_bar.setRange(0, 0)
        self.busy_bar.setFixedWidth(90)
        self.busy_bar.setMaximumHeight(14)
        self.busy_bar.hide()
        self.device = QComboBox(self)
        for label, key in DEVICES:
            self.device.addItem(label, key)
        self.device.setCurrentIndex(max(self.device.findData(self.runtime.device), 0))
        self.device.setToolTip("Where models run: Auto uses CUDA when it works, else the CPU")
        self.device.currentIndexChanged.connect(lambda _i: self.set_device(self.device.currentData()))
        self.threads = QSpinBox(self)
        self.threads.setRange(0, 256)
        self.threads.setKeyboardTracking(False)          # typing "12" sets 12 once, not 1 then 12
        self.threads.setSpecialValueText("auto")
        self.threads.setValue(self.runtime.threads or 0)
        self.threads.setToolTip("CPU threads per model (aecompress --threads N); auto: onnxruntime's default")
        self.threads.valueChanged.connect(self.set_threads)
        self.provider = QLabel("Provider: \u2013", self)
        self.provider.setObjectName("provider")
        self.provider.setToolTip("The ONNX Runtime execution provider that really ran the last model")
        self._permanent = [self.busy_bar, QLabel("Device:", self), self.device, QLabel("Threads:", self),
                           self.threads, self.provider]
        for w in self._permanent:
            sb.addPermanentWidget(w)

    def _build_menus(self) -> None:
        def act(menu, text, slot, shortcut=None) -> QAction:
            a = QAction(text, self)
            if shortcut is not None:
                a.setShortcut(shortcut)
            a.triggered.connect(slot)
            menu.addAction(a)
            return a

        f = self.menuBar().addMenu("&File")
        act(f, "&Open\u2026", lambda: self.open_dialog(), QKeySequence.StandardKey.Open)
        act(f, "&Paste image", self.paste, QKeySequence.StandardKey.Paste)
        f.addSeparator()
        act(f, "&Save result\u2026", self.save_result, QKeySequence.StandardKey.Save)
        act(f, "Save compressed .&aez\u2026", lambda: self.compress.save_aez())
        f.addSeparator()
        act(f, "Add &model folder\u2026", lambda: self.add_model_folder())
        self.remove_models_action = act(f, "&Remove added model folder\u2026", lambda: self.remove_model_folder())
        self.remove_models_action.setEnabled(bool(self.runtime.extra_folders))
        act(f, "S&top", self.stop, QKeySequence(Qt.Key.Key_Escape))
        f.addSeparator()
        act(f, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        v = self.menuBar().addMenu("&View")
        self.split_action = act(v, "&Split", lambda: self._mode_changed("split"))
        self.side_action = act(v, "Side &by side", lambda: self._mode_changed("side"))
        act(v, "&Fit", lambda: self._panel() and self._panel().view.fit(), "F")
        act(v, "&Actual size (1:1)", lambda: self._panel() and self._panel().view.actual_size(), "1")
        h = self.menuBar().addMenu("&Help")
        act(h, "&About aecompress", self.about)

    def stop(self) -> None:
        """Esc: stop the work of the tab showing (the image being analysed, compressed, decoded or
        denoised, at its next step; on the Batch tab, the batch, as its Cancel button does). The other
        tabs' work goes on: a Denoise running behind the Compress tab was stopped too."""
        tab = self.tabs.currentWidget()
        if tab is self.batch:
            if self.batch.running:
                self.batch.cancel()
        elif tab.stop():
            self.show_status("Stopped")

    def _panel(self):
        tab = self.tabs.currentWidget()
        return getattr(tab, "panel", None)

    def _set_mode(self, mode: str) -> None:
        for tab in (self.compress, self.decompress, self.denoise):
            tab.panel.set_mode(mode)

    def _mode_changed(self, mode: str) -> None:
        self.settings.compare_mode = mode
        self._set_mode(mode)

    def _busy_changed(self, _busy: bool) -> None:
        self.busy_bar.setVisible(self.work.busy or self.batch_work.busy or self.saves.busy)

    def _batch_options(self) -> dict:
        return {"codec": self.compress.model.currentText(), "codec_key": self.compress.model.key() or "photo",
                "quality": self.compress.quality.value(), "rate": self.compress.rate(),
                "refine": self.compress.refine.value(),
                "denoiser": self.denoise.model.key(),
                "ensemble": self.denoise.ensemble.currentData(),
                "denoiser_label": self.denoise.model.currentText() if self.denoise.model.key() else ""}

    # -- messages --------------------------------------------------------------------------------
    def show_error(self, message: str) -> None:
        """Show a message in the banner and the status bar. A file a tab reads is named by its name,
        as the batch queue names its files (the Decompress tab named a damaged .aez by its full path,
        and by its name when it failed to decode); the full message is the banner's tooltip."""
        if self._closing:                         # a save failing while the app quits: no window to show it
            print(f"aecompress: {message}", file=sys.stderr, flush=True)
        full = message
        files = {p for tab in (self.compress, self.decompress, self.denoise) for p in tab.files()}
        for p in sorted(files, key=lambda p: -len(str(p))):
            message = message.replace(str(p), p.name)
        self.banner.show_message(message, full if message != full else "")
        self._status(f"Error: {message}", 10_000)

    def show_status(self, message: str) -> None:
        self._status(message)

    def _status(self, text: str, timeout: int = 0) -> None:
        """A status message shortened in the middle (the whole of it in the tooltip) when it is longer
        than the room the device and thread controls leave: it ran into them, cut mid-letter."""
        sb = self.statusBar()
        room = sb.width() - sum(w.width() + 8 for w in self._permanent if w.isVisible()) - 24
        shown = text
        if sb.isVisible() and room > 80 and sb.fontMetrics().horizontalAdvance(text) > room:
            shown = sb.fontMetrics().elidedText(text, Qt.TextElideMode.ElideMiddle, room)
        sb.setToolTip(text if shown != text else "")
        sb.showMessage(shown, timeout)

    def _name_in_title(self, name: str, tab: QWidget) -> None:
        self._named = tab
        self.setWindowTitle(f"{name} \u2014 aecompress")

    def _tab_failed(self, tab: QWidget) -> None:
        """A file that could not be opened leaves nothing on screen: the title stops naming it."""
        if tab is self._named and tab.panel.view.before is None:
            self._named = None
            self.setWindowTitle("aecompress")

    def set_provider(self, provider: str) -> None:
        """'Provider: CPU' in the status bar (short: the status message needs the room), the exact
        ONNX Runtime provider in its tooltip and in the tabs' result panels."""
        if provider:
            short = PROVIDER_NAMES.get(provider, provider)
            self.provider.setText(f"Provider: {short}")
            self.provider.setToolTip(f"The ONNX Runtime execution provider that ran the last model: {provider}")

    def set_device(self, device: str) -> None:
        """Run models on another device from now on; the images on screen are processed again."""
        if device == self.runtime.device:
            return
        self.runtime.set_device(device)
        self.settings.device = device
        self.provider.setText("Provider: \u2013")
        self._runtime_changed()

    def _runtime_changed(self) -> None:
        """The images on screen are processed again with the models reopened."""
        self.compress.reload()
        if self.denoise.source is not None:
            self.denoise.run()

    def set_threads(self, n: int) -> None:
        """CPU threads per model from now on (0: onnxruntime's default); the images on screen are redone."""
        if (n or None) == self.runtime.threads:
            return
        self.runtime.set_threads(n or None)
        self.settings.threads = n
        self._runtime_changed()

    def about(self) -> None:
        QMessageBox.about(self, "About aecompress",
                          f"<b>aecompress {VERSION}</b><p>Compress and denoise images with autoencoders.</p>"
                          "<p>Drop photos or .aez files on the window. The same runtime as the "
                          "<tt>aecompress</tt> command line.</p>")

    # -- opening ---------------------------------------------------------------------------------
    def open_paths(self, paths: list[str | Path]) -> None:
        """One image or .aez goes to its tab, several files (or any, on the Batch tab) to the batch queue."""
        paths = [Path(p) for p in paths]
        files = [p for p in paths if not p.is_dir()]
        unreadable = []
        for d in (p for p in paths if p.is_dir()):      # a folder stands for its images and .aez files
            try:
                files += sorted(x for x in d.iterdir() if x.is_file() and (
                    is_image_name(x) or (x.suffix.lower() == ".aez" and not x.name.startswith("."))))
            except OSError as exc:                      # an unreadable folder fails alone, as in the CLI
                unreadable.append(f"{d}: cannot read this folder ({exc.strerror or exc})")
        if not files:
            self.show_error(unreadable[0] if unreadable else "nothing to open: drop image files or .aez files")
            return
        self.banner.hide()
        if unreadable:                                  # the files that could be read are opened all the same
            self.show_error(unreadable[0])
        self.settings.set_folder("open", files[0])
        showing = self.tabs.currentWidget()
        if len(files) > 1 or showing is self.batch:
            note = ""
            if showing in (self.compress, self.denoise) and not self.batch.running:
                # the tab a drop lands on picks the action, unless images already waiting in the queue
                # would silently change with it (the action applies to every waiting image)
                want = 1 if showing is self.denoise else 0
                if self.batch.action.currentIndex() != want and self.batch.waiting_images():
                    note = f"; the queue {self.batch.action.currentText().split()[0].lower()}s its images"
                else:
                    self.batch.action.setCurrentIndex(want)
            n = self.batch.add_paths(files)
            self.tabs.setCurrentWidget(self.batch)
            dup = len(files) - n
            self.show_status(f"{n} file{'s' if n != 1 else ''} added to the batch queue"
                             + (f" ({dup} already in it)" if dup else "") + note + ": press Start")
            return
        p = files[0]
        if p.suffix.lower() == ".aez":
            tab = self.decompress
        else:
            tab = self.denoise if showing is self.denoise else self.compress
        self._name_in_title(p.name, tab)
        self.tabs.setCurrentWidget(tab)
        tab.open_path(p)

    def open_picture(self, img: QImage, name: str = "pasted image") -> None:
        if img.isNull():
            self.show_error("the clipboard image is empty")
            return
        self.banner.hide()
        pic = picture_from_qimage(img)
        tab = self.denoise if self.tabs.currentWidget() is self.denoise else self.compress
        self._name_in_title(name, tab)
        self.tabs.setCurrentWidget(tab)
        tab.open_picture(pic, name)

    def open_dialog(self) -> None:
        names, _ = QFileDialog.getOpenFileNames(self, "Open images or .aez files", self.settings.folder("open"),
                                                OPEN_FILTER)
        if names:
            self.open_paths(names)

    def open_mime(self, mime) -> bool:
        """Open what a drop or the clipboard carries: file URLs first, else image data."""
        if mime.hasUrls():
            paths = [u.toLocalFile() for u in mime.urls() if u.isLocalFile()]
            if paths:
                self.open_paths(paths)
                return True
        if mime.hasImage():
            img = mime.imageData()
            if isinstance(img, QImage):
                self.open_picture(img)
                return True
        return False

    def paste(self) -> None:
        if not self.open_mime(QGuiApplication.clipboard().mimeData()):
            self.show_error("the clipboard holds no image and no image files")

    def dragEnterEvent(self, event) -> None:
        m = event.mimeData()
        if m.hasUrls() or m.hasImage():
            event.acceptProposedAction()

    def dragMoveEvent(self, event) -> None:
        event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        if self.open_mime(event.mimeData()):
            event.acceptProposedAction()

    # -- saving ----------------------------------------------------------------------------------
    def save_result(self) -> None:
        tab = self.tabs.currentWidget()
        if tab is self.compress:
            self.compress.save_aez()
        elif tab is self.decompress:
            self.decompress.save_image()
        elif tab is self.denoise:
            self.denoise.save_image()

    def add_model_folder(self, folder: str | Path | None = None) -> None:
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Add a model package folder",
                                                      self.settings.folder("models"))
            if not folder:
                return
        try:
            entry = self.runtime.add_folder(folder)
        except AecError as exc:
            self.show_error(str(exc))
            return
        self.settings.set_folder("models", Path(folder).parent)
        self._models_changed()
        self.decompress.retry()                   # a file that named a missing model may decode now
        picker = {"codec": self.compress.model, "denoiser": self.denoise.model}.get(entry.kind)
        if picker is not None:
            picker.select(entry.key)
            picker.modelChanged.emit(entry.key)
        self.show_status(f"Added model {entry.label}")

    def remove_model_folder(self, folder: str | None = None) -> None:
        """Forget a folder added with Add model folder (asks which when there are several)."""
        folders = list(self.runtime.extra_folders)
        if not folders:
            self.show_status("no model folders were added")
            return
        if folder is None:
            if len(folders) == 1:
                folder = folders[0]
            else:
                folder, ok = QInputDialog.getItem(self, "Remove a model folder", "Folder:", folders, 0, False)
                if not ok:
                    return
        if folder not in folders:
            return
        self.runtime.remove_folder(folder)
        self._models_changed()
        self.show_status(f"Removed model folder {folder}")

    def _models_changed(self) -> None:
        self.settings.extra_models = self.runtime.extra_folders
        self.remove_models_action.setEnabled(bool(self.runtime.extra_folders))
        for picker in (self.compress.model, self.denoise.model):
            before = picker.key()
            picker.refresh()
            if picker.key() != before:            # the chosen model went with its folder
                picker.modelChanged.emit(picker.key())

    # -- closing ---------------------------------------------------------------------------------
    def busy_with(self) -> list[str]:
        """The work closing the window would stop, in words (saves are not: they are finished)."""
        return [w for w in (t.busy_with() for t in (self.batch, self.compress, self.decompress, self.denoise)) if w]

    def ask_to_stop(self, work: list[str]) -> bool:
        """Ask whether to stop `work` and quit (True) or keep it running (False, the default)."""
        box = QMessageBox(QMessageBox.Icon.Question, "Quit aecompress?",
                          f"Still running: {', '.join(work)}. Stop {'it' if len(work) == 1 else 'them'} and quit?",
                          QMessageBox.StandardButton.NoButton, self)
        stop = box.addButton("Stop and quit", QMessageBox.ButtonRole.DestructiveRole)
        keep = box.addButton("Keep running", QMessageBox.ButtonRole.RejectRole)
        box.setDefaultButton(keep)
        box.setEscapeButton(keep)
        box.exec()
        box.deleteLater()
        return box.clickedButton() is stop

    def closeEvent(self, event: QCloseEvent) -> None:
        """Ask first while work runs (a batch, or a tab's coding, decoding or denoising: it closed
        without a word); then cancel all work, finish the saves and wait for the model step in flight
        (with the window already gone; a file being written is whole or not there), quit."""
        work = self.busy_with()
        if work and not self._closing and not self.ask_to_stop(work):
            event.ignore()
            return
        self.denoise.keep_settings()
        self.settings.geometry = self.saveGeometry()
        self.settings.sync()
        self.hide()
        self.shutdown()
        event.accept()

    def shutdown(self) -> None:
        """Cancel every job but the saves, which are finished, and wait for the workers (also run when
        the application quits). A save that fails now is reported on standard error."""
        self._closing = True
        self.denoise.keep_settings()
        for tab in (self.compress, self.decompress, self.denoise):
            for t in tab.timers():                       # nothing starts once the window is gone
                t.stop()
        self.batch.cancel()
        for q in (self.work, self.batch_work):           # stop them first: they share the CPU with the saves
            q.cancel_all()
        saved = self.saves.finish(CLOSE_WAIT_MS)
        if not (all(q.shutdown(CLOSE_WAIT_MS) for q in (self.work, self.batch_work)) and saved):
            print("aecompress: work still running at exit", flush=True)


def show_later(win: MainWindow, paths: list[str]) -> None:
    """Open command-line paths once the event loop runs."""
    if paths:
        QTimer.singleShot(0, lambda: win.open_paths(paths))
