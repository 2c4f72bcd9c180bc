"""The `aecompress` command and `python -m aecompress`.

Loading the command line (numpy, typer, the commands) takes a tenth of a second; a Ctrl-C in that
time would print a traceback from whatever module was being imported. Until the command line has
loaded, Ctrl-C and `kill` end the process quietly with the usual codes (130, 143): nothing has been
written yet."""

from __future__ import annotations

import signal
import sys


def _while_loading(signum: int, frame: object) -> None:
    print("aecompress: " + ("interrupted" if signum == signal.SIGINT else "terminated"), file=sys.stderr)
    sys.exit(128 + signum)


def main() -> None:
    previous = {s: signal.signal(s, _while_loading) for s in (signal.SIGINT, signal.SIGTERM)}
    from .cli import main as cli_main

    for s, handler in previous.items():
        signal.signal(s, handler)
    cli_main()


if __name__ == "__main__":
    main()
