"""The Batch tab: many files at once, with per-file and overall progress, cancel, skip existing,
an output folder, and errors listed per file without stopping the queue.

Images are compressed (aecompress.compress.encode_file, as `aecompress encode`) or denoised
(aecompress.batch.run_batch, as `aecompress denoise`); .aez files are decompressed
(aecompress.compress.decode_file, as `aecompress decode`). Output names are those of the CLI.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QEvent, QObject, QRect, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QKeySequence, QShortcut
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QComboBox, QFileDialog, QHBoxLayout, QHeaderView,
                               QLabel, QLineEdit, QMessageBox, QProgressBar, QPushButton, QStyle,
                               QStyledItemDelegate, QStyleOptionProgressBar, QStyleOptionViewItem, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from aecompress.compress import decode_file, encode_file, open_codec, output_for
from aecompress.errors import AecError
from aecompress.fsutil import first_writers

from .compress_tab import IMAGE_FILTER, ratio_text
from .runtime import APP_MODEL_HINT, Runtime
from .settings import Settings
from .workers import Cancelled, WorkQueue

WAITING, WORKING, DONE, SKIPPED, FAILED, CANCELLED = "Waiting", "Working", "Done", "Skipped", "Failed", "Cancelled"
FINISHED = (DONE, SKIPPED)
ENDED = (DONE, SKIPPED, FAILED)          # what the overall bar counts
PROGRESS_COLUMN = 2
PROGRESS_ROLE = Qt.ItemDataRole.UserRole + 1    # the bar's fill, 0-100, or BUSY
STATE_ROLE = Qt.ItemDataRole.UserRole + 2       # its look: the style sheet's QProgressBar#fileProgress[state=...]
BUSY = -1                                       # a file being worked on: the runtime reports whole files


@dataclass
class Item:
    path: Path
    status: str = WAITING
    message: str = ""
    output: Path | None = None
    action: str | None = None      # what its last run did with it (shown while it stays finished)
    real: Path | None = field(default=None, repr=False)     # path.resolve(), found once

    def __post_init__(self) -> None:
        if self.real is None:
            self.real = self.path.resolve()

    @property
    def is_aez(self) -> bool:
        return self.path.suffix.lower() == ".aez"


def destination(src: Path, action: str, folder: Path | None) -> Path:
    """Where a batch writes a file's result: the CLI's names, in `folder` when one is chosen."""
    if action == "denoise":
        from aecompress.batch import default_output
        return folder / default_output(src).name if folder is not None else default_output(src)
    suffix = ".png" if action == "decompress" else ".aez"
    return output_for(src, folder, folder is not None, suffix)


def _rate(o: dict) -> tuple[str, float]:
    return o.get("rate") or ("quality", float(o["quality"]))


def _rate_words(o: dict) -> str:
    """How the Compress tab's rate setting reads in the batch's note: each file gets it."""
    mode, value = _rate(o)
    if mode == "bpp":
        return f"at {value:g} bits per pixel (each file)"
    if mode == "size":
        return f"at {value / 1000:g} kB (each file)"
    return f"at quality {value:g}"


def _refine_words(o: dict) -> str:
    return f", refined in {o['refine']} steps" if o.get("refine") else ""


def _rate_arguments(o: dict) -> dict:
    """encode_file's arguments for the rate set in the Compress tab, as `aecompress encode` takes
    -q, --bpp or --size."""
    mode, value = _rate(o)
    if mode == "bpp":
        return {"target_bpp": value}
    if mode == "size":
        return {"target_size": int(value)}
    return {"quality": value}


class ProgressDelegate(QStyledItemDelegate):
    """Each row's progress bar, painted by the table from its item: the text (Waiting, Done, Failed,
    ...) is the item's, so the view's keyboard and accessibility read it; PROGRESS_ROLE fills it and
    STATE_ROLE picks its colours. A QProgressBar set in every row (setCellWidget) made dropping 10,000
    files take 4.2 s and their first paint 26 s, and removing them 3.2 s, the window frozen meanwhile.

    The bars look as the app's style sheet draws QProgressBar#fileProgress: each state is drawn
    through a hidden bar of that name and state. A busy bar moves with the style's own animation,
    which repaints the column while a busy bar was painted since its last step and then stops."""

    def __init__(self, view: QTableWidget):
        super().__init__(view)
        self.view = view
        self._bars: dict[str, QProgressBar] = {}
        self._busy_painted = False
        self._ticker = _Ticker(self)

    def _bar(self, state: str) -> QProgressBar:
        bar = self._bars.get(state)
        if bar is None:
            bar = self._bars[state] = QProgressBar(self.view)
            bar.setObjectName("fileProgress")
            bar.setProperty("state", state)
            bar.hide()
            bar.ensurePolished()
        return bar

    def paint(self, painter, option, index) -> None:
        cell = QStyleOptionViewItem(option)
        self.initStyleOption(cell, index)
        text, cell.text = cell.text, ""
        style = self.view.style()
        style.drawControl(QStyle.ControlElement.CE_ItemViewItem, cell, painter, self.view)   # selection, focus
        value = index.data(PROGRESS_ROLE)
        busy = value == BUSY
        bar = self._bar(index.data(STATE_ROLE) or "waiting")
        opt = QStyleOptionProgressBar()
        opt.initFrom(bar)
        opt.rect = option.rect.adjusted(4, 3, -4, -3)
        opt.state = (option.state & QStyle.StateFlag.State_Enabled) | QStyle.StateFlag.State_Horizontal
        opt.direction = option.direction
        opt.minimum, opt.maximum = 0, 0 if busy else 100
        opt.progress = 0 if busy else int(value or 0)
        opt.text = "" if busy else text          # as a busy QProgressBar: the moving block alone
        opt.textVisible = True
        opt.textAlignment = Qt.AlignmentFlag.AlignCenter
        opt.styleObject = self._ticker if busy else None
        if busy:
            self._busy_painted = True
        bar.style().drawControl(QStyle.ControlElement.CE_ProgressBar, opt, painter, bar)

    def _tick(self) -> bool:
        """A step of the busy animation: repaint the column; False (the animation stops) once no
        busy bar was painted since the last step (none is busy, or none is scrolled into view)."""
        if not self._busy_painted:
            return False
        self._busy_painted = False
        vp = self.view.viewport()
        vp.update(QRect(self.view.columnViewportPosition(PROGRESS_COLUMN), 0,
                        self.view.columnWidth(PROGRESS_COLUMN), vp.height()))
        return True


class _Ticker(QObject):
    """What the style's busy-bar animation updates (it stops when its update is not accepted)."""

    def __init__(self, delegate: ProgressDelegate):
        super().__init__(delegate)
        self.delegate = delegate

    def event(self, ev) -> bool:
        if ev.type() == QEvent.Type.StyleAnimationUpdate:
            ev.setAccepted(self.delegate._tick())
            return True
        return super().event(ev)


class BatchTab(QWidget):
    errorOccurred = Signal(str)
    statusMessage = Signal(str)
    providerUsed = Signal(str)
    finished = Signal(object)          # the list of items when a run ends (done or cancelled)

    def __init__(self, runtime: Runtime, settings: Settings, work: WorkQueue,
                 options: Callable[[], dict], parent: QWidget | None = None):
        """options() returns the codec/denoiser model and quality set in the other tabs."""
        super().__init__(parent)
        self.runtime, self.settings, self.work, self.options = runtime, settings, work, options
        self.items: list[Item] = []
        self._job = None
        self._rows: list[int] = []
        self._ended_count = 0                 # files of the queue ENDED, while a batch runs
        # the overall bar follows it at most 10 times a second: QProgressBar.setValue paints the bar
        # there and then (0.2 ms), once per file took 4 s of 10,000 files failing one after another
        self._overall_timer = QTimer(self)
        self._overall_timer.setSingleShot(True)
        self._overall_timer.setInterval(100)
        self._overall_timer.timeout.connect(lambda: self.overall.setValue(self._ended_count))
        self._t0 = time.perf_counter()

        self.table = QTableWidget(0, 4, self)
        self.table.setHorizontalHeaderLabels(["File", "Action", "Progress", "Result"])
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        h = self.table.horizontalHeader()
        h.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        h.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        h.setSectionResizeMode(2, QHeaderView.ResizeMode.Fixed)
        h.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.table.setColumnWidth(0, 220)
        self.table.setColumnWidth(2, 130)
        self.progress_delegate = ProgressDelegate(self.table)
        self.table.setItemDelegateForColumn(PROGRESS_COLUMN, self.progress_delegate)

        self.add_btn = QPushButton("Add files\u2026", self)
        self.remove_btn = QPushButton("Remove", self)
        self.clear_btn = QPushButton("Clear finished", self)
        self.add_btn.clicked.connect(lambda: self.add_dialog())
        self.remove_btn.clicked.connect(self.remove_selected)
        self.clear_btn.clicked.connect(self.clear_finished)
        self.action = QComboBox(self)
        self.action.addItems(["Compress images", "Denoise images"])
        self.action.setCurrentIndex(settings.batch_action)
        self.action.currentIndexChanged.connect(lambda i: setattr(self.settings, "batch_action", i))
        self.action.setToolTip(".aez files are always decompressed")
        self.action.currentIndexChanged.connect(self._refresh_actions)

        top = QHBoxLayout()
        top.addWidget(self.add_btn)
        top.addWidget(self.remove_btn)
        top.addWidget(self.clear_btn)
        top.addStretch(1)
        top.addWidget(QLabel("Images:", self))
        top.addWidget(self.action)

        self.out_edit = QLineEdit(settings.batch_output, self)
        self.out_edit.setPlaceholderText("next to each file")
        self.out_edit.setClearButtonEnabled(True)
        self.out_edit.editingFinished.connect(self._output_edited)
        self.out_btn = QPushButton("Choose\u2026", self)
        self.out_btn.clicked.connect(lambda: self.choose_output())
        self.skip = QCheckBox("Skip files whose output exists", self)
        self.skip.setToolTip("Unchecked: existing outputs are overwritten")
        self.skip.setChecked(settings.skip_existing)
        self.skip.toggled.connect(lambda v: setattr(self.settings, "skip_existing", v))
        opts = QHBoxLayout()
        opts.addWidget(QLabel("Output folder:", self))
        opts.addWidget(self.out_edit, 1)
        opts.addWidget(self.out_btn)
        opts.addSpacing(12)
        opts.addWidget(self.skip)

        self.settings_note = QLabel("", self)
        self.settings_note.setObjectName("note")
        self.settings_note.setWordWrap(True)
        self.overall = QProgressBar(self)
        self.overall.setFormat("")
        self.overall.setValue(0)
        self.overall.setMaximum(1)
        self.start_btn = QPushButton("Start", self)
        self.start_btn.setObjectName("primary")
        self.cancel_btn = QPushButton("Cancel", self)
        self.start_btn.clicked.connect(self.start)
        self.cancel_btn.clicked.connect(self.cancel)
        bottom = QHBoxLayout()
        bottom.addWidget(self.overall, 1)
        bottom.addWidget(self.start_btn)
        bottom.addWidget(self.cancel_btn)
        self.summary = QLabel("Drop several files on the window, or add them here.", self)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(10, 8, 10, 10)
        lay.addLayout(top)
        lay.addWidget(self.table, 1)
        lay.addLayout(opts)
        lay.addWidget(self.settings_note)
        lay.addLayout(bottom)
        lay.addWidget(self.summary)
        # Tab leaves the table (its cell-by-cell Tab navigation was a keyboard trap: nothing below it
        # could be reached) and goes through the controls in the order they are shown; Delete
        # removes the selected rows, as the Remove button does
        self.table.setTabKeyNavigation(False)
        order = [self.add_btn, self.remove_btn, self.clear_btn, self.action, self.table, self.out_edit,
                 self.out_btn, self.skip, self.start_btn, self.cancel_btn]
        for a, b in zip(order, order[1:]):
            QWidget.setTabOrder(a, b)
        QShortcut(QKeySequence(QKeySequence.StandardKey.Delete), self.table, self.remove_selected,
                  context=Qt.ShortcutContext.WidgetShortcut)
        self._update_controls()

    # -- the list --------------------------------------------------------------------------------
    def add_paths(self, paths: list[str | Path]) -> int:
        """Queue files (folders and files already queued are left out); returns how many were added."""
        known = {i.real: r for r, i in enumerate(self.items)}
        added, first = 0, len(self.items)
        for p in paths:
            p = Path(p)
            if p.is_dir():
                continue
            real = p.resolve()
            r = known.get(real)
            if r is not None:
                item = self.items[r]
                if item.status in FINISHED and not self.running:     # added again: to be run again
                    item.status, item.message, item.action = WAITING, "", None
                    self._show(r)
                    added += 1
                continue
            known[real] = len(self.items)
            self.items.append(Item(p, real=real))
            added += 1
        self._add_rows(self.items[first:])
        self._refresh_actions()
        self._queue_changed()
        self.table.setCurrentItem(None)
        return added

    def waiting_images(self) -> int:
        """Images (not .aez files) queued and not started: the action selector decides what they become."""
        return sum(i.status == WAITING and not i.is_aez for i in self.items)

    def add_dialog(self) -> None:
        names, _ = QFileDialog.getOpenFileNames(self, "Add files", self.settings.folder("open"),
                                                IMAGE_FILTER[:-1] + " *.aez);;All files (*)")
        if names:
            self.settings.set_folder("open", names[0])
            self.add_paths(names)

    def _output_edited(self) -> None:
        self.settings.batch_output = self.out_edit.text().strip()

    def choose_output(self) -> None:
        start = self.out_edit.text() or self.settings.folder("batch_out")
        d = QFileDialog.getExistingDirectory(self, "Output folder", start)
        if d:
            self.out_edit.setText(d)
            self.settings.batch_output = d
            self.settings.set_folder("batch_out", d)

    def _add_rows(self, items: list[Item]) -> None:
        """Rows for new items, made room for at once: a row inserted one at a time moved every shown
        progress bar below it, so with the Batch tab showing a folder of 1,200 files took 5.4 s to drop
        and 3,000 took 37 s, the window frozen meanwhile."""
        r0 = self.table.rowCount()
        self.table.setRowCount(r0 + len(items))
        for r, item in enumerate(items, r0):
            self._fill_row(r, item)

    def _fill_row(self, r: int, item: Item) -> None:
        name = QTableWidgetItem(item.path.name)
        name.setToolTip(str(item.path))
        self.table.setItem(r, 0, name)
        self.table.setItem(r, 1, QTableWidgetItem(self._action(item).capitalize()))
        bar = QTableWidgetItem(WAITING)
        bar.setData(PROGRESS_ROLE, 0)
        bar.setData(STATE_ROLE, "waiting")
        self.table.setItem(r, PROGRESS_COLUMN, bar)
        self.table.setItem(r, 3, QTableWidgetItem(""))

    def _action(self, item: Item) -> str:
        if item.is_aez:
            return "decompress"
        return "denoise" if self.action.currentIndex() == 1 else "compress"

    def _refresh_actions(self, *_):
        for r, item in enumerate(self.items):       # a finished file keeps the action it was run with
            done = item.status in FINISHED and item.action
            text = (item.action if done else self._action(item)).capitalize()
            cell = self.table.item(r, 1)
            if cell.text() != text:
                cell.setText(text)
        o = self.options()
        self.settings_note.setText(f"Compress uses model \u201c{o['codec']}\u201d {_rate_words(o)}{_refine_words(o)}; "
                                   f"denoise uses \u201c{o['denoiser_label'] or 'denoise'}\u201d"
                                   + (f" averaged over {o['ensemble']} runs" if o.get("ensemble", 1) > 1 else "")
                                   + " (set in those tabs), with the noise level found in each image and at "
                                   "full strength.")

    def remove_selected(self) -> None:
        if self.running:
            return
        rows = set()
        for sel in self.table.selectionModel().selection():
            rows.update(range(sel.top(), sel.bottom() + 1))
        self._remove_rows(rows)

    def clear_finished(self) -> None:
        if self.running:
            return
        self._remove_rows({r for r, it in enumerate(self.items) if it.status in FINISHED})

    def _remove_rows(self, rows: set[int]) -> None:
        """Remove rows a run of neighbours at a time, from the last: removing them one by one took
        3.2 s for 10,000 rows."""
        if rows:
            runs: list[list[int]] = []           # [first, last], the last run first
            for r in sorted(rows, reverse=True):
                if runs and r == runs[-1][0] - 1:
                    runs[-1][0] = r
                else:
                    runs.append([r, r])
            model = self.table.model()
            for first, last in runs:
                model.removeRows(first, last - first + 1)
            self.items = [it for r, it in enumerate(self.items) if r not in rows]
        self._queue_changed()

    def _queue_changed(self) -> None:
        """The queue is no longer the one the last run's summary described: the summary goes."""
        if not self.running:
            self.summary.setText("Drop several files on the window, or add them here." if not self.items else
                                 f"{sum(it.status not in FINISHED for it in self.items)} of {len(self.items)} "
                                 "files to run: press Start")
        self._update_controls()

    def _show(self, r: int) -> None:
        item = self.items[r]
        bar = self.table.item(r, PROGRESS_COLUMN)
        bar.setText(item.status)
        bar.setData(PROGRESS_ROLE, BUSY if item.status == WORKING else 100 if item.status in ENDED else 0)
        bar.setData(STATE_ROLE, item.status.lower())
        res = self.table.item(r, 3)
        res.setText(item.message.replace(str(item.path), item.path.name))
        res.setToolTip(item.message)
        res.setForeground(QColor("#b3261e") if item.status == FAILED else self.palette().text().color())

    # -- running ---------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._job is not None

    def busy_with(self) -> str:
        """The batch running, in words for the question closing the window asks ("" when none is)."""
        return f"a batch ({self._ended_count} of {len(self.items)} files done)" if self.running else ""

    def confirm_overwrite(self, existing: list[Path]) -> bool:
        """Ask before a run replaces files that exist (the user can also tick "skip")."""
        n = len(existing)
        names = ", ".join(p.name for p in existing[:3]) + (f" and {n - 3} more" if n > 3 else "")
        text = (f"{n} of the output files already exist: {names}.\n\nReplace them? To keep them, tick "
                "\u201cSkip files whose output exists\u201d.")
        answer = QMessageBox.question(self, "Overwrite files?", text, QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
        return answer == QMessageBox.Yes

    def output_folder(self) -> Path | None:
        t = self.out_edit.text().strip()
        return Path(t).expanduser() if t else None

    def start(self) -> None:
        """Run every file not yet done; results arrive per file; one failure does not stop the rest."""
        if self.running:
            return
        todo = [i for i, it in enumerate(self.items) if it.status not in FINISHED]
        if not todo:
            return
        folder = self.output_folder()
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self.errorOccurred.emit(f"cannot create the output folder {folder}: {exc.strerror or exc}")
                return
        skip = self.skip.isChecked()
        o = self.options()
        runtime = self.runtime
        device, threads = runtime.device, runtime.threads
        extra = runtime.extra_packages()             # .aez files made with a model from an added folder
        plan = [(i, self.items[i].path, self._action(self.items[i])) for i in todo]
        outputs = {i: destination(src, action, folder) for i, src, action in plan}
        # one run never writes two files to one name (a/cat.png and b/cat.jpg into one folder) ...
        rows = [i for i, _, _ in plan]
        clash = {i: f"its output {outputs[i].name} is also the output of {self.items[rows[k]].path.name}"
                 for n, (i, k) in enumerate(zip(rows, first_writers(outputs[i] for i in rows))) if k != n}
        # ... never writes over a file of the queue (cat.png -> cat.aez while cat.aez -> cat.png) ...
        inputs = {it.real for it in self.items}
        for i in rows:
            if i not in clash and outputs[i].resolve() in inputs:
                clash[i] = f"its output {outputs[i].name} is a file of this queue: inputs are never overwritten"
        # ... and overwrites what the user already has only when told to (the CLI's --force)
        existing = [outputs[i] for i, _, _ in plan if i not in clash and outputs[i].exists()]
        if existing and not skip and not self.confirm_overwrite(existing):
            return
        for i, _, action in plan:
            self.items[i].output, self.items[i].action = outputs[i], action
            self.items[i].status, self.items[i].message = (FAILED, clash[i]) if i in clash else (WAITING, "")
            self._show(i)
        plan = [p for p in plan if p[0] not in clash]
        self.overall.setMaximum(len(self.items))
        self._ended_count = sum(it.status in ENDED for it in self.items)
        self.overall.setValue(sum(it.status in FINISHED for it in self.items))

        def job(token, emit):
            codec = None
            found: dict = {}                 # .aez models found by id, opened once for the queue
            for is_denoise, group in itertools.groupby(plan, key=lambda x: x[2] == "denoise"):
                group = list(group)
                if token.cancelled:
                    break
                if is_denoise:
                    _denoise_group(group, outputs, o["denoiser"], device, threads, skip, token, emit,
                                   o.get("ensemble", 1))
                    continue
                for i, src, action in group:
                    if token.cancelled:
                        break
                    out = outputs[i]
                    if skip and out.exists():
                        emit((i, SKIPPED, f"{out.name} exists"))
                        continue
                    emit((i, WORKING, ""))
                    try:
                        if action == "compress":
                            if codec is None:
                                codec = open_codec(o["codec_key"], device, threads, o.get("refine", 0))
                            r = encode_file(src, out, codec, force=True, check=token.check, **_rate_arguments(o))
                            msg = (f"{r['bpp']:.3f} bpp, {ratio_text(r['ratio_raw'])}:1, PSNR {r['psnr']:.2f} dB, "
                                   f"MS-SSIM {r['ms_ssim']:.4f}, {r['seconds']:.1f} s \u2192 {out.name}")
                        else:
                            r = decode_file(src, out, None, force=True, device=device, threads=threads,
                                            extra=extra, hint=APP_MODEL_HINT, cache=found)
                            msg = f"{r['width']}\u00d7{r['height']}, {r['seconds']:.1f} s \u2192 {out.name}"
                        emit((i, DONE, msg, r.get("provider")))
                    except Cancelled:
                        raise                         # within a file (a target search): the batch stops
                    except AecError as exc:
                        emit((i, FAILED, str(exc)))
                    except MemoryError:
                        emit((i, FAILED, f"{src.name}: not enough memory"))
                    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the queue
                        emit((i, FAILED, f"{src.name}: {type(exc).__name__}: {exc}"))
            return None

        self._rows = [i for i, _, _ in plan]
        files = f"{len(plan)} file{'s' if len(plan) != 1 else ''}"
        self.summary.setText(f"Working on {files}\u2026")
        self.statusMessage.emit(f"Batch: working on {files}\u2026")      # not "press Start" any more
        self._t0 = time.perf_counter()
        self._job = self.work.submit(job, name="batch", progress=self._progress, done=lambda _: self._ended(False),
                                     error=self._batch_failed, cancelled=lambda: self._ended(True),
                                     progress_after_cancel=True)
        self._update_controls()

    def _progress(self, payload) -> None:
        i, status, message = payload[:3]
        item = self.items[i]
        # counted as it changes: counting the queue again for each file froze the window 28 s while
        # 10,000 files failed one after another
        self._ended_count += (status in ENDED) - (item.status in ENDED)
        item.status, item.message = status, message
        self._show(i)
        if len(payload) > 3 and payload[3]:
            self.providerUsed.emit(payload[3])
        if not self._overall_timer.isActive():
            self._overall_timer.start()

    def _batch_failed(self, message: str) -> None:
        self.errorOccurred.emit(message)
        self._ended(False)

    def _ended(self, cancelled: bool) -> None:
        self._job = None
        for r in self._rows:
            it = self.items[r]
            if it.status in (WAITING, WORKING):
                it.status = CANCELLED
                self._show(r)
        n = {s: sum(it.status == s for it in self.items) for s in (DONE, SKIPPED, FAILED, CANCELLED, WAITING)}
        parts = [f"{n[DONE]} done"]
        if n[SKIPPED]:
            parts.append(f"{n[SKIPPED]} skipped")
        if n[FAILED]:
            parts.append(f"{n[FAILED]} failed")
        if n[CANCELLED]:
            parts.append(f"{n[CANCELLED]} cancelled")
        text = ", ".join(parts) + f" in {time.perf_counter() - self._t0:.1f} s"
        self.summary.setText(("Cancelled: " if cancelled else "Finished: ") + text)
        self.statusMessage.emit("Batch " + ("cancelled: " if cancelled else "finished: ") + text)
        self._update_controls()
        self.finished.emit(self.items)

    def cancel(self) -> None:
        """Stop after the file in progress (denoising and a target search stop within the file); outputs
        are never partial."""
        if self._job is not None:
            self._job.cancel()
            self.summary.setText("Cancelling after the current file\u2026")
            self.cancel_btn.setEnabled(False)

    def _update_controls(self) -> None:
        run = self.running
        if not run:                                  # the bar counts the files of the queue as it is
            self._overall_timer.stop()
            self.overall.setMaximum(max(len(self.items), 1))
            self.overall.setValue(sum(it.status in ENDED for it in self.items))
            self.overall.setFormat("%v of %m files" if self.items else "")
        pending = any(it.status not in FINISHED for it in self.items)
        self.start_btn.setEnabled(not run and pending)
        self.cancel_btn.setEnabled(run)
        for w in (self.add_btn, self.remove_btn, self.clear_btn, self.action, self.out_edit, self.out_btn, self.skip):
            w.setEnabled(not run)


def _denoise_group(group, outputs, model, device, threads, skip, token, emit, ensemble: int = 1) -> None:
    """A run of images to denoise, through aecompress.batch.run_batch (one model load for all)."""
    from aecompress.batch import Job, run_batch

    jobs = [Job(src, outputs[i], Path(src.name)) for i, src, _ in group]
    index = {str(j.src): i for j, (i, _, _) in zip(jobs, group)}
    order = [i for i, _, _ in group]
    emit((order[0], WORKING, ""))

    def progress(res, summary) -> None:
        i = index[res.src]
        if res.status == "skipped":
            emit((i, SKIPPED, f"{Path(res.dst).name} exists"))
        elif res.status == "failed":
            emit((i, FAILED, res.error or "failed"))
        else:
            sig = f"\u03c3 \u2248 {res.sigma_estimate:.1f}, " if res.sigma_estimate is not None else ""
            emit((i, DONE, f"{sig}{res.seconds:.1f} s \u2192 {Path(res.dst).name}", res.provider))
        k = len(summary.results)
        if k < len(order) and not token.cancelled:
            emit((order[k], WORKING, ""))          # one job at a time: the next one starts now

    try:
        run_batch(jobs, skip_existing=skip, force=True, jobs=1, sigma="auto", ensemble=ensemble,
                  model=model or "denoise",
                  device=device, threads=threads, progress=progress, cancel=lambda: token.cancelled)
    except AecError as exc:                        # the model itself is missing or broken: every file fails
        for i in order:
            emit((i, FAILED, str(exc)))
