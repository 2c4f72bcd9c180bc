"""The `aecompress` command line: a Typer app whose commands live in one module per concern."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="aecompress",
    help="Compress and denoise images with autoencoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

from . import codec as _codec  # noqa: E402,F401  (registers encode, decode, info, models)

for _mod in ("denoise", "train", "gui"):
    try:
        __import__(f"{__name__}.{_mod}")
    except ImportError as _exc:  # a command module not written yet, or an optional dependency
        if _exc.name and _exc.name.startswith(__name__):
            continue
        raise


def main() -> None:
    from ..errors import AecError

    try:
        app()
    except AecError as exc:
        print(f"aecompress: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("aecompress: interrupted", file=sys.stderr)
        sys.exit(130)
