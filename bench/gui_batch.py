"""Bench: the Batch tab with a folder of thousands of files (offscreen, no model is run).

    QT_QPA_PLATFORM=offscreen python bench/gui_batch.py [--sizes 1000 3000 10000] [--run 3000] [--out DIR]

For each size, with the Batch tab showing in a 1100x700 window: a folder of that many (empty) .png
files is dropped on the window; printed are the time from the drop to the event loop being free
again ("add"), then to the end of the table's first paint ("paint"), and the time from Remove (all
rows selected) to the event loop being free and to the repaint. With --run N, a batch of N files
that each fail at once (empty files: the worst case for the window, as a queue of files whose outputs
exist and are skipped) is started, and the longest wait of a 10 ms timer while it runs is printed:
how long the window stops answering. Writes gui_batch.json and (with matplotlib) gui_batch.png to
--out (default bench/results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PySide6.QtCore import QEvent, QMimeData, QObject, QPoint, QPointF, QSettings, Qt, QTimer, QUrl  # noqa: E402
from PySide6.QtGui import QDragEnterEvent, QDropEvent  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from gui.app import create_app  # noqa: E402
from gui.main_window import MainWindow  # noqa: E402
from gui.runtime import Runtime  # noqa: E402
from gui.settings import Settings  # noqa: E402


def drop(win, paths) -> None:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    pos = QPoint(win.width() // 2, win.height() // 2)
    args = (Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(win, QDragEnterEvent(pos, *args))
    QApplication.sendEvent(win, QDropEvent(QPointF(pos), *args))


class PaintWatch(QObject):
    """The time the next paint of a widget ends (a zero timer started as it begins fires after it)."""

    def __init__(self, widget):
        super().__init__()
        self.end = None
        widget.installEventFilter(self)

    def eventFilter(self, obj, ev):
        if ev.type() == QEvent.Type.Paint and self.end is None:
            QTimer.singleShot(0, lambda: setattr(self, "end", time.perf_counter()))
        return False


def settle(viewport, t0: float) -> tuple[float, float]:
    """(seconds from t0 to the event loop being free, to the end of the viewport's next paint)."""
    free = []
    watch = PaintWatch(viewport)
    QTimer.singleShot(0, lambda: free.append(time.perf_counter()))
    deadline = time.perf_counter() + 120
    while (not free or watch.end is None) and time.perf_counter() < deadline:
        QApplication.processEvents()
    viewport.removeEventFilter(watch)
    return free[0] - t0, (watch.end or float("nan")) - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 3000, 10000])
    ap.add_argument("--run", type=int, nargs="*", default=[3000, 10000])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    a = ap.parse_args()
    rows, runs = [], []
    create_app()
    tmp = Path(tempfile.mkdtemp(prefix="gui-batch-"))
    ini = tmp / "settings.ini"
    os.environ["AECOMPRESS_GUI_SETTINGS"] = str(ini)
    win = MainWindow(Settings(QSettings(str(ini), QSettings.Format.IniFormat)), Runtime("cpu", threads=1))
    win.resize(1100, 700)
    win.show()
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.01)
    tab = win.batch
    win.tabs.setCurrentWidget(tab)
    vp = tab.table.viewport()
    settle(vp, time.perf_counter())

    def folder(n: int) -> Path:
        d = tmp / f"f{n}"
        if not d.exists():
            d.mkdir()
            for k in range(n):
                (d / f"img{k:05d}.png").write_bytes(b"")
        return d

    for n in a.sizes:
        d = folder(n)
        t0 = time.perf_counter()
        drop(win, [d])
        add, paint = settle(vp, t0)
        assert len(tab.items) == n
        tab.table.selectAll()
        t0 = time.perf_counter()
        tab.remove_selected()
        rm, rm_paint = settle(vp, t0)
        assert not tab.items and tab.table.rowCount() == 0
        print(f"{n:6d} files: add {add:6.2f} s, first paint at {paint:6.2f} s; remove all {rm:6.2f} s, "
              f"repainted at {rm_paint:6.2f} s", flush=True)
        rows.append({"files": n, "add": add, "first_paint": paint, "remove": rm, "remove_paint": rm_paint})

    for n in a.run:
        drop(win, [folder(n)])
        settle(vp, time.perf_counter())
        tab.skip.setChecked(False)
        tab.out_edit.setText(str(tmp / "out"))
        gaps, last = [], [time.perf_counter()]

        def tick():
            now = time.perf_counter()
            gaps.append(now - last[0])
            last[0] = now

        timer = QTimer()
        timer.setInterval(10)
        timer.timeout.connect(tick)
        t0 = time.perf_counter()
        tab.start()
        timer.start()
        while tab.running and time.perf_counter() - t0 < 300:
            QApplication.processEvents()
            time.sleep(0.001)
        took = time.perf_counter() - t0
        timer.stop()
        statuses = {it.status for it in tab.items}
        print(f"{n:6d} files run (each fails at once): {took:6.2f} s, longest timer wait {max(gaps) * 1000:6.0f} ms, "
              f"{sum(g > 0.1 for g in gaps)} waits over 100 ms; {statuses}", flush=True)
        runs.append({"files": n, "seconds": took, "longest_wait": max(gaps), "waits_over_100ms": sum(g > 0.1 for g in gaps)})
        tab.table.selectAll()
        tab.remove_selected()
        settle(vp, time.perf_counter())
    win.close()
    shutil.rmtree(tmp, ignore_errors=True)
    write(a.out, rows, runs)


def write(out: Path, rows: list[dict], runs: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "window": "1100x700, Batch tab, offscreen"}
    (out / "gui_batch.json").write_text(json.dumps({**meta, "drops": rows, "runs": runs}, indent=1) + "\n")
    written = [out / "gui_batch.json"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
    if plt is not None and rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        n = [r["files"] for r in rows]
        for key, label in (("add", "drop: event loop free"), ("first_paint", "drop: first paint done"),
                           ("remove", "remove all")):
            ax.plot(n, [r[key] for r in rows], marker="o", label=label)
        if runs:
            ax.plot([r["files"] for r in runs], [r["longest_wait"] for r in runs], marker="s", ls="--",
                    label="longest freeze while a batch runs")
        ax.set(xscale="log", xlabel="files in the batch", ylabel="seconds", title="Batch tab with many files")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "gui_batch.png", dpi=110)
        written.append(out / "gui_batch.png")
    print("wrote " + " and ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
