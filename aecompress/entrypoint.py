"""Process-wide settings of other libraries that belong to aecompress's own programs.

A program that imports aecompress as a library keeps Pillow's, tifffile's and onnxruntime's
process-wide settings as it had them: importing aecompress, or reading, coding and writing images
with it, changes none of them (tests/test_import_hygiene.py). The command line (`cli.main`), the
desktop app (`gui.app.main`), the Ray engine's workers, the `python -m aecompress.train.*` tools and
the benchmarks (bench/_common.run) own their process and call `configure_process()` once at start:

- Pillow's decompression-bomb limit, `PIL.Image.MAX_IMAGE_PIXELS`, at aecompress's own limit
  (imageio.MAX_PIXELS, 400 million pixels). Pillow's default (about 89 million) refuses images
  above twice that, 179 million pixels, which the programs read. `read_image` applies the
  400-million limit itself whatever Pillow's setting; a library caller whose Pillow limit is lower
  gets Pillow's refusal above twice it. Set as Pillow is imported (`pillow_limit`, from imageio),
  not before: the command line starts without Pillow.
- Pillow's and tifffile's logs go nowhere: with no handler configured, their warnings and errors
  ("More samples per pixel than can be decoded") reach standard error through Python's last-resort
  handler, beside the command's one-line error or on a quiet success. A library caller's logging
  configuration decides where they go.
- onnxruntime's default logger at errors only (session._ort sets it as it imports onnxruntime).
  Sessions log fatal errors only in any case (their own SessionOptions).

`cstderr.guard()` (descriptor 2 for C libraries' lines) and signal handlers are the command line's
own business and stay in `cli.main`.
"""

from __future__ import annotations

import logging
import sys

configured = False


def configure_process() -> None:
    """Set the above (once; later calls do nothing). Imports neither Pillow nor onnxruntime, which the
    command line loads only when a command needs them: each is set as it is imported."""
    global configured
    if configured:
        return
    configured = True
    for name in ("PIL", "tifffile"):             # loggers by name: neither library needs to be imported
        log = logging.getLogger(name)
        log.addHandler(logging.NullHandler())
        log.propagate = False
    if "PIL.Image" in sys.modules:
        pillow_limit()
    if "onnxruntime" in sys.modules:             # else session._ort sets it as it imports onnxruntime
        sys.modules["onnxruntime"].set_default_logger_severity(3)


def pillow_limit() -> None:
    """Pillow's decompression-bomb limit at aecompress's own, in a program that configure_process
    configured (imageio calls this as it is imported; it changes nothing in a library caller's process)."""
    if configured:
        from PIL import Image

        from .imageio import MAX_PIXELS

        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
