"""Export trained models as model packages: ONNX graphs, integer tables, a manifest.

Every graph is checked against torch on a sample input before the package is written, and the
package is written to a temporary folder first and renamed into place, so a failed export never
leaves a package that cannot be loaded.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..entropy import TableSet, quantize_pmf
from ..fsutil import chmod_as_created
from ..hyper import ACT_MAX, IntegerHyperSynthesis
from ..package import FORMAT, MANIFEST
from .conv import SCALE_LEVELS, SCALE_TABLE_MAX, SCALE_TABLE_MIN, HyperpriorCodec
from .layers import EntropyBottleneck

WEIGHT_MAX = (1 << 11) - 1
# Encoder-side rate-distortion optimised rounding (aecompress.codec.Codec._round): chosen on 8
# validation photos with the photo codec (8: -8.7%, 16: -9.5%, 32: -8.4% BD-rate against rounding;
# at 16 on all 28 in bench/rd.py: -7.9% with the stage-3 model, -12.7% with stage 5). The stage-7
# model gains far less and prefers a larger lambda (9 photos, full resolution: 8: +2.6%, 16: -0.6%,
# 24: -1.2%, 32: -1.3%, 64: -1.2%).
RDOQ_LAMBDA = 32.0


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, dynamic_hw: bool = True,
                atol: float = 2e-3) -> None:
    """torch -> single-file ONNX (weights embedded), verified with onnxruntime on `example`."""
    import onnxruntime as ort

    module = module.eval()
    example = example.detach()
    axes = {"input": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 2: "oh", 3: "ow"}} if dynamic_hw \
        else {"input": {0: "batch"}, "output": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=["input"], output_names=["output"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    with torch.no_grad():
        ref = module(example).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": example.numpy()})[0]
    err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    scale = max(1.0, float(np.max(np.abs(ref))))
    if got.shape != ref.shape or err > atol * scale:
        raise RuntimeError(f"ONNX export of {path.name} does not match torch (max error {err:.2e})")


def factorized_tables(eb: EntropyBottleneck, radius: int = 255, tail: float = 1e-7) -> TableSet:
    pmf = eb.pmf_table(radius).double().numpy()
    pmfs, mins = [], []
    for p in pmf:
        c = np.cumsum(p)
        lo = int(np.searchsorted(c, tail))
        hi = int(np.searchsorted(c, c[-1] - tail))
        hi = max(hi, lo)
        pmfs.append(quantize_pmf(p[lo:hi + 1], total_bits=20))
        mins.append(lo - radius)
    return TableSet.from_pmfs(pmfs, mins)


def scale_table() -> np.ndarray:
    return np.exp(np.linspace(math.log(SCALE_TABLE_MIN), math.log(SCALE_TABLE_MAX), SCALE_LEVELS))


def gaussian_tables(scales: np.ndarray, tail_sigmas: float = 9.0) -> TableSet:
    pmfs, mins = [], []
    for s in scales:
        r = int(math.ceil(s * tail_sigmas)) + 1
        v = np.arange(-r, r + 1, dtype=np.float64)
        upper = 0.5 * np.vectorize(math.erfc)(-(v + 0.5) / (s * math.sqrt(2)))
        lower = 0.5 * np.vectorize(math.erfc)(-(v - 0.5) / (s * math.sqrt(2)))
        pmfs.append(quantize_pmf(upper - lower, total_bits=20))
        mins.append(-r)
    return TableSet.from_pmfs(pmfs, mins)


@torch.no_grad()
def quantize_hyper_synthesis(codec: HyperpriorCodec, calib_z: list[torch.Tensor]) -> dict[str, np.ndarray]:
    """Integer weights and requantisation multipliers for aecompress.hyper (see its docstring)."""
    convs = codec.h_s.convs()
    shuffles = [False, True, True, False]
    relus = [True, True, True, False]
    # activation ranges of each hidden layer on calibration latents
    maxima = [0.0] * (len(convs) - 1)
    for z in calib_z:
        h = z
        for i, c in enumerate(convs[:-1]):
            h = torch.relu(c(h))
            maxima[i] = max(maxima[i], float(h.max()))
            if shuffles[i]:
                h = torch.nn.functional.pixel_shuffle(h, 2)
    out: dict[str, np.ndarray] = {"hs_layers": np.array(len(convs))}
    s_in = 1.0
    for i, c in enumerate(convs):
        w = c.weight.double().numpy()
        b = c.bias.double().numpy()
        s_w = np.maximum(np.abs(w).reshape(w.shape[0], -1).max(1), 1e-12) / WEIGHT_MAX
        w_int = np.round(w / s_w[:, None, None, None])
        b_int = np.round(b / (s_in * s_w))
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        assert fan_in * ACT_MAX * WEIGHT_MAX + np.abs(b_int).max() < 2**52, "integer accumulator could overflow"
        if i < len(convs) - 1:
            s_out = max(maxima[i] * 1.25, 1e-6) / ACT_MAX
            mult = s_in * s_w / s_out
        else:
            s_out, mult = None, s_in * s_w
        out[f"hs_w{i}"] = w_int.astype(np.int32)
        out[f"hs_b{i}"] = b_int.astype(np.int64)
        out[f"hs_mult{i}"] = mult.astype(np.float64)
        out[f"hs_shuffle{i}"] = np.array(int(shuffles[i]))
        out[f"hs_relu{i}"] = np.array(int(relus[i]))
        s_in = s_out if s_out else s_in
    return out


class ExactPixelShuffle(nn.Module):
    """PixelShuffle(2) from 4C to C channels written as a grouped 2x2 stride-2 ConvTranspose with 0/1
    weights: every output pixel is one input value times 1 plus zeros, so the result is exact.

    ONNX Runtime runs DepthToSpace on plain NCHW tensors, between a reorder out of and back into its
    blocked conv layout; measured on a 768x512 synthesis, the four shuffles and their reorders took
    a quarter of the graph's time, and this form makes the graph 20-25% faster."""

    def __init__(self, c: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(4 * c, c, 2, stride=2, groups=c, bias=False)
        w = torch.zeros(4 * c, 1, 2, 2)
        for r in range(2):
            for s in range(2):
                w[r * 2 + s:: 4, 0, r, s] = 1.0          # PixelShuffle order: channel c*4 + r*2 + s
        self.up.weight.data = w
        self.up.weight.requires_grad_(False)

    def forward(self, x):
        return self.up(x)


def subpixel_taps(k: int = 5):
    """(r, s, dy, dx, ky, kx) for a stride-2 transposed convolution of kernel size k: output phase
    (r, s) sees the input at offset (dy, dx) through kernel tap (ky, kx) (SubpixelDeconv)."""
    for r in range(2):
        for s in range(2):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ky, kx = r + 2 - 2 * dy, s + 2 - 2 * dx
                    if ky < k and kx < k:
                        yield r, s, dy, dx, ky, kx


class SubpixelDeconv(nn.Module):
    """ConvTranspose2d(k=5, stride 2, padding 2, output_padding 1) rewritten as a 3x3 convolution
    to 4x the channels followed by a 2x pixel shuffle: the same function (up to float rounding).

    Output pixel (2a + r, 2b + s) only sees input rows a-1..a+1 through kernel taps
    ky = r + 2 - 2 dy (dy = -1, 0, 1), so each of the four output phases is a 3x3 convolution. ONNX
    Runtime runs Conv with its direct NCHWc kernels but ConvTranspose through an im2col buffer:
    measured on a 1152x1152 synthesis tile, the rewrite halves peak memory (759 -> 418 MB) and is
    faster.
    """

    def __init__(self, dc: nn.ConvTranspose2d):
        super().__init__()
        w = dc.weight.detach()                                  # (cin, cout, 5, 5)
        cin, cout, k, _ = w.shape
        if (k, dc.stride, dc.padding, dc.output_padding) != (5, (2, 2), (2, 2), (1, 1)):
            raise ValueError("SubpixelDeconv handles k=5, stride 2, padding 2, output_padding 1 only")
        kern = torch.zeros(cout, 2, 2, cin, 3, 3, dtype=w.dtype)
        for r, s, dy, dx, ky, kx in subpixel_taps(k):
            kern[:, r, s, :, dy + 1, dx + 1] = w[:, :, ky, kx].T
        self.conv = nn.Conv2d(cin, 4 * cout, 3, padding=1)
        self.conv.weight.data = kern.reshape(4 * cout, cin, 3, 3)
        bias = dc.bias.detach() if dc.bias is not None else torch.zeros(cout)
        self.conv.bias.data = bias.repeat_interleave(4)
        self.shuffle = ExactPixelShuffle(cout)

    def forward(self, x):
        return self.shuffle(self.conv(x))


def subpixel_synthesis(g_s: nn.Module) -> nn.Module:
    """A copy of g_s with every stride-2 5x5 ConvTranspose2d replaced by its SubpixelDeconv."""
    import copy

    g = copy.deepcopy(g_s).eval()
    for name, mod in list(g.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.ConvTranspose2d):
                setattr(mod, child_name, SubpixelDeconv(child))
    return g


class _Synthesis(nn.Module):
    """g_s (its transposed convolutions rewritten as subpixel convolutions) with the output clamped
    to [0, 1]."""

    def __init__(self, g_s: nn.Module):
        super().__init__()
        self.g_s = subpixel_synthesis(g_s)

    def forward(self, y):
        return torch.clamp(self.g_s(y), 0.0, 1.0)


def add_stage(man: dict, record: dict, schedule: str) -> None:
    """Record a fine-tuning stage in a package manifest: the stage appended to its training stages,
    the totals (steps, seconds or minutes) and the schedule's description extended; the old
    `measured` dropped, since it measured the package before the stage (bench/rd.py measures again)."""
    tr = man.setdefault("training", {})
    tr.setdefault("stages", []).append(record)
    tr["steps"] = int(tr.get("steps", 0)) + int(record["steps"])
    if "seconds" in tr:
        tr["seconds"] = int(tr["seconds"]) + record["seconds"]
    if "minutes" in tr:
        tr["minutes"] = round(float(tr["minutes"]) + record["seconds"] / 60, 1)
    if "schedule" in tr:
        tr["schedule"] += f"; then {schedule}"
    man.pop("measured", None)


def write_stage_package(src: Path, out: Path, record: dict, schedule: str, tables: dict[str, np.ndarray],
                        export_graphs, edit_manifest=None) -> Path:
    """Write `out`: the package `src` after a fine-tuning stage. Its files are copied, then
    export_graphs(tmp, manifest) writes the graphs the stage changed over them, the arrays in
    `tables` replace those of the same name (keeping their dtype), edit_manifest(manifest) may change
    the manifest, and the stage is recorded (add_stage). Atomic, as every export."""
    src = Path(src)

    def build(tmp: Path) -> None:
        _copy_files(src, tmp)
        man = json.loads((src / MANIFEST).read_text())
        if edit_manifest is not None:
            edit_manifest(man)
        export_graphs(tmp, man)
        with np.load(src / man["tables"]) as z:
            t = {k: z[k] for k in z.files}
        t.update({k: np.asarray(v).astype(t[k].dtype) for k, v in tables.items()})
        np.savez_compressed(tmp / man["tables"], **t)
        add_stage(man, record, schedule)
        (tmp / MANIFEST).write_text(json.dumps(man, indent=2) + "\n")

    return _write_package_atomically(Path(out), build)


def _copy_files(src: Path, dst: Path) -> None:
    for f in Path(src).iterdir():
        if f.is_file():
            shutil.copy2(f, dst / f.name)


def write_package_copy(src: Path, out: Path, manifest: dict) -> Path:
    """Write `out`: the package `src` with another manifest (its graphs and tables as they are). Atomic."""
    def build(tmp: Path) -> None:
        _copy_files(src, tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    return _write_package_atomically(Path(out), build)


def _write_package_atomically(out: Path, build) -> Path:
    """Run build(tmp) on a temporary folder beside `out`, then swap it into place: a failed export
    never leaves a half-written package, and an existing package is replaced only by a complete one."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        build(tmp)
        chmod_as_created(tmp, 0o777)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_conv_codec(codec: HyperpriorCodec, out: Path, name: str, calib: list[np.ndarray],
                      training: dict, description: str = "", measured: dict | None = None,
                      ladder_calib: list[np.ndarray] | None = None, calib_set: str | None = None) -> Path:
    """Write a hyperprior model package. calib: a few (H, W, C) uint8 images for calibration of the
    integer hyper-synthesis; ladder_calib: images on which to choose the resolution ladder
    (aecompress.ladder; none: a single full-resolution rung); calib_set: which images calib are, for
    the manifest's `measured` (default "N calibration image(s)")."""
    codec = codec.eval()
    ch = codec.config["channels"]

    def build(tmp: Path) -> None:
        ex = torch.rand(1, ch, 128, 192)
        export_onnx(codec.g_a, ex, tmp / "analysis.onnx")
        y = codec.g_a(ex)
        export_onnx(codec.h_a, y, tmp / "hyper_analysis.onnx")
        export_onnx(_Synthesis(codec.g_s), y, tmp / "synthesis.onnx")
        from .refine import export_refine              # encode --refine's gradient graph (encoder only)

        export_refine(codec.g_s, tmp / "refine.onnx", codec.config["m"], ch)
        calib_z = []
        with torch.no_grad():
            for im in calib:
                x = torch.from_numpy(im[:256, :256].transpose(2, 0, 1)[None].astype(np.float32) / 255)
                x = x[:, :, : x.shape[2] // 64 * 64, : x.shape[3] // 64 * 64]
                if x.shape[2] < 64 or x.shape[3] < 64:
                    continue
                for k in range(codec.levels):
                    yy = codec.g_a(x) * torch.exp(codec.log_gain[k])[None, :, None, None]
                    calib_z.append(torch.round(codec.h_a(yy)))
        tables = {"log_gain": codec.log_gain.detach().double().numpy(),
                  "log_inv_gain": codec.log_inv_gain.detach().double().numpy(),
                  "log_scale_bounds": np.log(scale_table()[:-1] * np.sqrt(scale_table()[1:] / scale_table()[:-1]))}
        tables.update(factorized_tables(codec.entropy_bottleneck).to_arrays("z"))
        tables.update(gaussian_tables(scale_table()).to_arrays("y"))
        tables.update(quantize_hyper_synthesis(codec, calib_z))
        # the integer hyper-synthesis must agree with the float one
        hs = IntegerHyperSynthesis.from_tables(tables)
        if calib_z:
            z = calib_z[len(calib_z) // 2]
            mean_i, ls_i = hs(z[0].numpy())
            with torch.no_grad():
                mean_f, ls_f = codec.h_s(z).chunk(2, dim=1)
            err = float(np.max(np.abs(mean_i - mean_f[0].numpy())))
            if err > 0.05:
                raise RuntimeError(f"integer hyper-synthesis deviates from torch by {err:.3f}")
        np.savez_compressed(tmp / "tables.npz", **tables)
        manifest = {
            "format": FORMAT, "name": name, "kind": "codec", "codec": "hyperprior", "channels": ch,
            "graphs": {"analysis": "analysis.onnx", "hyper_analysis": "hyper_analysis.onnx",
                       "synthesis": "synthesis.onnx"},
            "tables": "tables.npz", "downsample": 16, "pad_multiple": 64,
            "latent_channels": codec.config["m"], "levels": codec.levels,
            "overlap": {"analysis": 64, "synthesis": 4},
            "encoder": {"rdoq_lambda": RDOQ_LAMBDA, "refine_graph": "refine.onnx"},
            "architecture": codec.config,
            "description": description, "training": training, "measured": measured or {},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        ladder_images = [im for im in (ladder_calib or []) if im.ndim == 3 and im.shape[2] == ch]
        if ladder_images and ch == 3:
            from ..codec import Codec
            from ..ladder import calibrate_codec
            from ..package import ModelPackage, read_manifest

            ladder, points = calibrate_codec(Codec(ModelPackage(tmp, read_manifest(tmp), "cpu", None)),
                                             ladder_images)
            manifest["resolution_ladder"] = ladder.to_manifest()
            if ladder.anchor:
                manifest["quality_anchor"] = ladder.anchor_manifest()
            manifest["training"] = {**training, "ladder_calibration": {
                "images": len(ladder_images), "points (scale:level -> bpp, PSNR)": points}}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        # the runtime, not torch, must code and decode with it before it is moved into place
        checked = runtime_round_trip(tmp, [im for im in calib if im.ndim == 3 and im.shape[2] == ch][:4],
                                     calib_set)
        if not measured and checked:
            manifest["measured"] = checked
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))

    return _write_package_atomically(out, build)


ROUND_TRIP_QUALITIES = (10, 50, 75, 100)


def runtime_round_trip(folder: Path, images: list[np.ndarray], label: str | None = None) -> dict:
    """Encode `images` with the package in `folder` through the runtime at a few qualities, decode
    every file and require the decoder's pixels to equal the encoder's reconstruction; returns what
    was measured (bpp from file bytes, PSNR of the decoded pixels) for the manifest, on the set that
    label names (default "N calibration image(s)")."""
    from ..codec import Codec
    from ..compress import encode_picture
    from ..imageio import Picture
    from ..metrics import psnr
    from ..package import ModelPackage, read_manifest

    if not images:
        return {}
    codec = Codec(ModelPackage(folder, read_manifest(folder), "cpu", None))
    points = []
    for q in ROUND_TRIP_QUALITIES:
        bpp, db = [], []
        for im in images:
            pic = Picture(im, "RGB" if im.shape[2] == 3 else "L")
            enc = encode_picture(pic, codec, quality=q)
            dec, _ = codec.decode(enc.data)
            if not np.array_equal(dec, enc.recon):
                raise RuntimeError(f"runtime round trip failed: decoding at quality {q} differs from the encoder's "
                                   "reconstruction")
            bpp.append(len(enc.data) * 8 / (im.shape[0] * im.shape[1]))
            db.append(min(psnr(im, dec), 99.0))
        points.append({"quality": q, "bpp": round(float(np.mean(bpp)), 4), "psnr": round(float(np.mean(db)), 3)})
    label = label or f"{len(images)} calibration image(s)"
    return {"summary": f"{points[0]['bpp']:.2f}-{points[-1]['bpp']:.2f} bpp, {points[0]['psnr']:.1f}-"
                       f"{points[-1]['psnr']:.1f} dB on {label} (coded and decoded by the runtime at export)",
            "set": label, "points": points}


def export_checkpoint(ckpt_path: Path, out: Path, name: str, calib: list[np.ndarray], description: str = "",
                      extra_training: dict | None = None, ladder_calib: list[np.ndarray] | None = None,
                      calib_set: str | None = None) -> Path:
    """Export a conv checkpoint. calib: images for the integer hyper-synthesis, measured by the
    runtime at export (calib_set names them in the manifest); ladder_calib: images for the
    resolution ladder (default: calib)."""
    ck = torch.load(ckpt_path, weights_only=False, map_location="cpu")
    cfg = ck["model_config"]
    codec = HyperpriorCodec(cfg["channels"], cfg["n"], cfg["m"], cfg["nh"], cfg["nz"], tuple(cfg["lambdas"]))
    codec.load_state_dict(ck["model"])
    tc = ck.get("train_config", {})
    training = {"data": tc.get("data"),
                **{k: ck[k] for k in ("images", "validation_images", "skipped") if k in ck},
                "steps": ck["step"], "seconds": round(ck["elapsed"]),
                "crop": tc.get("crop"), "batch": tc.get("batch"), "lr": tc.get("lr"), "seed": tc.get("seed"),
                # the last validation (a timed run's step lines between validations carry none)
                "validation_history": [h for h in ck.get("history", []) if "val" in h][-1:], **(extra_training or {})}
    # fine-tuning (--init): follow the chain of checkpoints back to the first run
    stages, cur, path = [], ck, Path(ckpt_path)
    while True:
        c = cur.get("train_config", {})
        stages.append({"run": str(path.parent), "steps": cur["step"], "seconds": round(cur["elapsed"]),
                       "lr": c.get("lr"), "crop": c.get("crop"), "batch": c.get("batch"),
                       **({"bf16": True} if c.get("bf16") else {}), **({"init": c["init"]} if c.get("init") else {}),
                       **({"device": cur["device"]} if cur.get("device") else {}),
                       **({"whole_photo_bd_rate_vs_start": round(cur["whole_photos"]["bd_rate_vs_start"], 2)}
                          if (cur.get("whole_photos") or {}).get("bd_rate_vs_start") is not None else {})})
        if cur.get("init_package"):                  # started from a model package: its recorded stages
            earlier = cur["init_package"].get("training") or {}
            for st in reversed(earlier.get("stages") or [{k: earlier.get(k) for k in ("steps", "seconds")}]):
                stages.append(st)
            break
        if not c.get("init") or not Path(c["init"]).is_file():
            break
        path = Path(c["init"])
        cur = torch.load(path, weights_only=False, map_location="cpu")
    if len(stages) > 1:
        stages.reverse()
        training.update(stages=stages, steps=sum(s.get("steps") or 0 for s in stages),
                        seconds=sum(s.get("seconds") or 0 for s in stages))
    if "hardware" not in training:
        from .hardware import describe

        training["hardware"] = describe(ck.get("device"), ck.get("torch_threads") or tc.get("threads"),
                                        machine=ck.get("machine"))
    return export_conv_codec(codec, out, name, calib, training, description,
                             ladder_calib=calib if ladder_calib is None else ladder_calib, calib_set=calib_set)
