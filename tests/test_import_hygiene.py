"""aecompress used as a library leaves other libraries' process-wide settings alone: importing it, and
reading, coding and writing images with it, changes no logger, warning filter, Pillow limit or
onnxruntime log level of the calling program. The command line and the desktop app set theirs
(aecompress/entrypoint.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from aecompress.errors import AecError
from aecompress.imageio import MAX_PIXELS, read_image

from .conftest import ROOT

_SNAPSHOT = """
import logging, os, signal, sys, warnings
import numpy as np
import onnxruntime
import tifffile
from PIL import Image

severities = []
_set = onnxruntime.set_default_logger_severity
onnxruntime.set_default_logger_severity = lambda level: (severities.append(level), _set(level))[1]


def state():
    loggers = {name: (lg.propagate, lg.level, list(lg.handlers), lg.disabled)
               for name, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    return {"loggers": loggers, "root": (logging.root.level, list(logging.root.handlers)),
            "PIL": (logging.getLogger("PIL").propagate, list(logging.getLogger("PIL").handlers)),
            "tifffile": (logging.getLogger("tifffile").propagate, list(logging.getLogger("tifffile").handlers)),
            "filters_object": id(warnings.filters), "filters": list(warnings.filters),
            "MAX_IMAGE_PIXELS": Image.MAX_IMAGE_PIXELS, "seterr": np.geterr(), "environ": dict(os.environ),
            "signals": [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)], "stderr": sys.stderr,
            "onnxruntime severity set": list(severities)}


def compare(before, after, when):
    for key in before:
        if key == "loggers":                  # loggers made since are compared only if they existed before
            for name, was in before[key].items():
                assert after[key][name] == was, (when, name, was, after[key][name])
            for name, now in after[key].items():
                if name not in before[key]:
                    assert now[:2] == (True, logging.NOTSET) and not now[2], (when, name, now)
        else:
            assert after[key] == before[key], (when, key, before[key], after[key])
"""


def _run(code: str, tmp_path) -> str:
    script = tmp_path / "probe.py"
    script.write_text(_SNAPSHOT + textwrap.dedent(code))
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env=_env())
    assert p.returncode == 0, p.stderr
    return p.stdout


def _env() -> dict:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_importing_and_using_the_library_changes_no_global_state(tmp_path):
    """Before: importing aecompress.imageio set PIL.Image.MAX_IMAGE_PIXELS and cut Pillow's logger off
    from the program's logging; writing a 16-bit TIFF did the same to tifffile's, and opening a session
    set onnxruntime's default log level."""
    out = _run(f"""
        before = state()
        import aecompress, aecompress.imageio, aecompress.rgb16, aecompress.compress, aecompress.codec
        import aecompress.batch, aecompress.denoise, aecompress.session, aecompress.package, aecompress.container
        import aecompress.metrics, aecompress.ladder, aecompress.cli
        compare(before, state(), "import")

        from pathlib import Path
        from aecompress.compress import decode_file, encode_file, open_codec
        from aecompress.imageio import read_image, save_image

        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save("a.png")
        save_image(Path("deep.tif"), rng.integers(0, 65536, (8, 8, 3), dtype=np.uint16))   # through tifffile
        assert read_image("deep.tif").bits == 16
        encode_file(Path("a.png"), Path("a.aez"), open_codec(r"{ROOT / 'models' / 'photo'}", "cpu", 1))
        decode_file(Path("a.aez"), Path("b.png"), device="cpu")
        compare(before, state(), "use")
        print("same")
    """, tmp_path)
    assert out.strip() == "same"


def test_pillows_log_reaches_the_programs_own_handler(tmp_path):
    """Pillow's error for a TIFF it cannot decode goes where the program's logging sends it (before:
    nowhere, whatever the program had configured); read_image still raises its one-line error."""
    out = _run("""
        import tifffile
        from aecompress.errors import AecError
        from aecompress.imageio import read_image

        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger().addHandler(handler)
        tifffile.imwrite("t.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb", metadata=None)
        b = bytearray(open("t.tif", "rb").read())
        import struct
        ifd = struct.unpack_from("<I", b, 4)[0]
        for i in range(struct.unpack_from("<H", b, ifd)[0]):
            at = ifd + 2 + 12 * i
            if struct.unpack_from("<H", b, at)[0] == 277:           # SamplesPerPixel
                struct.pack_into("<H", b, at + 8, 5000)
        open("t.tif", "wb").write(bytes(b))
        try:
            read_image("t.tif")
        except AecError as exc:
            print("error:", exc)
        print([r.name for r in records if "samples per pixel" in r.getMessage()])
    """, tmp_path)
    assert "error: t.tif: cannot read image" in out and "['PIL.TiffImagePlugin']" in out, out


def test_the_programs_set_pillows_limit_and_quiet_logs(tmp_path):
    """configure_process (called by the command line and the desktop app) sets Pillow's limit to
    aecompress's own, whether Pillow is imported before or after, and quiets Pillow, tifffile and
    onnxruntime's default logger."""
    out = _run("""
        from aecompress.entrypoint import configure_process
        from aecompress.imageio import MAX_PIXELS
        from aecompress.session import _ort

        configure_process()
        assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS
        for name in ("PIL", "tifffile"):
            lg = logging.getLogger(name)
            assert not lg.propagate and any(isinstance(h, logging.NullHandler) for h in lg.handlers)
        _ort()
        assert severities and severities[-1] == 3, severities
        print("ok")
    """, tmp_path)
    assert out.strip() == "ok"
    script = tmp_path / "late.py"                 # Pillow imported after: set as imageio loads
    script.write_text("import sys\nfrom aecompress.entrypoint import configure_process\nconfigure_process()\n"
                      "assert 'PIL.Image' not in sys.modules\nimport aecompress.imageio\nfrom PIL import Image\n"
                      "print(Image.MAX_IMAGE_PIXELS)\n")
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=_env())
    assert p.returncode == 0 and p.stdout.strip() == str(MAX_PIXELS), p.stderr


def _png_header(path, width, height):
    """A PNG that only claims its size (no pixel data): enough for the size checks, which come first."""
    import struct
    import zlib

    from aecompress.rgb16 import _chunk

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b""))
                     + _chunk(b"IEND", b""))


def test_read_image_keeps_its_own_limit_whatever_pillows(tmp_path, monkeypatch):
    """Pillow's warning above its limit is not read_image's business (its limit is MAX_PIXELS); Pillow's
    refusal above twice its limit is reported with that limit; without Pillow's limit MAX_PIXELS holds."""
    import warnings

    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "small.png")       # 1600 pixels
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(tmp_path / "larger.png")      # 2500 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(tmp_path / "small.png").width == 40
    with pytest.raises(AecError, match=r"larger.png: image is too large \(limit 2,000 pixels\)"):
        read_image(tmp_path / "larger.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    _png_header(tmp_path / "huge.png", 25_000, 20_000)
    with pytest.raises(AecError, match=f"25000x20000 is too large \\(limit {MAX_PIXELS:,} pixels\\)"):
        read_image(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", MAX_PIXELS)        # the programs' setting
    _png_header(tmp_path / "bomb.png", 40_000, 40_000)
    with pytest.raises(AecError, match=f"bomb.png: image is too large \\(limit {MAX_PIXELS:,} pixels\\)"):
        read_image(tmp_path / "bomb.png")


_PROGRAM_STATE = """
import logging, runpy, sys
from PIL import Image
sys.argv = [sys.argv[1], "--help"]
try:
    if sys.argv[0].endswith(".py"):              # as `python bench/X.py` runs it: its folder first
        sys.path.insert(0, sys.argv[0].rsplit("/", 1)[0])
        runpy.run_path(sys.argv[0], run_name="__main__")
    else:
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit:
    pass
print(Image.MAX_IMAGE_PIXELS, logging.getLogger("PIL").propagate, file=sys.stderr)
"""


@pytest.mark.parametrize("program", ["aecompress.train.denoiser", "aecompress.train.refine",
                                     "aecompress.train.reladder", "aecompress.train.residual_gain",
                                     "aecompress.train.retable", "aecompress.train.tune_analysis",
                                     "aecompress.train.tune_synthesis", "bench/rd.py", "bench/denoise.py"])
def test_the_projects_other_programs_set_up_their_process_as_the_command_line(program):
    """`python -m aecompress.train.X` and the benchmarks (through bench/_common.run) are programs of
    their own: they read images as large as `aecompress` does and keep Pillow's log lines off standard
    error (since the library stopped setting these at import, they had Pillow's defaults)."""
    arg = str(ROOT / program) if program.endswith(".py") else program
    out = subprocess.run([sys.executable, "-c", _PROGRAM_STATE, arg], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.stderr.strip().splitlines()[-1] == f"{MAX_PIXELS} False", out.stderr
