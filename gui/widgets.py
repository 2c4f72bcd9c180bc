"""What the tabs share: their base class (ImageTab), the model picker, the side panel, a grid of
result numbers, a row of a slider and its box, and where a save dialog's answer points."""

from __future__ import annotations

import re
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication, QKeySequence
from PySide6.QtWidgets import (QComboBox, QFileDialog, QFrame, QGridLayout, QGroupBox, QHBoxLayout, QLabel,
                               QMenu, QMessageBox, QScrollArea, QSizePolicy, QVBoxLayout, QWidget)

from .runtime import Runtime
from .settings import Settings

ADD_FOLDER = "__add__"


class ModelPicker(QComboBox):
    """Installed packages of one kind plus added folders; the last item adds a package folder."""

    addFolderRequested = Signal()
    modelChanged = Signal(str)

    def __init__(self, runtime: Runtime, kind: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.runtime, self.kind = runtime, kind
        self._current = ""
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        self.activated.connect(self._activated)
        self.refresh()

    def refresh(self, select: str | None = None) -> None:
        want = select or self._current
        self.blockSignals(True)
        self.clear()
        for e in self.runtime.models(self.kind):
            self.addItem(e.label, e.key)
            self.setItemData(self.count() - 1, e.description or e.key, Qt.ItemDataRole.ToolTipRole)
        if self.count() == 0:
            self.addItem("(no model installed)", "")
        self.insertSeparator(self.count())
        self.addItem("Add model folder\u2026", ADD_FOLDER)
        i = self.findData(want) if want else -1
        self.setCurrentIndex(i if i >= 0 else 0)
        self.blockSignals(False)
        self._current = self.currentData() or ""

    def key(self) -> str:
        return self._current

    def select(self, key: str) -> None:
        i = self.findData(key)
        if i >= 0 and key != ADD_FOLDER:
            self.setCurrentIndex(i)
            self._current = key

    def _activated(self, index: int) -> None:
        key = self.itemData(index)
        if key == ADD_FOLDER:
            self.select(self._current)           # keep showing the model in use
            self.addFolderRequested.emit()
        elif key != self._current:
            self._current = key or ""
            self.modelChanged.emit(self._current)


ZWSP = "\u200b"


def breakable(text: str, run: int = 24) -> str:
    """text with zero-width break opportunities in words longer than `run` characters (after path
    separators, and every `run` characters): a word-wrapped label otherwise cannot break a
    200-character file name, and its minimum width pushed the side panel (or the window) past the
    screen. Shorter words (numbers, model ids) are left as they are. Labels showing such text are
    CleanCopyLabels, so what a user copies has no zero-width spaces in it."""
    def broken(word: str) -> str:
        out, since = [], 0
        for ch in word:
            out.append(ch)
            since += 1
            if ch in "/\\_-.," or since >= run:
                out.append(ZWSP)
                since = 0
        return "".join(out)

    return re.sub(r"\S{%d,}" % (run + 1), lambda m: broken(m.group(0)), text)


class CleanCopyLabel(QLabel):
    """A selectable label whose text may hold breakable()'s zero-width spaces: Ctrl+C and the
    context menu's Copy give the text without them."""

    def clean_selection(self) -> str:
        return self.selectedText().replace(ZWSP, "")

    def _copy(self) -> None:
        QGuiApplication.clipboard().setText(self.clean_selection())

    def keyPressEvent(self, event) -> None:
        if event.matches(QKeySequence.StandardKey.Copy) and self.hasSelectedText():
            self._copy()
            return
        super().keyPressEvent(event)

    def contextMenuEvent(self, event) -> None:
        menu = QMenu(self)
        copy = menu.addAction("Copy", self._copy)
        copy.setEnabled(self.hasSelectedText())
        menu.addAction("Select All", lambda: self.setSelection(0, len(self.text())))
        menu.exec(event.globalPos())


class ResultGrid(QWidget):
    """Label/value rows; values are selectable so users can copy numbers."""

    def __init__(self, rows: list[tuple[str, str]], parent: QWidget | None = None):
        super().__init__(parent)
        g = QGridLayout(self)
        g.setContentsMargins(0, 0, 0, 0)
        g.setHorizontalSpacing(12)
        g.setVerticalSpacing(5)
        self.values: dict[str, QLabel] = {}
        for r, (key, title) in enumerate(rows):
            t = QLabel(title, self)
            t.setObjectName("resultName")
            v = CleanCopyLabel("\u2013", self)
            v.setObjectName("resultValue")
            v.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            v.setWordWrap(True)             # a long value wraps inside the side panel instead of widening it
            g.addWidget(t, r, 0, Qt.AlignmentFlag.AlignTop)
            g.addWidget(v, r, 1)
            self.values[key] = v
        g.setColumnStretch(1, 1)

    def set(self, key: str, text: str) -> None:
        # words over 12 characters may break ("CPUExecution|Provider"): the widest unbreakable value
        # set the panel's minimum width, 2 px more than the viewport left beside a scroll bar
        self.values[key].setText(breakable(text, run=12))

    def clear(self) -> None:
        for v in self.values.values():
            v.setText("\u2013")

    def text(self, key: str) -> str:
        return self.values[key].text().replace(ZWSP, "")


def group(title: str, *widgets: QWidget, parent: QWidget | None = None) -> QGroupBox:
    box = QGroupBox(title, parent)
    lay = QVBoxLayout(box)
    lay.setSpacing(6)
    for w in widgets:
        lay.addWidget(w) if isinstance(w, QWidget) else lay.addLayout(w)
    return box


class SidePanel(QScrollArea):
    """The column of controls at the right of a tab, scrollable on small screens.

    Its width is `lines` line heights of its font (322 px with the usual 9 pt font), so a larger
    desktop font widens it instead of cutting its values off at the right."""

    def __init__(self, parent: QWidget | None = None, lines: float = 23):
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFixedWidth(round(lines * self.fontMetrics().height()))
        self.inner = QWidget(self)
        self.inner.setObjectName("sidePanel")
        self.layout_ = QVBoxLayout(self.inner)
        self.layout_.setContentsMargins(10, 8, 10, 10)
        self.layout_.setSpacing(10)
        self.setWidget(self.inner)
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Expanding)

    def add(self, w: QWidget, stretch: int = 0) -> QWidget:
        self.layout_.addWidget(w, stretch)
        return w

    def finish(self) -> None:
        self.layout_.addStretch(1)


def row(parent: QWidget, *widgets: QWidget, stretch_first: bool = True) -> QWidget:
    """A borderless row of widgets. With stretch_first the first takes the width the others leave (a
    slider and its box); without, the layout shares it out (a row of buttons)."""
    w = QWidget(parent)
    lay = QHBoxLayout(w)
    lay.setContentsMargins(0, 0, 0, 0)
    for i, x in enumerate(widgets):
        lay.addWidget(x, 1 if stretch_first and i == 0 else 0)
    return w


class ImageTab(QWidget):
    """A tab of the main window: a picture panel at the left, a side panel of controls at the
    right, and the signals the window listens to."""

    errorOccurred = Signal(str)
    statusMessage = Signal(str)
    providerUsed = Signal(str)
    addFolderRequested = Signal()

    def __init__(self, runtime: Runtime, settings: Settings, work, saves, parent: QWidget | None = None):
        """`work` runs the image work, `saves` writes files (never behind a measurement, and never
        cancelled: closing the window waits for them)."""
        super().__init__(parent)
        self.runtime, self.settings, self.work, self.saves = runtime, settings, work, saves

    def model_picker(self, kind: str, selected: str) -> "ModelPicker":
        """The picker of `kind` packages, showing `selected`; a choice calls `_model_changed`."""
        picker = ModelPicker(self.runtime, kind, self)
        picker.select(selected)
        picker.modelChanged.connect(self._model_changed)
        picker.addFolderRequested.connect(self.addFolderRequested)
        return picker

    def _model_changed(self, key: str) -> None:
        pass

    def jobs(self) -> list:
        """The tab's jobs that Esc stops (submitted to `work`, pending or not)."""
        return []

    def timers(self) -> list:
        """The tab's timers that start work once a setting rests (Esc stops them too)."""
        return []

    def files(self) -> list[Path]:
        """The files the tab reads: its messages name them by their name (MainWindow.show_error)."""
        return []

    def busy_with(self) -> str:
        """What this tab is doing that closing the window would stop, in a few words for the question
        closing asks ("compressing cat.png"), or "" when nothing is."""
        return ""

    def stop(self) -> bool:
        """Esc: stop this tab's work at its next step, and the work a setting still settling was about
        to start (it started after Esc); the other tabs' work goes on (it stopped too, and a Denoise
        running behind the Compress tab was left without a result or a word). True when there was
        work to stop."""
        jobs = [j for j in self.jobs() if self.work.pending(j)]
        timers = [t for t in self.timers() if t.isActive()]
        for t in timers:
            t.stop()
        for j in jobs:
            self.work.cancel(j)
        if jobs or timers:
            self.panel.view.set_busy("")
            self._stopped_by_user(jobs, timers)
        return bool(jobs or timers)

    def _stopped_by_user(self, jobs: list, timers: list) -> None:
        """After Esc stopped `jobs` and `timers` (the view's busy text is gone)."""

    def lay_out(self, panel: QWidget, side: "SidePanel") -> None:
        """The panel, then the finished side panel at the right."""
        side.finish()
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(panel, 1)
        lay.addWidget(side)


def note_label(text: str = "", parent: QWidget | None = None) -> QLabel:
    lab = QLabel(text, parent)
    lab.setObjectName("note")
    lab.setWordWrap(True)
    return lab


def saved_text(path: Path, note: str | None = None) -> str:
    """The status line after a save, with what the format did to the picture (a GIF's palette)."""
    return f"Saved {path}" + (f" \u2014 note: {note}" if note else "")


def ask_save_path(parent: QWidget, settings: Settings, title: str, suggested: str, filters: str, suffix: str,
                  accept: tuple[str, ...] = ()) -> Path | None:
    """Ask where to save, starting with `suggested` in the folder last saved to; None when the user
    cancels.

    A name typed without an extension (or, with `accept`, with one not in it) gets `suffix`
    appended. The dialog only asked about replacing the name as typed, so when the name changes
    here and that file exists, this asks before anything is replaced."""
    name, _ = QFileDialog.getSaveFileName(parent, title, str(Path(settings.folder("save")) / suggested), filters)
    if not name:
        return None
    settings.set_folder("save", name)
    path = Path(name)
    if not path.suffix or (accept and path.suffix.lower() not in accept):
        path = path.with_name(path.name + suffix)
        if path.exists():
            answer = QMessageBox.question(parent, "Replace file?", f"{path.name} already exists. Replace it?")
            if answer != QMessageBox.StandardButton.Yes:
                return None
    return path
