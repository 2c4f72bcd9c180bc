import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("OMP_NUM_THREADS", "2")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "docs" / "samples" / "cat.png"


@pytest.fixture(scope="session")
def cat() -> np.ndarray:
    return np.asarray(Image.open(SAMPLE).convert("RGB"))


@pytest.fixture(scope="session")
def photo_codec():
    from aecompress.compress import open_codec

    return open_codec("photo", "cpu", 2)


def smooth_image(h: int, w: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """A deterministic photo-like test image (smooth gradients plus texture)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    chans = []
    for c in range(channels):
        f = rng.uniform(0.01, 0.06, 2)
        base = 128 + 80 * np.sin(xx * f[0] + c) * np.cos(yy * f[1] - c)
        chans.append(base + rng.normal(0, 6, (h, w)))
    return np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8)


def run_on_terminal(args: list, env: dict | None = None, cwd=None, timeout: float = 60,
                    stdout_to=None) -> tuple[int, str]:
    """`python -m aecompress ARGS` with standard error on a pseudo-terminal (so progress bars draw);
    returns the exit code and everything written there. stdout_to: a file that gets standard
    output (`> file`), else it is discarded."""
    import subprocess
    import sys

    master, slave = os.openpty()
    out = open(stdout_to, "wb") if stdout_to is not None else subprocess.DEVNULL
    p = subprocess.Popen([sys.executable, "-m", "aecompress", *map(str, args)], cwd=cwd,
                         env={**(env or os.environ), "COLUMNS": "120"},
                         stdin=subprocess.DEVNULL, stdout=out, stderr=slave)
    os.close(slave)
    if stdout_to is not None:
        out.close()
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:                        # the other end closed
            break
        if not chunk:
            break
        seen += chunk
    p.wait(timeout=timeout)
    os.close(master)
    return p.returncode, seen.decode(errors="replace")


def linear_rgb_profile() -> bytes:
    """A minimal ICC v2 display profile: sRGB's primaries with a linear tone curve ("linear sRGB"), so
    a value v in it is sRGB's encoding of v/255 as light (128 -> about 188). Pillow can only create
    sRGB itself, and a test of colour conversion needs another RGB space."""
    import struct

    def s15(x):
        return struct.pack(">i", round(x * 65536))

    def xyz(x, y, z):
        return b"XYZ \0\0\0\0" + s15(x) + s15(y) + s15(z)

    desc = b"linear sRGB\0"
    tags = [(b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(desc)) + desc + b"\0" * 79),
            (b"wtpt", xyz(0.9642, 1.0, 0.8249)), (b"rXYZ", xyz(0.4360747, 0.2225045, 0.0139322)),
            (b"gXYZ", xyz(0.3850649, 0.7168786, 0.0971045)), (b"bXYZ", xyz(0.1430804, 0.0606169, 0.7141733))]
    tags += [(sig, b"curv\0\0\0\0" + struct.pack(">I", 0)) for sig in (b"rTRC", b"gTRC", b"bTRC")]
    offset, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for sig, data in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    body += b"\0" * (-len(body) % 4)
    header = (struct.pack(">I", offset + len(body)) + b"lcms" + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
              + b"\0" * 12 + b"acsp" + b"\0" * 24 + s15(0.9642) + s15(1.0) + s15(0.8249))
    header += b"\0" * (128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + body


def coded_with_escape(codec) -> tuple[bytes, bytes]:
    """(an ordinary file, the same latent with its first value made an escape near the format's
    bound, MAX_VALUE - 1) of a 64x48 smooth image coded at quality 75 by a hyperprior codec."""
    from aecompress import container
    from aecompress.entropy import MAX_VALUE, Encoder

    a = codec.analyse(smooth_image(48, 64, seed=2))
    ordinary, st = codec.code(a, codec.quality_to_position(75))
    q = st["q"].copy()
    q.flat[0] = MAX_VALUE - 1
    enc = Encoder()
    enc.encode(st["z"], codec._channel_index(st["z"].shape), codec.z_tables)
    enc.encode(q, st["idx"], codec.y_tables)
    header = container.Header(codec.pkg.model_id, 64, 48, 3, "RGB", 8, codec.kind, st["level"], False,
                              scale=st["scale"])
    return ordinary, container.pack(header, container.join_payload(*enc.finish()))
