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

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np

from . import container
from .container import Header
from .entropy import Decoder, Encoder, TableSet
from .errors import AecError, CorruptFileError, ModelError, NonFiniteOutput
from .hyper import IntegerHyperSynthesis
from .ladder import Ladder, downscale, scaled_size, upscale
from .package import ModelPackage
from .tiling import run_tiled

QUALITY_MIN, QUALITY_MAX = 1.0, 100.0
ANALYSIS_TILE = 1024          # pixels; peak memory per tile is about 100 MB for a 64-channel model
SYNTHESIS_TILE = 64           # latent cells (1024 pixels)
RDOQ_BLOCK = 1 << 20          # latent values per block of the encoder's rounding decisions


@dataclass
class Analysis:
    """The quality-independent part of encoding, reusable while searching a rate target.

    y is the analysis of the image at full resolution; analyses at other scales of the resolution
    ladder are computed from `pixels` the first time a quality needs them, and cached here."""

    y: np.ndarray          # (M, h, w) or (D,) float32
    height: int            # the analysed image's size (the full image's, for the full-resolution analysis)
    width: int
    pixels: np.ndarray | None = None
    scaled: dict = field(default_factory=dict)


def tables_problem(t: dict[str, np.ndarray], kind: str, levels: int) -> str | None:
    """What is wrong with a codec package's tables (tables.npz), or None. A damaged or mismatched
    file is refused when it is loaded, instead of coding every image with the wrong gains or
    probabilities (a gain table of one level would serve every quality as level 0)."""
    prefixes = ("z", "y") if kind == "hyperprior" else ("z",)
    for prefix in prefixes:
        arrays = [t.get(f"{prefix}_{k}") for k in ("pmf", "offset", "length", "minimum")]
        if any(a is None or a.ndim != 1 or a.dtype.kind not in "iu" for a in arrays):
            return f"no integer {prefix}_pmf, {prefix}_offset, {prefix}_length and {prefix}_minimum"
        pmf, offset, length, _ = (a.astype(np.int64) for a in arrays)
        if not (len(offset) == len(length) == len(arrays[3]) >= 1):
            return f"the {prefix} tables' offsets, lengths and minimums differ in number"
        if (length < 2).any() or (offset < 0).any() or (offset + length > len(pmf)).any() or (pmf <= 0).any():
            return f"the {prefix} tables do not lie inside {prefix}_pmf, or have empty entries"
    if kind == "hyperprior":
        bounds = t.get("log_scale_bounds")
        if bounds is None or bounds.ndim != 1 or len(t["y_length"]) != len(bounds) + 1:
            return "there is not one y table more than log_scale_bounds"
        if "hs_layers" not in t or "hs_w0" not in t:
            return "no integer hyper-synthesis (hs_layers, hs_w0...)"
        if t["hs_w0"].ndim != 4:
            return f"hs_w0 has shape {t['hs_w0'].shape}, not a convolution's four axes"
        if len(t["z_length"]) != t["hs_w0"].shape[1]:
            return f"{len(t['z_length'])} z tables for {t['hs_w0'].shape[1]} hyper-latent channels"
    for name in ("log_gain", "log_inv_gain"):
        g = t.get(name)
        if g is not None and (g.ndim != 2 or len(g) != levels or not np.isfinite(g).all()):
            return f"{name} has shape {g.shape}, not one finite row for each of the {levels} levels"
    return None


class Codec:
    def __init__(self, pkg: ModelPackage, rdoq_lambda: float | None = None, refine: int = 0):
        """rdoq_lambda: weight of squared latent error against bits in the encoder's rounding
        (0: plain rounding); by default the package manifest's `encoder.rdoq_lambda`, else 0.
        refine: steps of encoder-side latent refinement (aecompress.refine; 0: none), for packages
        with a refinement graph. Encoder settings: they change neither the format nor the model id."""
        if pkg.kind != "codec":
            raise ModelError(f"model '{pkg.name}' is a {pkg.kind}, not a codec")
        self.pkg = pkg
        self.kind = pkg.manifest.get("codec", "hyperprior")
        if self.kind not in container.CODECS:
            raise ModelError(f"model '{pkg.name}' uses unknown codec '{self.kind}'")
        # read_manifest (package.manifest_problem) has already refused a manifest whose fields
        # these read are malformed, the ladder, its anchor, rdoq_lambda and architecture.lambdas
        # included; these checks stay for a manifest built in memory (train.export_dense, train.reladder)
        try:
            self.channels = int(pkg.channels)
            self.levels = int(pkg.manifest.get("levels", 1))
            self.rdoq_lambda = float(pkg.manifest.get("encoder", {}).get("rdoq_lambda", 0.0)
                                     if rdoq_lambda is None else rdoq_lambda)
            self.ladder = Ladder.from_manifest(pkg.manifest, self.levels)
            self.refine = max(0, int(refine))
            self.refine_schedule = None         # a refine.Schedule to search with; None: refine.schedule_for(steps)
            self._lambdas = [float(v) for v in pkg.manifest.get("architecture", {}).get("lambdas") or ()]
            m = pkg.manifest
            self.pad_multiple = int(m.get("pad_multiple", 1))
            self._tile_align = int(m.get("pad_multiple", 64))
            self._overlap = {k: int(m.get("overlap", {}).get(k, d)) for k, d in (("analysis", 64), ("synthesis", 4))}
            s = m.get("input_size")
            self._fixed_size = (int(s[0]), int(s[1])) if s else None
            self._latent_shape = tuple(int(v) for v in m.get("latent_shape") or ()) or None
            if self.pad_multiple < 1 or self._tile_align < 1:
                raise ValueError("pad_multiple must be positive")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelError(f"model '{pkg.name}': malformed manifest ({exc})") from None
        if self.kind != "hyperprior" and any(r.scale != 1 for r in self.ladder.rungs):
            raise ModelError(f"model '{pkg.name}': only hyperprior codecs can change resolution")

    # -- the quality scale --------------------------------------------------------------------
    # A *position* runs along the resolution ladder (aecompress.ladder); without a ladder it is the
    # quality level itself. Quality 1-100 maps onto positions through the ladder's anchor (q75 at a
    # fixed calibration PSNR), linearly on each side of it.
    @property
    def span(self) -> float:
        return self.ladder.span

    def quality_to_position(self, quality: float) -> float:
        return self.ladder.quality_to_position(quality, QUALITY_MIN, QUALITY_MAX)

    def position_to_quality(self, u: float) -> float:
        return self.ladder.position_to_quality(u, QUALITY_MIN, QUALITY_MAX)

    # -- tables -------------------------------------------------------------------------------
    def check_tables(self) -> None:
        """ModelError now if the package's tables do not fit the model (else at the first image)."""
        self._t

    @cached_property
    def _t(self) -> dict[str, np.ndarray]:
        t = self.pkg.tables
        problem = tables_problem(t, self.kind, self.levels)
        if problem:
            raise ModelError(f"model '{self.pkg.name}': its tables do not fit the model ({problem})")
        return t

    @cached_property
    def z_tables(self) -> TableSet:
        return TableSet.from_arrays(self._t, "z")

    @cached_property
    def y_tables(self) -> TableSet:
        return TableSet.from_arrays(self._t, "y")

    @cached_property
    def hyper(self) -> IntegerHyperSynthesis:
        return IntegerHyperSynthesis.from_tables(self._t)

    @staticmethod
    def _at_level(table, level: float):
        """A per-level table (first axis: levels) linearly interpolated at a fractional level."""
        level = min(max(level, 0.0), len(table) - 1)
        i = min(int(np.floor(level)), len(table) - 2) if len(table) > 1 else 0
        f = level - i
        return table[i] if len(table) == 1 else (1 - f) * table[i] + f * table[i + 1]

    def _gain(self, level: float, name: str) -> np.ndarray:
        g = self._t.get(name)
        if g is None:
            return np.ones(1, dtype=np.float64)
        return np.exp(self._at_level(g, level))

    # -- geometry -----------------------------------------------------------------------------
    def _to_input(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.ndim != 3 or pixels.shape[2] != self.channels:
            raise ModelError(f"model '{self.pkg.name}' takes {self.channels}-channel images")
        h, w = pixels.shape[:2]
        fixed = self._fixed_size
        if fixed and (h, w) != fixed:
            raise ModelError(f"model '{self.pkg.name}' takes {fixed[1]}x{fixed[0]} images, not {w}x{h}")
        m = self.pad_multiple
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
            y = session(tile.astype(np.float32) * np.float32(1 / 255))
            if self.kind == "hyperprior" and (y.ndim != 4 or y.shape[2:] != tuple(-(-n // 16) for n in tile.shape[2:])):
                raise ModelError(f"model '{self.pkg.name}': its analysis gave an output of shape {tuple(y.shape)} "
                                 f"for a tile of {tile.shape[3]}x{tile.shape[2]} (a 16th of its size expected)")
            return y

        if self.kind == "hyperprior":
            ov = self._overlap["analysis"]
            y = run_tiled(g_a, x, ANALYSIS_TILE, ov, scale=1 / 16, align=self._tile_align,
                          check=check)
            if max(x.shape[-2:]) > ANALYSIS_TILE:
                # a tiled image is a large one: what the session keeps of its tiles' memory would
                # sit beside everything that follows (the synthesis of a report included)
                self.pkg.release("analysis")
        else:
            y = g_a(x)
        return Analysis(y[0], pixels.shape[0], pixels.shape[1], pixels)

    def analysis_at(self, a: Analysis, scale: float, check: Callable[[], None] | None = None) -> Analysis:
        """The analysis of the image downscaled by `scale` (cached in `a`)."""
        if scale == 1:
            return a
        if scale not in a.scaled:
            if a.pixels is None:
                raise AecError("this analysis cannot be rescaled (it does not keep its pixels)")
            sub = self.analyse(downscale(a.pixels, scale), check)
            a.scaled[scale] = Analysis(sub.y, sub.height, sub.width, sub.pixels)   # pixels: for refinement
        return a.scaled[scale]

    def refine_problem(self) -> str | None:
        """Why this model cannot refine its latents (encode --refine), or None when it can."""
        if self.kind != "hyperprior":
            return f"model {self.pkg.name} is a {self.kind} codec; --refine works with hyperprior codecs"
        name = self.pkg.manifest.get("encoder", {}).get("refine_graph")
        if not name:
            return f"model {self.pkg.name} has no refinement graph (python -m aecompress.train.refine adds one)"
        if not (self.pkg.path / name).is_file():
            return f"model {self.pkg.name}: its refinement graph {name} is missing"
        if len(self._lambdas) != self.levels or "log_inv_gain" not in self._t:
            return f"model {self.pkg.name} records no training lambda per level, which --refine needs"
        return None

    def can_refine(self) -> bool:
        return self.refine_problem() is None

    def _lambda(self, level: float) -> float:
        """The training lambda of a (fractional) level, interpolated geometrically."""
        return float(np.exp(self._at_level(np.log(self._lambdas), level)))

    def _refined(self, a: Analysis, y: np.ndarray, mean: np.ndarray, scale: np.ndarray, level: float,
                 steps: int, check: Callable[[], None] | None) -> np.ndarray:
        """y: the gained latent, float32; scale: float32 Gaussian scales (both as refine.refine takes them)."""
        from . import refine

        graph = self.pkg.encoder_session("refine_graph")
        target = self._to_input(a.pixels)[0]                    # uint8: converted tile by tile
        inv = self._gain(level, "log_inv_gain")
        return refine.refine(graph.run, y, mean, scale, inv, target, a.height, a.width,
                             self._lambda(level), steps, check=check, schedule=self.refine_schedule)

    def _quantize(self, a: Analysis, level: float, refine: int = 0,
                  check: Callable[[], None] | None = None) -> dict:
        gain = self._gain(level, "log_gain")
        if self.kind == "factorized":
            yg = a.y.astype(np.float64) * gain.reshape((-1,) + (1,) * (a.y.ndim - 1))
            return {"q": np.round(yg).astype(np.int64)}
        yg = a.y.astype(np.float64) * gain[:, None, None]
        z = self.pkg.session("hyper_analysis")(yg[None].astype(np.float32))[0]
        z_hat = np.round(z).astype(np.int64)
        mean, log_scale, idx = self._entropy_params(z_hat)
        if refine > 0 and a.pixels is not None and self.can_refine():
            from .refine import SCALE_MAX, SCALE_MIN

            # in float32, and the whole float64 hyper-synthesis output and gained latent let go
            # first: refinement holds its own copies for the whole search (on 24 megapixels, 1.8
            # instead of 1.0 GB when these stayed)
            scale = log_scale.astype(np.float32)
            del log_scale
            np.clip(scale, np.log(SCALE_MIN), np.log(SCALE_MAX), out=scale)
            np.exp(scale, out=scale)
            y32 = yg.astype(np.float32)
            del yg
            # the refinement has made the rounding decisions itself: plain rounding keeps them
            r = self._refined(a, y32, mean, scale, level, refine, check)
            del y32, scale
            return {"z": z_hat, "q": np.round(r - mean).astype(np.int64), "mean": mean, "idx": idx}
        # the log-scales are a view of the hyper-synthesis' whole float64 output (twice the size
        # of the means, 192 MB on a 24-megapixel photo): let it go before rounding needs memory
        del log_scale
        q = self._round(yg, idx, self.y_tables, mean)
        return {"z": z_hat, "q": q, "mean": mean, "idx": idx}

    def _round(self, r: np.ndarray, idx: np.ndarray, tables: TableSet, mean: np.ndarray | None = None) -> np.ndarray:
        """Quantize r - mean (the latent minus its predicted mean; r itself without a mean) to integers.

        Rate-distortion optimised quantization: each value goes to whichever of its two nearest
        integers costs less in lambda * (r - q)^2 + bits(q), with the bits read off the very tables
        the entropy coder uses. Rounding towards the likelier integer saves more bits than the error
        costs (bench/rd.py compares it with plain rounding as "ours-round"; the gain depends on the
        model: docs/codec.md). The decoder is unaffected: it reads integers."""
        lam = self.rdoq_lambda
        if lam <= 0:
            return np.round(r if mean is None else r - mean).astype(np.int64)
        q = np.empty(r.shape, dtype=np.int64)
        step = max(1, RDOQ_BLOCK // max(1, r[0].size))
        for c in range(0, r.shape[0], step):          # blocks of channels: bounded temporaries on 24 MP
            rc, ic = r[c:c + step], idx[c:c + step]
            if mean is not None:
                rc = rc - mean[c:c + step]
            q0 = np.floor(rc).astype(np.int64)
            q1 = q0 + 1
            c0 = lam * (rc - q0) ** 2 + tables.bits(q0, ic)
            c1 = lam * (rc - q1) ** 2 + tables.bits(q1, ic)
            q[c:c + step] = np.where(c1 < c0, q1, q0)
        return q

    def _entropy_params(self, z_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean, log-scale and table index of every latent value, from z_hat (exact everywhere)."""
        mean, log_scale = self.hyper(z_hat)
        # the means on their own: they are kept (the decoder's reconstruction needs them), the
        # log-scales, the other half of the hyper-synthesis' output, are not
        mean = mean.copy()
        bounds = self._t["log_scale_bounds"]
        if len(bounds) >= 256:
            return mean, log_scale, np.searchsorted(bounds, log_scale)
        # one byte a value (18 million on a 24-megapixel photo), found in blocks of channels so
        # that no full-size 8-byte index array exists
        idx = np.empty(log_scale.shape, dtype=np.uint8)
        step = max(1, RDOQ_BLOCK // max(1, log_scale[0].size))
        for c in range(0, log_scale.shape[0], step):
            idx[c:c + step] = np.searchsorted(bounds, log_scale[c:c + step])
        return mean, log_scale, idx

    def _channel_index(self, shape: tuple[int, ...]) -> np.ndarray:
        index = np.arange(shape[0], dtype=np.uint8 if shape[0] <= 256 else np.int64)
        return np.broadcast_to(index.reshape((-1,) + (1,) * (len(shape) - 1)), shape)

    def code(self, a: Analysis, position: float, mode: str = "RGB", bits: int = 8,
             alpha_dropped: bool = False, refine: int | None = None,
             check: Callable[[], None] | None = None) -> tuple[bytes, dict]:
        """Quantize and entropy-code at a position of the quality scale: (.aez bytes, quantized state).

        The position picks the resolution and the quality level (see `span`); the state carries
        what `reconstruct` needs, including the scale. refine: steps of latent refinement (None:
        the codec's own setting); check: called between refinement steps, may raise to cancel."""
        def fits(s: float) -> bool:             # a scale this image may be coded at (upsampled: within a bound)
            return s >= 1 or math.prod(scaled_size(a.width, a.height, s)) <= MAX_UPSCALED_PIXELS

        scale, level = self.ladder.at_fitting(position, fits)
        level = container.quantize_level(min(max(level, 0.0), max(self.levels - 1, 0)))
        sub = self.analysis_at(a, scale)
        st = self._quantize(sub, level, self.refine if refine is None else refine, check)
        enc = Encoder()
        if self.kind == "hyperprior":
            enc.encode(st["z"], self._channel_index(st["z"].shape), self.z_tables)
            enc.encode(st["q"], st["idx"], self.y_tables)
        else:
            enc.encode(st["q"], self._channel_index(st["q"].shape), self.z_tables)
        payload = container.join_payload(*enc.finish())
        header = Header(self.pkg.model_id, a.width, a.height, self.channels, mode, bits, self.kind, level,
                        alpha_dropped, scale=scale)
        st.update(level=level, scale=scale, position=self.ladder.position(scale, level))
        wanted = self.ladder.at(position)[0]
        if wanted != scale:                     # too large to code at the rung's own resolution
            st["instead_of"] = wanted
        return container.pack(header, payload), st

    # -- decoding -----------------------------------------------------------------------------
    def latent_from_state(self, st: dict) -> np.ndarray:
        inv = self._gain(st["level"], "log_inv_gain")
        if self.kind == "factorized":
            return (st["q"] * inv.reshape((-1,) + (1,) * (st["q"].ndim - 1))).astype(np.float32)
        q, mean = st["q"], st["mean"]
        inv = np.broadcast_to(inv, (q.shape[0],))
        y = np.empty(q.shape, dtype=np.float32)
        for c in range(q.shape[0]):         # a channel at a time: no full-size float64 temporaries
            y[c] = (q[c] + mean[c]) * inv[c]
        return y

    def synthesize(self, y_hat: np.ndarray, height: int, width: int,
                   check: Callable[[], None] | None = None) -> np.ndarray:
        """Latent -> (height, width, channels) uint8."""
        session = self.pkg.session("synthesis")

        def g_s(tile: np.ndarray) -> np.ndarray:       # float tile -> uint8 tile: no full-size float image
            out = session(tile)
            want = (1, self.channels, *(16 * n for n in tile.shape[2:])) if self.kind == "hyperprior" else None
            if out.ndim != 4 or out.shape[:2] != (1, self.channels) or (want is not None and out.shape != want):
                # a graph that does not fit its manifest: wrong sizes or channels, not a file's fault
                raise ModelError(f"model '{self.pkg.name}': its synthesis gave an output of shape {tuple(out.shape)}"
                                 + (f", not {want}" if want else f" for {self.channels}-channel images"))
            return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)

        if self.kind == "hyperprior":
            ov = self._overlap["synthesis"]
            x = run_tiled(g_s, y_hat[None], SYNTHESIS_TILE, ov, scale=16, align=4, check=check)
        else:
            x = g_s(y_hat[None])
        return np.ascontiguousarray(x[0, :, :height, :width].transpose(1, 2, 0))

    def reconstruct(self, st: dict, height: int, width: int, check: Callable[[], None] | None = None) -> np.ndarray:
        """The decoded image at (height, width): synthesised at the coded scale, then resampled to size."""
        return self.render(self.latent_from_state(st), st.get("scale", 1), height, width, check)

    def render(self, y_hat: np.ndarray, scale: float, height: int, width: int,
               check: Callable[[], None] | None = None) -> np.ndarray:
        """The image at (height, width) from the latent coded at `scale`."""
        sw, sh = scaled_size(width, height, scale)
        x = self.synthesize(y_hat, sh, sw, check)
        return upscale(x, width, height) if scale != 1 else x

    def decode(self, data: bytes, check: Callable[[], None] | None = None) -> tuple[np.ndarray, Header]:
        """check is called between synthesis tiles and may raise to cancel."""
        header, payload = container.unpack(data)
        if not self.pkg.decodes(header.model_id):
            raise ModelError(f"file was made with another model (id {header.model_id.hex()}, "
                             f"'{self.pkg.name}' is {self.pkg.model_id[:container.ID_BYTES].hex()})")
        if header.codec != self.kind or header.channels != self.channels:
            raise CorruptFileError("header does not match the model")
        stream, escapes = container.split_payload(payload)
        dec = Decoder(stream, escapes)
        if header.scale != 1 and self.kind != "hyperprior":
            raise CorruptFileError("header does not match the model (scaled image)")
        if self._fixed_size and (header.height, header.width) != self._fixed_size:
            # the encoder takes this size only: another one would be reported, but the synthesis
            # makes the model's size whatever the header says
            raise CorruptFileError(f"header does not match the model (a {header.width}x{header.height} image; "
                                   f"'{self.pkg.name}' codes {self._fixed_size[1]}x{self._fixed_size[0]} only)")
        m = self.pad_multiple
        cw, ch = scaled_size(header.width, header.height, header.scale)
        hp, wp = ch + (-ch % m), cw + (-cw % m)
        _check_memory(DECODE_FIXED_BYTES + DECODE_BYTES_PER_PIXEL * max(hp * wp, header.width * header.height),
                      header)
        st: dict = {"level": header.quality, "scale": header.scale}
        self._check_stream_length(len(stream), hp, wp)
        if self.kind == "hyperprior":
            nz = len(self.z_tables)
            zshape = (nz, hp // 64, wp // 64)
            st["z"] = dec.decode(self._channel_index(zshape), self.z_tables)
            st["mean"], log_scale, idx = self._entropy_params(st["z"])
            del log_scale
            st["q"] = dec.decode(idx, self.y_tables)
            del idx
        else:
            shape = self._latent_shape
            if shape is None:
                raise ModelError(f"model '{self.pkg.name}': its manifest has no latent_shape")
            st["q"] = dec.decode(self._channel_index(shape), self.z_tables)
        y_hat = self.latent_from_state(st)
        del st                  # the integers and the means go before the synthesis needs its memory
        try:
            return self.render(y_hat, header.scale, header.height, header.width, check), header
        except NonFiniteOutput:
            # Whose fault? Without escapes every value lies inside its table's range, which the
            # model's own tables set (the shipped synthesis stays finite to 16 times beyond it): a
            # NaN there is the model's, as it is when the synthesis gives NaN for a latent of zeros.
            # Otherwise the file holds escaped values its model cannot take (an escape may reach
            # 2^24): a checksummed file damaged before its checksum was made, or made to harm.
            if not escapes or not self._synthesis_is_finite(y_hat.shape):
                raise
            raise CorruptFileError("payload is damaged (its latent is far out of the model's range)") from None

    def _synthesis_is_finite(self, shape: tuple[int, ...]) -> bool:
        """Whether the synthesis gives finite values for a latent of zeros (a small one when it is
        convolutional), the middle of every table."""
        size = (shape[0], *(min(n, 4) for n in shape[1:])) if self.kind == "hyperprior" else shape
        try:
            self.pkg.session("synthesis")(np.zeros((1, *size), np.float32))
        except NonFiniteOutput:
            return False
        return True


    def _check_stream_length(self, nbytes: int, hp: int, wp: int) -> None:
        """CorruptFileError when the range coder's stream is too short to hold the latent of an
        hp x wp image even if every value were its table's likeliest symbol: a forged or cut header
        that claims a huge image is refused at once instead of decoding zeros for minutes (half
        the bound is required, for the coder's rounding)."""
        if self.kind == "hyperprior":
            cells = (hp // 64) * (wp // 64)
            need = (len(self.z_tables) * cells * self.z_tables.min_bits()
                    + int(self.pkg.manifest.get("latent_channels", 0)) * 16 * cells * self.y_tables.min_bits())
        else:
            need = float(np.prod(self._latent_shape or (0,))) * self.z_tables.min_bits()
        if nbytes * 8 + 64 < need / 2:
            raise CorruptFileError(f"damaged .aez file (a stream of {nbytes} bytes cannot hold the latent of a "
                                   f"{wp}x{hp} image)")


# A decode holds the whole latent (one byte of table index, four of integer and, until the integers
# are decoded, eight of mean a value: a value per two pixels) and the uint8 image while the synthesis
# runs in tiles, so its peak grows with the pixels and a header may ask for more memory than the
# machine has. Measured (CLI decode peaks, 2026-12-06): 489 MB for 6 and 843 MB for 24 megapixels,
# about 20 bytes a pixel over a fixed ~370 MB (the synthesis tile's working memory, the libraries).
# an image is coded upsampled (a rung finer than full resolution) only while the coded image stays
# within this: a 24-megapixel photo is, at all three (66.7 to 67.6 million coded at 5/3); a larger one codes
# at the finest rung that fits, at its levels above the rung's top (a 40-megapixel one at full
# resolution's), so that neither side needs the memory of a 100-megapixel image
MAX_UPSCALED_PIXELS = 68_000_000
DECODE_FIXED_BYTES = 400 << 20
DECODE_BYTES_PER_PIXEL = 24


def _available_memory() -> int | None:
    """Bytes of memory the system can still give (Linux's MemAvailable); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_memory(need: int, header: Header) -> None:
    """Refuse, in one line, a decode that would need more memory than is free (a checksummed header
    may claim 20000 x 20000 pixels in 26 bytes: that decode was swapping at 10 GB)."""
    free = _available_memory()
    if free is not None and need > free and need > 1 << 30:    # small decodes never (odd MemAvailable)
        raise AecError(f"decoding this {header.width}x{header.height} image needs about {need / 2**30:.1f} GB "
                       f"of memory, and {free / 2**30:.1f} GB is free")

