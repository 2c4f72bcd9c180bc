"""The codec pipeline: pixels -> encoder graph -> quantize -> entropy coder -> .aez bytes, and back.

Two kinds of model package are understood:

* ``hyperprior`` (convolutional, any image size): analysis transform y = g_a(x); per-quality gains;
  hyper-analysis z = h_a(y); z_hat coded with per-channel factorized tables; mean and scale of y
  from the integer hyper-synthesis (aecompress.hyper, exact on every machine); q = round(y - mean)
  coded with Gaussian tables chosen by scale. Large images run through the graphs in overlapping
  tiles (aecompress.tiling).
* ``factorized`` (dense or small convolutional models of a fixed input size): latent = g_a(x),
  optional per-quality gains, rounded and coded with per-channel factorized tables.

Only integers (z_hat, q) and values computed exactly from them reach the entropy coder, so float
differences between machines, providers and thread counts can change pixels by rounding but never
break decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np

from . import container
from .container import Header
from .entropy import Decoder, Encoder, TableSet
from .errors import AecError, CorruptFileError, ModelError
from .hyper import IntegerHyperSynthesis
from .package import ModelPackage
from .tiling import run_tiled

QUALITY_MIN, QUALITY_MAX = 1.0, 100.0
ANALYSIS_TILE = 1024          # pixels; peak memory per tile is about 100 MB for a 64-channel model
SYNTHESIS_TILE = 64           # latent cells (1024 pixels)


def quality_to_level(quality: float, levels: int) -> float:
    q = min(max(float(quality), QUALITY_MIN), QUALITY_MAX)
    return (q - QUALITY_MIN) / (QUALITY_MAX - QUALITY_MIN) * (levels - 1)


def level_to_quality(level: float, levels: int) -> float:
    return QUALITY_MIN + level / max(levels - 1, 1) * (QUALITY_MAX - QUALITY_MIN)


@dataclass
class Analysis:
    """The quality-independent part of encoding, reusable while searching a rate target."""

    y: np.ndarray          # (M, h, w) or (D,) float32
    height: int
    width: int


class Codec:
    def __init__(self, pkg: ModelPackage):
        if pkg.kind != "codec":
            raise ModelError(f"model '{pkg.name}' is a {pkg.kind}, not a codec")
        self.pkg = pkg
        self.kind = pkg.manifest.get("codec", "hyperprior")
        if self.kind not in container.CODECS:
            raise ModelError(f"model '{pkg.name}' uses unknown codec '{self.kind}'")
        self.channels = pkg.channels
        self.levels = int(pkg.manifest.get("levels", 1))

    # -- tables -------------------------------------------------------------------------------
    @cached_property
    def _t(self) -> dict[str, np.ndarray]:
        return self.pkg.tables

    @cached_property
    def z_tables(self) -> TableSet:
        return TableSet.from_arrays(self._t, "z")

    @cached_property
    def y_tables(self) -> TableSet:
        return TableSet.from_arrays(self._t, "y")

    @cached_property
    def hyper(self) -> IntegerHyperSynthesis:
        return IntegerHyperSynthesis.from_tables(self._t)

    def _gain(self, level: float, name: str) -> np.ndarray:
        g = self._t.get(name)
        if g is None:
            return np.ones(1, dtype=np.float64)
        level = min(max(level, 0.0), len(g) - 1)
        i = min(int(np.floor(level)), len(g) - 2) if len(g) > 1 else 0
        f = level - i
        lg = g[i] if len(g) == 1 else (1 - f) * g[i] + f * g[i + 1]
        return np.exp(lg)

    # -- geometry -----------------------------------------------------------------------------
    def _input_size(self) -> tuple[int, int] | None:
        s = self.pkg.manifest.get("input_size")
        return (int(s[0]), int(s[1])) if s else None

    def _to_input(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.ndim != 3 or pixels.shape[2] != self.channels:
            raise AecError(f"model '{self.pkg.name}' takes {self.channels}-channel images")
        h, w = pixels.shape[:2]
        fixed = self._input_size()
        if fixed and (h, w) != fixed:
            raise AecError(f"model '{self.pkg.name}' takes {fixed[1]}x{fixed[0]} images, not {w}x{h}")
        m = int(self.pkg.manifest.get("pad_multiple", 1))
        ph, pw = -h % m, -w % m
        if ph or pw:
            pixels = np.pad(pixels, ((0, ph), (0, pw), (0, 0)), mode="edge")
        return pixels.transpose(2, 0, 1)[None]          # uint8; tiles are converted to float one by one

    # -- encoding -----------------------------------------------------------------------------
    def analyse(self, pixels: np.ndarray, check: Callable[[], None] | None = None) -> Analysis:
        """pixels: (H, W, channels) uint8. check is called between tiles and may raise to cancel."""
        x = self._to_input(pixels)
        session = self.pkg.session("analysis")

        def g_a(tile: np.ndarray) -> np.ndarray:
            return session(tile.astype(np.float32) * np.float32(1 / 255))

        if self.kind == "hyperprior":
            ov = int(self.pkg.manifest.get("overlap", {}).get("analysis", 64))
            y = run_tiled(g_a, x, ANALYSIS_TILE, ov, scale=1 / 16, align=int(self.pkg.manifest.get("pad_multiple", 64)),
                          check=check)
        else:
            y = g_a(x)
        return Analysis(y[0], pixels.shape[0], pixels.shape[1])

    def _quantize(self, a: Analysis, level: float) -> dict:
        gain = self._gain(level, "log_gain")
        if self.kind == "factorized":
            yg = a.y.astype(np.float64) * gain.reshape((-1,) + (1,) * (a.y.ndim - 1))
            return {"q": np.round(yg).astype(np.int64)}
        yg = a.y.astype(np.float64) * gain[:, None, None]
        z = self.pkg.session("hyper_analysis")(yg[None].astype(np.float32))[0]
        z_hat = np.round(z).astype(np.int64)
        mean, idx = self._entropy_params(z_hat)
        q = np.round(yg - mean).astype(np.int64)
        return {"z": z_hat, "q": q, "mean": mean, "idx": idx}

    def _entropy_params(self, z_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, log_scale = self.hyper(z_hat)
        idx = np.searchsorted(self._t["log_scale_bounds"], log_scale)
        return mean, idx

    def _channel_index(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.broadcast_to(np.arange(shape[0]).reshape((-1,) + (1,) * (len(shape) - 1)), shape)

    def code(self, a: Analysis, level: float, mode: str = "RGB", bits: int = 8,
             alpha_dropped: bool = False) -> tuple[bytes, dict]:
        """Quantize and entropy-code at a quality level: (.aez bytes, quantized state for recon)."""
        level = container.quantize_level(min(max(level, 0.0), max(self.levels - 1, 0)))
        st = self._quantize(a, level)
        enc = Encoder()
        if self.kind == "hyperprior":
            enc.encode(st["z"], self._channel_index(st["z"].shape), self.z_tables)
            enc.encode(st["q"], st["idx"], self.y_tables)
        else:
            enc.encode(st["q"], self._channel_index(st["q"].shape), self.z_tables)
        payload = container.join_payload(*enc.finish())
        header = Header(self.pkg.model_id, a.width, a.height, self.channels, mode, bits, self.kind, level, alpha_dropped)
        st["level"] = level
        return container.pack(header, payload), st

    # -- decoding -----------------------------------------------------------------------------
    def latent_from_state(self, st: dict) -> np.ndarray:
        inv = self._gain(st["level"], "log_inv_gain")
        if self.kind == "factorized":
            return (st["q"] * inv.reshape((-1,) + (1,) * (st["q"].ndim - 1))).astype(np.float32)
        return ((st["q"] + st["mean"]) * inv[:, None, None]).astype(np.float32)

    def synthesize(self, y_hat: np.ndarray, height: int, width: int,
                   check: Callable[[], None] | None = None) -> np.ndarray:
        """Latent -> (height, width, channels) uint8."""
        session = self.pkg.session("synthesis")

        def g_s(tile: np.ndarray) -> np.ndarray:       # float tile -> uint8 tile: no full-size float image
            return np.clip(np.round(session(tile) * 255.0), 0, 255).astype(np.uint8)

        if self.kind == "hyperprior":
            ov = int(self.pkg.manifest.get("overlap", {}).get("synthesis", 4))
            x = run_tiled(g_s, y_hat[None], SYNTHESIS_TILE, ov, scale=16, align=4, check=check)
        else:
            x = g_s(y_hat[None])
        return np.ascontiguousarray(x[0, :, :height, :width].transpose(1, 2, 0))

    def reconstruct(self, st: dict, height: int, width: int, check: Callable[[], None] | None = None) -> np.ndarray:
        return self.synthesize(self.latent_from_state(st), height, width, check)

    def decode(self, data: bytes) -> tuple[np.ndarray, Header]:
        header, payload = container.unpack(data)
        if header.model_id != self.pkg.model_id[:container.ID_BYTES]:
            raise ModelError(f"file was made with another model (id {header.model_id.hex()}, "
                             f"'{self.pkg.name}' is {self.pkg.model_id[:container.ID_BYTES].hex()})")
        if header.codec != self.kind or header.channels != self.channels:
            raise CorruptFileError("header does not match the model")
        stream, escapes = container.split_payload(payload)
        dec = Decoder(stream, escapes)
        m = int(self.pkg.manifest.get("pad_multiple", 1))
        hp, wp = header.height + (-header.height % m), header.width + (-header.width % m)
        st: dict = {"level": header.quality}
        if self.kind == "hyperprior":
            nz = len(self.z_tables)
            zshape = (nz, hp // 64, wp // 64)
            st["z"] = dec.decode(self._channel_index(zshape), self.z_tables)
            st["mean"], idx = self._entropy_params(st["z"])
            st["q"] = dec.decode(idx, self.y_tables)
        else:
            shape = tuple(self.pkg.manifest["latent_shape"])
            st["q"] = dec.decode(self._channel_index(shape), self.z_tables)
        return self.reconstruct(st, header.height, header.width), header
