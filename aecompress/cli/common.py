"""Shared command-line pieces: device/thread options, per-file error handling, progress bars."""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Callable, Iterable

import typer

from ..errors import AecError, DeviceError, env_flag


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _check_device(value: str) -> str:
    """Checked once, before any file: a device that cannot be used is one error, not one per file."""
    from ..session import DEVICES, check_device

    if value not in DEVICES:
        raise typer.BadParameter(f"'{value}' is not one of {', '.join(DEVICES)}")
    check_device(value)
    return value


def _command_context():
    """The running command's click context (None outside one), from whichever click Typer uses:
    the usage errors below name the command's --help through it."""
    import importlib

    from . import UsageError

    return importlib.import_module(UsageError.__module__.rsplit(".", 1)[0] + ".globals").get_current_context(silent=True)


def bad_value(option: str, message: str):
    """A value aecompress itself rejects in an option (`--ensemble 3`, `-q nan`): a usage error like
    the ones Typer finds (one line naming the option and the --help to read, exit 2). Raise it."""
    return typer.BadParameter(message, ctx=_command_context(), param_hint=f"'{option}'")


def usage_error(message: str):
    """Options that do not go together (`--skip-existing --force`, a dense-only option on a conv
    model): a usage error, one line with the --help to read, exit 2. Raise it."""
    from . import UsageError

    return UsageError(message, ctx=_command_context())


def check_skip(skip_existing: bool, force: bool) -> None:
    if skip_existing and force:
        raise usage_error("choose one: --skip-existing keeps existing outputs, --force replaces them")


def nonempty_model(value):
    """-m "" is a mistake (an unset shell variable, say), not a request for the default model."""
    if value is not None and not value.strip():
        raise typer.BadParameter("the model name is empty")
    return value


def device_option():
    return typer.Option("auto", "--device", callback=_check_device,
                        help="auto (CUDA when it works, else CPU), cpu or cuda.")


MAX_THREADS = 1024     # onnxruntime starts them all: 100,000 exhausted the memory, a number past 64 bits raised


def threads_option():
    return typer.Option(None, "--threads", min=1, max=MAX_THREADS,
                        help=f"CPU threads for inference, 1-{MAX_THREADS} (default: all cores).")


class _Lines:
    """Prints result lines above a live progress bar when one is shown."""

    def __init__(self):
        self.bar = None

    def print_line(self, text: str) -> None:
        """A report line on standard output: above the bar when both are the same terminal (the
        bar's console draws it there), else plainly (`> report.txt` while the bar shows on stderr)."""
        if self.bar is not None and sys.stdout.isatty():
            self.bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, flush=True)


progress = _Lines()


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def to_json(obj, indent: int | None = None) -> str:
    """Strict JSON for --json: an infinite PSNR (an output equal to its reference) or any other
    non-finite number is null, since `Infinity` and `NaN` are not JSON and strict parsers reject them."""
    return json.dumps(_finite(obj), indent=indent, allow_nan=False)


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


def one_line(msg: str) -> str:
    """A message as one line of plain text, whatever the file names (a newline is a legal name byte)
    or a model's manifest hold: control characters are written as escapes, so none moves the cursor,
    clears the screen or starts a new line on the user's terminal."""
    return msg.translate(_CONTROL)


def error_line(msg: str) -> None:
    print(f"aecompress: error: {one_line(msg)}", file=sys.stderr, flush=True)


def unexpected(exc: Exception) -> str:
    """The one line for an error the code did not foresee (a bug): named, with the way to see more.
    AECOMPRESS_DEBUG=1 lets it through as a traceback instead."""
    if env_flag("AECOMPRESS_DEBUG"):
        raise exc
    if isinstance(exc, MemoryError):
        return "out of memory"
    if isinstance(exc, OSError) and exc.strerror:     # the system's own words, e.g. a symlink loop
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return (f"unexpected {type(exc).__name__}: {exc} (a bug: please report it; "
            "AECOMPRESS_DEBUG=1 shows the traceback)")


def run_many(items: Iterable, fn: Callable[..., dict], verb: str) -> list[dict]:
    """Run fn on every item; one bad item is reported and skipped. If any failed, the run ends with
    the failures' exit code when they all share one (3: damaged files, 4: model problems), else 1."""
    items = list(items)
    results, failed, codes = [], 0, set()
    if len(items) == 1:                      # the common case: no progress machinery at all
        return [fn(items[0])]
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    console_err = _stderr_console()
    show_bar = console_err.is_terminal
    # redirect_stdout only when standard output is that terminal too: otherwise rich would send the
    # report and --json lines meant for a file or pipe (`--json > runs.jsonl`) to the terminal
    bar = Progress(TextColumn(f"{verb}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                   TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("left"), console=console_err, transient=True,
                   disable=not show_bar, redirect_stdout=sys.stdout.isatty())
    with bar:
        progress.bar = bar if show_bar else None
        task = bar.add_task(verb, total=len(items), rate="")
        t0, worked = time.perf_counter(), 0
        try:
            for item in items:
                try:
                    results.append(fn(item))
                    worked += results[-1] is not None       # a skipped file (None) is no work done
                except (BrokenPipeError, DeviceError):   # the reader went away, or no file can run: stop
                    raise
                except Exception as exc:           # one bad file is reported and skipped
                    failed += 1
                    codes.add(exc.exit_code if isinstance(exc, AecError) else 1)
                    msg = str(exc) if isinstance(exc, AecError) else unexpected(exc)
                    if progress.bar is not None:
                        bar.console.print(f"aecompress: error: {one_line(msg)}", markup=False, highlight=False)
                    else:
                        error_line(msg)
                spent = time.perf_counter() - t0
                bar.update(task, advance=1, rate=f"{worked / spent:.1f} files/s" if spent > 0 and worked else "")
        finally:
            progress.bar = None
    if failed:
        skipped = sum(r is None for r in results)          # --skip-existing
        print(f"{len(items) - failed - skipped} done, " + (f"{skipped} skipped, " if skipped else "")
              + f"{failed} failed", file=sys.stderr)
        raise typer.Exit(codes.pop() if len(codes) == 1 else 1)
    return results


def ignore_interrupts() -> None:
    """On the way out after Ctrl-C or `kill`: a further signal must not turn a clean exit into a
    traceback or a death by signal (the interpreter's shutdown still waits for threads)."""
    import signal

    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(s, signal.SIG_IGN)
        except (ValueError, OSError):
            pass
