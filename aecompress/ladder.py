"""The resolution ladder: at which resolution and quality level each point of the quality scale codes.

At low rates, coding a half-resolution image and upsampling it after decoding beats coding the
full-resolution image with coarse quantization (AV1's and VVC's resolution switching do the same
for video). Measured with our photo codec on validation photos: at half resolution, level 3 gives
25.2 dB at 0.24 bpp, where the full-resolution level 0 gives 25.1 dB at 0.41 bpp; half resolution
also lowers the rate floor from about 0.4 to about 0.1 bpp.

Between the two, 3/4 resolution beats both, mostly between 0.3 and 0.7 bpp where half resolution
saturates and full resolution is still coarse (measurements in docs/codec.md). At the top, where the
full-resolution levels saturate, coding the image upsampled to 4/3, 3/2 or 5/3 of its size and
downsampling the decoded one (scales 3/4, 2/3 and 3/5) reaches PSNRs full resolution never does, in
fewer bits (the shipped photo ladder uses 3/2, then 5/3).

A ladder is a list of rungs, lowest rate first. A rung codes at 1/scale of the resolution with the
model's quality levels lo..hi (continuous). A *position* u in [0, span] runs along the rungs. The
exporter measures the rate-distortion curve of every scale on calibration photos and keeps the
cheapest at each PSNR (``calibrate``); the ladder is stored in the manifest. A package without one
has a single full-resolution rung, levels 0..L-1, so position equals level.

Quality 1..100 maps onto positions piecewise linearly through an *anchor*: quality 75 (the default)
sits where the calibration photos average ANCHOR_PSNR, so the default keeps its meaning when a
retrained model's ladder changes length. A manifest without an anchor maps quality linearly.

Scales are exact ratios (4/3 codes a ceil(W * 3/4) x ceil(H * 3/4) image, 3/4 a ceil(W * 4/3) x
ceil(H * 4/3) one). Resampling uses Pillow's
Lanczos filter on 8-bit images, which is integer arithmetic: the upsampled pixels are identical on
every machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .container import SCALE_RATIOS, SCALES     # the scales the container can record (docs/aez-format.md)

_RATIOS = dict(zip(SCALES, SCALE_RATIOS))       # scale -> (num, den), exact

# quality 75 codes where the calibration photos average this PSNR (the shipped photo model's q75
# when the anchor was introduced: 30.2 dB at about 0.92 bpp on its 13 calibration photos)
ANCHOR_QUALITY, ANCHOR_PSNR = 75.0, 30.2


def scale_label(scale: float) -> str:
    """How manifests and reports write a scale: "1", "2", "4/3", "3/4", "2/3", "3/5"."""
    num, den = _RATIOS[scale]
    return str(num) if den == 1 else f"{num}/{den}"


def resolution_name(scale: float) -> str:
    """The coded resolution as a fraction of the image's: "full", "1/2", "3/4", "4/3", "3/2", "5/3"."""
    num, den = _RATIOS[scale]
    return "full" if num == den else f"{den}/{num}"


def parse_scale(value) -> float:
    """A scale as a manifest writes it (1, 2, "4/3"), or a value of SCALES -> the canonical value."""
    if not isinstance(value, str):
        for s in _RATIOS:
            if s == value:
                return s
    text = str(value).strip()
    num, _, den = text.partition("/")
    try:
        n, d = int(num), int(den or 1)
    except ValueError:
        raise ValueError(f"invalid resolution scale {value!r}") from None
    for s, (sn, sd) in _RATIOS.items():
        if n * sd == sn * d:
            return s
    raise ValueError(f"unsupported resolution scale {value!r} (supported: {', '.join(map(scale_label, SCALES))})")


@dataclass(frozen=True)
class Rung:
    scale: float               # one of SCALES
    lo: float
    hi: float

    @property
    def length(self) -> float:
        return self.hi - self.lo


class Ladder:
    def __init__(self, rungs: Sequence[Rung], anchor: tuple[float, float] | None = None,
                 anchor_psnr: float | None = None):
        """anchor: (quality, position) that quality maps through; None: quality maps linearly.
        anchor_psnr: the calibration PSNR the anchor was placed at (recorded in the manifest)."""
        if not rungs or any(r.scale not in SCALES or r.hi < r.lo for r in rungs):
            raise ValueError(f"invalid resolution ladder {rungs}")
        self.rungs = list(rungs)
        if anchor is not None:
            q, u = map(float, anchor)
            if not (1.0 < q < 100.0 and 0.0 < u < self.span):
                raise ValueError(f"quality {q:g} anchored at position {u:g}, outside the ladder (qualities 1 to 100, "
                                 f"positions 0 to {self.span:g}, both ends excluded)")
        self.anchor = anchor and (float(anchor[0]), float(anchor[1]))
        self.anchor_psnr = anchor_psnr if anchor else None

    @classmethod
    def single(cls, levels: int) -> "Ladder":
        return cls([Rung(1, 0.0, float(max(levels - 1, 0)))])

    @classmethod
    def from_manifest(cls, manifest: dict, levels: int) -> "Ladder":
        spec = manifest.get("resolution_ladder")
        if not spec:
            return cls.single(levels)
        top = float(max(levels - 1, 0))
        rungs = [Rung(parse_scale(r["scale"]), float(r["lo"]), float(r["hi"])) for r in spec]
        for i, r in enumerate(rungs, 1):
            if not 0 <= r.lo <= r.hi <= top:
                raise ValueError(f"rung {i} runs from level {r.lo:g} to {r.hi:g}: its levels must rise within "
                                 f"the model's 0 to {top:g}")
        a = manifest.get("quality_anchor")
        return cls(rungs, (a["quality"], a["position"]), a.get("calibration_psnr")) if a else cls(rungs)

    def to_manifest(self) -> list[dict]:
        """The manifest's "resolution_ladder" (the anchor goes in "quality_anchor": anchor_manifest)."""
        return [{"scale": int(r.scale) if _RATIOS[r.scale][1] == 1 else scale_label(r.scale),
                 "lo": round(r.lo, 4), "hi": round(r.hi, 4)} for r in self.rungs]

    def anchored(self, points: dict[tuple[float, float], tuple[float, float]], psnr: float = ANCHOR_PSNR,
                 quality: float = ANCHOR_QUALITY) -> "Ladder":
        """This ladder with `quality` placed where the measured points (calibrate_codec's, per
        (scale, integer level) -> (bpp, PSNR)) reach `psnr`; unanchored if they never do."""
        u = 0.0
        for r in self.rungs:
            lv = np.array(sorted(l for s, l in points if s == r.scale))
            ps = np.array([points[(r.scale, l)][1] for l in lv])
            fine = np.linspace(r.lo, r.hi, 257)
            along = np.interp(fine, lv, ps)                  # rising along a calibrated rung
            if along[0] <= psnr <= along[-1] and r.length > 0:
                pos = round(u + float(np.interp(psnr, along, fine)) - r.lo, 4)
                return Ladder(self.rungs, (quality, pos), psnr) if 0 < pos < self.span else Ladder(self.rungs)
            u += r.length
        return Ladder(self.rungs)

    def anchor_manifest(self) -> dict | None:
        """The manifest's "quality_anchor" (None without an anchor)."""
        return self.anchor and {"quality": self.anchor[0], "position": self.anchor[1],
                                "calibration_psnr": self.anchor_psnr}

    @property
    def span(self) -> float:
        return sum(r.length for r in self.rungs)

    def intervals(self) -> list[tuple[float, float]]:
        """The position interval of each rung, lowest first."""
        out, u = [], 0.0
        for r in self.rungs:
            out.append((u, u + r.length))
            u += r.length
        return out

    def _rung_at(self, u: float) -> tuple[int, float]:
        """Position -> (index of its rung, level). A position on the border of two rungs belongs to
        the lower one."""
        u = min(max(float(u), 0.0), self.span)
        for k, r in enumerate(self.rungs[:-1]):
            if u <= r.length:
                return k, r.lo + u
            u -= r.length
        last = self.rungs[-1]
        return len(self.rungs) - 1, min(last.lo + u, last.hi)

    def at(self, u: float) -> tuple[float, float]:
        """Position -> (scale, level). A position on the border of two rungs belongs to the lower one."""
        k, level = self._rung_at(u)
        return self.rungs[k].scale, level

    def at_fitting(self, u: float, fits: Callable[[float], bool]) -> tuple[float, float]:
        """at(u), for an image too large to code at some scales finer than full resolution (fits(scale):
        whether it may; full resolution and coarser scales always do). A position on a rung that does
        not fit, in a run of such rungs, maps linearly over that run onto the levels above the top of
        the rung before the run, up to the highest level the run's rungs reach: at that rung's scale
        when it is full resolution or finer (on a ladder that climbs past full resolution, the finest
        rung that fits), else at full resolution, which codes a level at least as well as a coarser
        scale. So quality still rises with the position, and no upsampled rung is coded beyond the
        bound, a ladder without a full-resolution rung included (full resolution from the run's
        first level when the run starts the ladder)."""
        i, level = self._rung_at(u)
        if fits(self.rungs[i].scale):
            return self.rungs[i].scale, level
        j0, j1 = i, i
        while j0 > 0 and not fits(self.rungs[j0 - 1].scale):
            j0 -= 1
        while j1 < len(self.rungs) - 1 and not fits(self.rungs[j1 + 1].scale):
            j1 += 1
        base = self.rungs[j0 - 1] if j0 > 0 else None
        scale = base.scale if base is not None and base.scale <= 1 else 1
        bottom = base.hi if base is not None else self.rungs[j0].lo
        top = max([r.hi for r in self.rungs[j0:j1 + 1]] + [bottom])
        ivs = self.intervals()
        start, stop = ivs[j0][0], ivs[j1][1]
        along = min(max(float(u) - start, 0.0) / max(stop - start, 1e-9), 1.0)
        return scale, bottom + along * (top - bottom)

    def position(self, scale: float, level: float) -> float:
        """(scale, level) -> position: on the first rung of that scale containing the level, else
        the nearest end of the nearest rung of that scale (a file coded outside today's ladder). A
        scale the ladder has no rung of (a file of an earlier package, coded at 4/3 where today's
        codes at 3/2 and 5/3) counts as the ladder's scale nearest to it in resolution."""
        if self.rungs and all(r.scale != scale for r in self.rungs):
            scale = min((r.scale for r in self.rungs), key=lambda s: (abs(np.log(s / scale)), s))
        u, best = 0.0, None
        for r in self.rungs:
            if r.scale == scale:
                miss = max(r.lo - level, level - r.hi, 0.0)
                if best is None or miss < best[0] - 1e-9:
                    best = (miss, u + min(max(level, r.lo), r.hi) - r.lo)
            u += r.length
        return best[1]

    def _knots(self, qmin: float, qmax: float) -> tuple[list[float], list[float]]:
        qa, ua = self.anchor if self.anchor and qmin < self.anchor[0] < qmax else (qmin, 0.0)
        return [qmin, qa, qmax], [0.0, ua, self.span]

    def quality_to_position(self, quality: float, qmin: float = 1.0, qmax: float = 100.0) -> float:
        qs, us = self._knots(qmin, qmax)
        return float(np.interp(min(max(float(quality), qmin), qmax), qs, us))

    def position_to_quality(self, u: float, qmin: float = 1.0, qmax: float = 100.0) -> float:
        if not self.span:
            return qmax
        qs, us = self._knots(qmin, qmax)
        return float(np.interp(u, us, qs))


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The coded size at 1/scale resolution: ceil(width / scale) x ceil(height / scale), exactly."""
    num, den = _RATIOS[scale]
    return -(-width * den // num), -(-height * den // num)


def _mode(pixels: np.ndarray) -> str:
    return "L" if pixels.shape[2] == 1 else "RGB"


def downscale(pixels: np.ndarray, scale: float) -> np.ndarray:
    """(H, W, C) uint8 -> (ceil(H/scale), ceil(W/scale), C), Lanczos."""
    if scale == 1:
        return pixels
    h, w, c = pixels.shape
    sw, sh = scaled_size(w, h, scale)
    im = Image.fromarray(pixels[:, :, 0] if c == 1 else pixels, _mode(pixels))
    out = np.asarray(im.resize((sw, sh), Image.LANCZOS))
    return out.reshape(sh, sw, c)


def upscale(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """(h, w, C) uint8 -> (height, width, C), Lanczos (integer arithmetic in Pillow: reproducible)."""
    h, w, c = pixels.shape
    if (w, h) == (width, height):
        return pixels
    im = Image.fromarray(pixels[:, :, 0] if c == 1 else pixels, _mode(pixels))
    return np.asarray(im.resize((width, height), Image.LANCZOS)).reshape(height, width, c)


def calibrate(curve: Callable[[float, float], tuple[float, float]], levels: int, step: float = 1.0,
              scales: Sequence[float] = SCALES) -> Ladder:
    """Choose the ladder from measured rate-distortion curves.

    curve(scale, level) -> (mean bpp, mean PSNR) over calibration images, at full-image pixel count.
    Walking up in PSNR from the lowest PSNR any scale gives, each PSNR is coded at the scale that
    needs the fewest bits for it, never going back to a coarser scale once a finer one has taken
    over. A PSNR below a scale's range costs that scale its lowest rate (its level 0 does better for
    that much), so a coarse scale is only used below the others' ranges where it also codes in
    fewer bits than their floor. A rung hands over to the next at the next one's level of the same
    PSNR, so quality stays monotone along the ladder. A scale whose PSNR does not rise with the
    level is left out.
    """
    top = float(max(levels - 1, 0))
    grid = np.arange(0.0, top + 1e-9, step)
    fine = np.linspace(0.0, top, int(round(top * 16)) + 1)
    curves = {}                                      # scale -> (bpp, PSNR) on the fine level grid
    for scale in sorted(set(scales) | {1}, reverse=True):          # coarsest first
        pts = np.array([curve(scale, float(lv)) for lv in grid])
        b, p = np.interp(fine, grid, pts[:, 0]), np.interp(fine, grid, pts[:, 1])
        if np.all(np.diff(p) > 0):
            curves[scale] = (b, p)
    if 1 not in curves:
        return Ladder.single(levels)                 # a non-monotone full curve: no basis to choose
    order = list(curves)                             # coarse -> fine
    ps = np.linspace(min(p[0] for _, p in curves.values()), max(p[-1] for _, p in curves.values()), 1024)
    path: list[tuple[float, float]] = []             # (scale, PSNR) where each run of a scale starts
    allowed = 0                                      # index in `order` of the coarsest scale still allowed
    for p in ps:
        best = None                                  # (bits, index, covers p)
        for k in range(len(order) - 1, allowed - 1, -1):            # finest first: it wins ties
            b, pp = curves[order[k]]
            if p > pp[-1]:
                continue
            bits = float(np.interp(max(p, pp[0]), pp, b))
            if best is None or bits < best[0]:
                best = (bits, k, p >= pp[0])
        if best is None or not best[2]:
            continue                                 # no allowed scale, or dominated by a finer scale's floor
        allowed = best[1]
        if not path or path[-1][0] != order[allowed]:
            path.append((order[allowed], float(p)))
    rungs = []
    for i, (scale, p_start) in enumerate(path):
        b, pp = curves[scale]
        lo = float(np.interp(p_start, pp, fine))
        hi = top if i == len(path) - 1 else float(np.interp(path[i + 1][1], pp, fine))
        rungs.append(Rung(scale, lo, max(hi, lo)))
    return Ladder(rungs)


def measure(codec, images: Sequence[np.ndarray], levels: Sequence[float] | None = None
            ) -> dict[tuple[int, float], tuple[float, float]]:
    """Mean (bpp, PSNR) of real coded files at each scale and level, over (H, W, C) uint8 images.

    codec: an aecompress.codec.Codec (a hyperprior codec). Each scale is coded through the codec's own
    resolution mechanism, with a one-rung ladder at that scale. An image too large to code at an
    upsampled scale (codec.MAX_UPSCALED_PIXELS: the codec codes it at full resolution instead) is
    left out of that scale's points, which would otherwise be full resolution's under its name."""
    import copy

    from .metrics import psnr

    top = float(max(codec.levels - 1, 0))
    grid = list(levels) if levels is not None else [float(v) for v in range(codec.levels)]
    at_scale = {}
    for scale in SCALES:
        at_scale[scale] = copy.copy(codec)
        at_scale[scale].ladder = Ladder([Rung(scale, 0.0, top)])        # position = level
    sums: dict[tuple[float, float], list[float]] = {}
    for im in images:
        h, w = im.shape[:2]
        a = codec.analyse(im)                                          # other scales are derived from it
        for scale, c in at_scale.items():
            if min(h, w) < 64 * scale:
                continue
            for lv in grid:
                data, st = c.code(a, lv)
                if st["scale"] != scale:
                    break                                              # too large for this scale
                rec = c.reconstruct(st, h, w)
                acc = sums.setdefault((scale, lv), [0.0, 0.0, 0.0])
                acc[0] += len(data) * 8 / (h * w)
                acc[1] += psnr(im, rec)
                acc[2] += 1
    return {k: (v[0] / v[2], v[1] / v[2]) for k, v in sums.items() if v[2]}


def calibrate_codec(codec, images: Sequence[np.ndarray]) -> tuple[Ladder, dict]:
    """The ladder for a codec from calibration images, and the measured points behind it."""
    points = measure(codec, images)
    complete = [s for s in SCALES if all((s, float(lv)) in points for lv in range(codec.levels))]
    if any(s >= 1 for s in SCALES if s not in complete):
        return Ladder.single(codec.levels), {}          # images too small to code at every scale
    # an upsampled scale every image was too large for (MAX_UPSCALED_PIXELS) gets no rung
    ladder = calibrate(lambda scale, lv: points[(scale, lv)], codec.levels, scales=complete).anchored(points)
    return ladder, {f"{scale_label(s)}:{lv:g}": [round(b, 4), round(p, 3)] for (s, lv), (b, p) in sorted(points.items())}


def parse_points(raw: dict) -> dict[tuple[float, float], tuple[float, float]]:
    """The measured points as calibrate_codec writes them ("4/3:2" -> [bpp, PSNR]), read back."""
    points = {}
    for key, (b, p) in raw.items():
        scale, level = key.split(":")
        points[(parse_scale(scale), float(level))] = (b, p)
    return points
