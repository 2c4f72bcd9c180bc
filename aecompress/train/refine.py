"""The encoder's refinement graph: rate and distortion of a latent, and their gradients, as ONNX.

`aecompress encode --refine N` (aecompress.refine) improves the latent an encoder sends by gradient
descent on the rate-distortion cost of the coded file (stochastic Gumbel annealing, Yang et al.
2020, "Improving inference for neural image compression"). The runtime has no autograd, so the
gradient is a graph of its own, written out by hand here from the synthesis' weights:

    inputs   y (1, M, h, w) soft latent (gained), mean, scale (the hyperprior's, same shape),
             inv_gain (1, M, 1, 1), target (1, C, 16h, 16w) in [0, 1], mask (1, 1, 16h, 16w)
    outputs  bits  = sum of -log2 P(y) under the discretised Gaussians N(mean, scale)
             sse   = sum of mask * (clamp(g_s(y * inv_gain), 0, 1) - target)^2
             d bits / d y, d sse / d y

The backward pass is the adjoint of each layer in reverse: a stride-2 transposed convolution's
adjoint is the stride-2 convolution with the same kernel, inverse GDN's (a = u * s, s = sqrt(beta +
gamma u^2)) is g_u = g_a s + u * gamma^T (g_a u / s). tests/test_refine.py checks both outputs
against torch's autograd. Only the encoder uses it, so the file does not take part in the model id:
files coded with and without refinement decode with the same package.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..package import MANIFEST
from .layers import GDN, LIKELIHOOD_MIN, SCALE_MIN

INPUTS = ("y", "mean", "scale", "inv_gain", "target", "mask")
OUTPUTS = ("bits", "sse", "grad_bits", "grad_sse")


def rate_and_grad(y: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bits of y under N(mean, scale) discretised to unit bins around y (as training's
    gaussian_likelihood), and their derivative in y."""
    scale = torch.clamp(scale, min=SCALE_MIN)
    v = y - mean
    av = torch.abs(v)
    a = (0.5 - av) / scale
    b = (-0.5 - av) / scale
    r2 = 1.0 / math.sqrt(2.0)
    p = 0.5 * (torch.erf(a * r2) - torch.erf(b * r2))      # ONNX has Erf, not Erfc
    live = (p > LIKELIHOOD_MIN).to(y.dtype)
    p = torch.clamp(p, min=LIKELIHOOD_MIN)
    bits = -torch.log2(p)
    c = 1.0 / math.sqrt(2.0 * math.pi)
    phi_a, phi_b = c * torch.exp(-0.5 * a * a), c * torch.exp(-0.5 * b * b)
    grad = torch.sign(v) * live * (phi_a - phi_b) / (scale * p * math.log(2.0))
    return bits.sum(), grad


class RefineGraph(nn.Module):
    """Rate, distortion and their gradients for a synthesis made of stride-2 5x5 transposed
    convolutions and inverse GDNs (conv.Synthesis)."""

    def __init__(self, g_s: nn.Module):
        super().__init__()
        import copy

        from .export import SubpixelDeconv

        g_s = copy.deepcopy(g_s)
        self.layers = nn.ModuleList()
        self.kinds: list[str] = []
        self.deconvs = nn.ModuleList()             # the original layers, for the adjoint's kernels
        for mod in g_s.net:
            if isinstance(mod, nn.ConvTranspose2d):
                self.layers.append(SubpixelDeconv(mod))
                self.deconvs.append(mod)
                self.kinds.append("deconv")
            elif isinstance(mod, GDN) and mod.inverse:
                self.layers.append(mod)
                self.kinds.append("igdn")
            else:
                raise ValueError(f"the refinement graph does not know layer {type(mod).__name__}")

    def forward(self, y, mean, scale, inv_gain, target, mask):
        bits, grad_bits = rate_and_grad(y, mean, scale)
        u = y * inv_gain
        saved = []
        for layer, kind in zip(self.layers, self.kinds):
            saved.append(u)
            u = layer(u)
        x = u
        xc = torch.clamp(x, 0.0, 1.0)
        err = (xc - target) * mask
        sse = (err * err).sum()
        g = 2.0 * err * mask * ((x > 0.0) & (x < 1.0)).to(x.dtype)
        k = len(self.deconvs) - 1
        for layer, kind, inp in zip(reversed(self.layers), reversed(self.kinds), reversed(saved)):
            if kind == "deconv":
                dc = self.deconvs[k]
                k -= 1
                g = F.conv2d(g, dc.weight, None, stride=dc.stride, padding=dc.padding)
            else:
                beta, gamma = layer.effective()
                c = inp.shape[1]
                s = torch.sqrt(F.conv2d(inp * inp, gamma.view(c, c, 1, 1), beta))
                g = g * s + inp * F.conv2d(g * inp / s, gamma.t().contiguous().view(c, c, 1, 1))
        return bits, sse, grad_bits, g * inv_gain


def export_refine(g_s: nn.Module, path: Path, m: int, channels: int = 3) -> None:
    """Write the refinement graph of a synthesis to `path` (single file, weights embedded) and check
    it with onnxruntime against the torch module."""
    import onnxruntime as ort

    graph = RefineGraph(g_s).float().eval()
    gen = torch.Generator().manual_seed(0)
    h, w = 4, 6
    mean, scale = torch.randn(1, m, h, w, generator=gen), torch.rand(1, m, h, w, generator=gen) * 4 + 0.1
    y = mean + scale * torch.randn(1, m, h, w, generator=gen)        # latents as the hyperprior expects them
    ex = (y, mean, scale, torch.rand(1, m, 1, 1, generator=gen) + 0.5,
          torch.rand(1, channels, 16 * h, 16 * w, generator=gen), torch.ones(1, 1, 16 * h, 16 * w))
    axes = {"y": {2: "h", 3: "w"}, "mean": {2: "h", 3: "w"}, "scale": {2: "h", 3: "w"},
            "target": {2: "H", 3: "W"}, "mask": {2: "H", 3: "W"},
            "grad_bits": {2: "h", 3: "w"}, "grad_sse": {2: "h", 3: "w"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, ex, str(path), input_names=list(INPUTS), output_names=list(OUTPUTS),
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    with torch.no_grad():
        ref = [t.numpy() for t in graph(*ex)]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: t.numpy() for n, t in zip(INPUTS, ex)})
    for name, r, o in zip(OUTPUTS, ref, got):
        err = float(np.max(np.abs(r - o))) if r.size else 0.0
        if o.shape != r.shape or err > 1e-3 * max(1.0, float(np.max(np.abs(r)))):
            raise RuntimeError(f"ONNX export of the refinement graph: {name} does not match torch ({err:.2e})")


def check_against_package(folder: Path, refine_path: Path) -> float:
    """Largest difference between the refinement graph's distortion and that of the package's own
    synthesis graph on a random latent (relative to the sum): the two must compute one function."""
    import onnxruntime as ort

    man = json.loads((folder / MANIFEST).read_text())
    m, ch = int(man["architecture"]["m"]), int(man["channels"])
    gen = np.random.default_rng(0)
    h, w = 6, 5
    y = (gen.normal(size=(1, m, h, w)) * 2).astype(np.float32)
    target = gen.random((1, ch, 16 * h, 16 * w), dtype=np.float32)
    ig = np.ones((1, m, 1, 1), np.float32)
    syn = ort.InferenceSession(str(folder / man["graphs"]["synthesis"]), providers=["CPUExecutionProvider"])
    x = syn.run(None, {syn.get_inputs()[0].name: y})[0]
    ref = float(((x - target) ** 2).sum())
    sess = ort.InferenceSession(str(refine_path), providers=["CPUExecutionProvider"])
    feeds = dict(zip(INPUTS, (y, y, np.ones_like(y), ig, target, np.ones((1, 1, 16 * h, 16 * w), np.float32))))
    sse = float(sess.run(None, feeds)[1])
    return abs(sse - ref) / max(ref, 1e-9)


def add_to_package(folder: Path) -> Path:
    """Give an existing hyperprior package its refinement graph (rebuilt from its synthesis graph):
    refine.onnx and the manifest's encoder.refine_graph. The model id does not change."""
    from ..fsutil import write_bytes_atomic
    from .from_package import codec_from_package

    folder = Path(folder)
    codec, _ = codec_from_package(folder, fit_steps=0)
    man = json.loads((folder / MANIFEST).read_text())
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        path = Path(tmp) / "refine.onnx"
        export_refine(codec.g_s, path, int(man["architecture"]["m"]), int(man["channels"]))
        err = check_against_package(folder, path)
        if err > 1e-4:
            raise RuntimeError(f"the refinement graph does not match {folder.name}'s synthesis (relative error {err:.1e})")
        write_bytes_atomic(folder / "refine.onnx", path.read_bytes(), force=True)
    man.setdefault("encoder", {})["refine_graph"] = "refine.onnx"
    write_bytes_atomic(folder / MANIFEST, (json.dumps(man, indent=2) + "\n").encode(), force=True)
    return folder / "refine.onnx"


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m aecompress.train.refine",
                                 description="Add the encoder's refinement graph (encode --refine) to hyperprior model packages.")
    ap.add_argument("packages", nargs="+", type=Path)
    args = ap.parse_args(argv)
    for folder in args.packages:
        try:
            path = add_to_package(folder)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            print(f"refine: {folder}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
            return 1
        print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    from ..entrypoint import configure_process

    configure_process()         # a program of its own, as the command line is (Pillow's limit, quiet library logs)
    raise SystemExit(main())
