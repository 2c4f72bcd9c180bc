"""The `aecompress` command line: a Typer app whose commands live in one module per concern."""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

# click's UsageError, whichever click Typer uses (newer Typers carry their own copy as typer._click)
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def _usage_error(exc) -> typer.Exit:
    """A command line Typer rejects (an unknown option, a value out of range, a missing argument) is
    one line on standard error, like every other error, instead of Typer's usage box; exit code 2."""
    from .common import error_line

    ctx = exc.ctx
    error_line(exc.format_message() + (f" (see '{ctx.command_path} --help')" if ctx is not None else ""))
    return typer.Exit(exc.exit_code)


class _Commands(TyperGroup):
    """The command group, with Typer's usage errors cut to one line (see _usage_error). `aecompress`
    alone still prints the help (NoArgsIsHelpError passes through)."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                raise
            raise _usage_error(exc) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                raise
            raise _usage_error(exc) from None


app = typer.Typer(
    cls=_Commands,
    name="aecompress",
    help="Compress and denoise images with autoencoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        import platform
        from importlib import metadata

        from .. import __version__
        from ..session import installed_runtimes

        runtimes = [f"{r} {metadata.version(r)}" for r in installed_runtimes()] or ["no onnxruntime"]
        print(f"aecompress {__version__} (Python {platform.python_version()}, {', '.join(runtimes)})")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Compress and denoise images with autoencoders."""

# Each module registers its commands; optional dependencies (torch, PySide6, ray) are imported
# inside the commands, so a broken module fails loudly here instead of hiding a command.
from . import codec, denoise, gui, train  # noqa: E402,F401


def _on_sigterm(signum, frame):
    from ..errors import Terminated

    raise Terminated


def main() -> None:
    import signal

    from ..cstderr import guard
    from ..entrypoint import configure_process
    from ..errors import AecError, Terminated
    from .common import ignore_interrupts

    signal.signal(signal.SIGTERM, _on_sigterm)
    guard()                                       # image libraries' own lines stay off standard error
    configure_process()                           # Pillow's limit, quiet library logs: the program's, not the library's
    try:
        app()
    except AecError as exc:
        from .common import error_line

        error_line(str(exc))
        sys.exit(exc.exit_code)
    except Terminated:
        ignore_interrupts()
        print("aecompress: terminated; no partial output was left", file=sys.stderr)
        sys.exit(143)
    except KeyboardInterrupt:
        ignore_interrupts()
        print("aecompress: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:                        # `aecompress ... --json | head`: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no second error at exit
        sys.exit(1)
    except Exception as exc:                       # a bug: still one line, not a traceback
        from .common import error_line, unexpected

        error_line(unexpected(exc))
        sys.exit(1)
    except SystemExit as exc:
        if exc.code in (130, 143):
            ignore_interrupts()
        # Typer turns Ctrl-C into a silent exit 130 (its Exit raised *from* the KeyboardInterrupt);
        # say what happened, as for `kill` (commands that report an interrupt themselves raise Exit
        # without a cause)
        if exc.code == 130 and isinstance(getattr(exc.__context__, "__cause__", None), KeyboardInterrupt):
            print("aecompress: interrupted; no partial output was left", file=sys.stderr)
        raise
