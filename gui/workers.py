"""Work off the UI thread: jobs on a QThreadPool with cooperative cancellation.

A job is a plain function ``fn(token, emit) -> result`` run on a worker thread. It calls
``token.check()`` between steps (raises Cancelled once the job was cancelled) and ``emit(payload)``
to hand intermediate results to the UI. Every callback (progress, done, error, cancelled) runs on
the UI thread: the worker's signals are received by the WorkQueue, a QObject living there.

Model calls themselves cannot be interrupted, so cancelling takes effect at the next step; closing
the window cancels everything and waits for the step in flight (see MainWindow.closeEvent), except
saves: they have a queue of their own, which closing lets finish.
"""

from __future__ import annotations

import itertools
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from PySide6.QtCore import QCoreApplication, QObject, QRunnable, QThreadPool, Signal, Slot

from aecompress.errors import AecError


class Cancelled(Exception):
    """Raised by CancelToken.check() inside a job that was cancelled."""


class CancelToken:
    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled()


def describe_error(exc: BaseException) -> str:
    """The one-line message a user sees for an exception raised inside a job."""
    if isinstance(exc, AecError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "not enough memory for this image"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"unexpected error: {type(exc).__name__}" + (f": {text}" if text else "")


@dataclass
class Job:
    id: int
    name: str
    fn: Callable[[CancelToken, Callable[[Any], None]], Any]
    token: CancelToken = field(default_factory=CancelToken)
    on_done: Optional[Callable[[Any], None]] = None
    on_progress: Optional[Callable[[Any], None]] = None
    on_error: Optional[Callable[[str], None]] = None
    on_cancelled: Optional[Callable[[], None]] = None
    runnable: Optional[QRunnable] = None
    progress_after_cancel: bool = False      # batches report files that finish while cancelling

    def cancel(self) -> None:
        self.token.cancel()

    @property
    def cancelled(self) -> bool:
        return self.token.cancelled


class _Signals(QObject):
    progress = Signal(int, object)
    finished = Signal(int, object)
    failed = Signal(int, str)
    cancelled = Signal(int)


class _Runnable(QRunnable):
    def __init__(self, job: Job, signals: _Signals):
        super().__init__()
        self.setAutoDelete(False)
        self.job, self.signals = job, signals

    def run(self) -> None:  # on a worker thread
        job, sig = self.job, self.signals
        # PySide never frees a started QRunnable that is not auto-deleted (tryTake needs it alive), so
        # this one lets go of its job now: every job's function, with the picture, analysis or result
        # it holds, stayed in memory until the app quit (about 6 MB more per 1.3-megapixel image opened)
        self.job = self.signals = None
        try:
            job.token.check()
            result = job.fn(job.token, lambda payload: sig.progress.emit(job.id, payload))
        except Cancelled:
            sig.cancelled.emit(job.id)
        except KeyboardInterrupt:            # runtime functions polling a cancel callback raise this
            if job.token.cancelled:
                sig.cancelled.emit(job.id)
            else:
                sig.failed.emit(job.id, "interrupted")
        except BaseException as exc:  # noqa: BLE001 - a job never takes the app down
            if not isinstance(exc, (AecError, MemoryError)):
                traceback.print_exc(file=sys.stderr)
            sig.failed.emit(job.id, describe_error(exc))
        else:
            sig.finished.emit(job.id, result)


class WorkQueue(QObject):
    """Runs jobs one after another (threads=1) or side by side, off the UI thread."""

    busyChanged = Signal(bool)
    _ids = itertools.count(1)

    def __init__(self, parent: QObject | None = None, threads: int = 1):
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(threads)
        self._jobs: dict[int, Job] = {}
        self._signals = _Signals(self)
        self._signals.progress.connect(self._on_progress)
        self._signals.finished.connect(self._on_finished)
        self._signals.failed.connect(self._on_failed)
        self._signals.cancelled.connect(self._on_cancelled)

    @property
    def busy(self) -> bool:
        return bool(self._jobs)

    def submit(self, fn, *, name: str = "", done=None, progress=None, error=None, cancelled=None,
               progress_after_cancel: bool = False) -> Job:
        job = Job(next(self._ids), name, fn, on_done=done, on_progress=progress, on_error=error,
                  on_cancelled=cancelled, progress_after_cancel=progress_after_cancel)
        job.runnable = _Runnable(job, self._signals)
        was_busy = self.busy
        self._jobs[job.id] = job
        self.pool.start(job.runnable)
        if not was_busy:
            self.busyChanged.emit(True)
        return job

    def pending(self, job: Job | None) -> bool:
        """Whether `job` was submitted here, not cancelled, and has yet to end (its result is to come)."""
        return job is not None and not job.cancelled and job.id in self._jobs

    def cancel(self, job: Job) -> None:
        """Cancel one job: queued, it never starts (its cancelled callback runs now); running, it stops
        at its next step."""
        job.cancel()
        if job.id in self._jobs and job.runnable is not None and self.pool.tryTake(job.runnable):
            job.runnable.job = job.runnable.signals = None           # it never runs: let go of it here
            self._signals.cancelled.emit(job.id)

    def cancel_all(self) -> None:
        """Cancel every job: queued ones never start, running ones stop at their next step."""
        for job in list(self._jobs.values()):
            self.cancel(job)

    def shutdown(self, timeout_ms: int = -1) -> bool:
        """Cancel everything and wait for the step in flight; True if all workers stopped."""
        self.cancel_all()
        return self.pool.waitForDone(timeout_ms)

    def finish(self, timeout_ms: int = -1) -> bool:
        """Run every job to its end, queued ones included, then their callbacks (on the calling, UI,
        thread: the event loop may not run again); True if all finished in time."""
        done = self.pool.waitForDone(timeout_ms)
        QCoreApplication.sendPostedEvents(self)
        return done

    # -- on the UI thread ------------------------------------------------------------------------
    def _pop(self, job_id: int) -> Job | None:
        job = self._jobs.pop(job_id, None)
        if job is not None and not self._jobs:
            self.busyChanged.emit(False)
        return job

    @Slot(int, object)
    def _on_progress(self, job_id: int, payload) -> None:
        job = self._jobs.get(job_id)
        if job is not None and job.on_progress and (job.progress_after_cancel or not job.cancelled):
            job.on_progress(payload)

    @Slot(int, object)
    def _on_finished(self, job_id: int, result) -> None:
        job = self._pop(job_id)
        if job is None:
            return
        if job.cancelled:
            if job.on_cancelled:
                job.on_cancelled()
        elif job.on_done:
            job.on_done(result)

    @Slot(int, str)
    def _on_failed(self, job_id: int, message: str) -> None:
        job = self._pop(job_id)
        if job is None:
            return
        if job.cancelled:
            if job.on_cancelled:
                job.on_cancelled()
        elif job.on_error:
            job.on_error(message)

    @Slot(int)
    def _on_cancelled(self, job_id: int) -> None:
        job = self._pop(job_id)
        if job is not None and job.on_cancelled:
            job.on_cancelled()
