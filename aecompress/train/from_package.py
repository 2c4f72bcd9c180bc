"""Torch models rebuilt from model packages, so a shipped model can be fine-tuned (``--init PACKAGE``).

A package holds everything its network computes, in the form the runtime runs: ONNX graphs (float
weights), the integer hyper-synthesis and the entropy tables. Training checkpoints stay on the
machine that trained them, so a later stage, on another machine or a GPU, starts from the package:

- analysis, hyper-analysis and the denoiser: the ONNX initializers are the state dict;
- synthesis: its 3x3 subpixel convolutions are turned back into the 5x5 stride-2 transposed
  convolutions they were made from (``export.SubpixelDeconv`` in reverse: a permutation, exact);
- hyper-synthesis: the integer weights times their requantisation multipliers give a float
  network with the same function (ReLU commutes with positive scales), rescaled layer by layer so
  that weights have the size of a fresh initialisation;
- the factorized prior of ``z``: only its quantized tables are shipped, so the density is fitted
  to them (cross-entropy, a few hundred Adam steps; the rest of training corrects what is left).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..entropy import TableSet
from ..package import MANIFEST
from .conv import HyperpriorCodec
from .export import subpixel_taps
from .layers import EntropyBottleneck


def package_for_init(init: str | Path) -> Path | None:
    """The package folder an --init value names (a folder, or an installed name such as 'photo');
    None when it names no package (a checkpoint file, or nothing)."""
    if Path(init).is_file():
        return None
    from ..errors import ModelError
    from ..package import find_package_dir

    try:
        return find_package_dir(init)
    except ModelError:
        return None


def _initializers(path: Path) -> dict[str, torch.Tensor]:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    return {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in m.graph.initializer}


def deconv_from_subpixel(kernel: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(4*cout, cin, 3, 3) subpixel kernel and (4*cout,) bias -> ConvTranspose2d(k=5, stride 2)
    weight (cin, cout, 5, 5) and bias (cout,): the inverse of export.SubpixelDeconv."""
    cout, cin = kernel.shape[0] // 4, kernel.shape[1]
    kern = kernel.reshape(cout, 2, 2, cin, 3, 3)
    w = torch.zeros(cin, cout, 5, 5, dtype=kernel.dtype)
    for r, s, dy, dx, ky, kx in subpixel_taps(5):
        w[:, :, ky, kx] = kern[:, r, s, :, dy + 1, dx + 1].T
    return w, bias[::4].clone()


def _hyper_synthesis_from_tables(codec: HyperpriorCodec, t: dict[str, np.ndarray]) -> None:
    convs = codec.h_s.convs()
    if int(t["hs_layers"]) != len(convs):
        raise ValueError("the package's hyper-synthesis has another number of layers")
    c_in = 1.0                                  # scale of this layer's input (integer units / float units)
    for i, c in enumerate(convs):
        mult = torch.from_numpy(t[f"hs_mult{i}"].astype(np.float64))
        w = torch.from_numpy(t[f"hs_w{i}"].astype(np.float64)) * mult[:, None, None, None] * c_in
        b = torch.from_numpy(t[f"hs_b{i}"].astype(np.float64)) * mult
        if tuple(w.shape) != tuple(c.weight.shape):
            raise ValueError(f"hyper-synthesis layer {i}: {tuple(w.shape)} in the package, "
                             f"{tuple(c.weight.shape)} in the model")
        if i < len(convs) - 1:                  # hidden: rescale the output to a fresh layer's weight size
            fan_in = w[0].numel()
            target = 1.0 / math.sqrt(3 * fan_in)
            c_out = float(w.pow(2).mean().sqrt()) / target
            w, b = w / c_out, b / c_out
            c_in = c_out
        c.weight.data = w.float()
        c.bias.data = b.float()


def fit_entropy_bottleneck(eb: EntropyBottleneck, tables: TableSet, steps: int = 600, lr: float = 0.02) -> float:
    """Fit the factorized density to a package's quantized tables; returns the mean KL (bits)."""
    radius = int(max(np.abs(tables.minimum).max(), np.abs(tables.minimum + tables.length).max())) + 1
    target = torch.zeros(len(tables), 2 * radius + 1, dtype=torch.float64)
    for c in range(len(tables)):
        freq = tables.pmf[tables.offset[c]: tables.offset[c] + tables.length[c] - 1].astype(np.float64)
        lo = int(tables.minimum[c]) + radius
        target[c, lo: lo + len(freq)] = torch.from_numpy(freq / freq.sum())
    target = target.float()
    opt = torch.optim.Adam(eb.parameters(), lr=lr)
    v = eb.integer_values(radius)

    def kl() -> torch.Tensor:
        p = eb.bin_probabilities(v).view(eb.channels, -1).clamp_min(1e-9)
        return (target * (torch.log2(target.clamp_min(1e-12)) - torch.log2(p))).sum(1).mean()

    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * (0.1 if step > 0.8 * steps else 1.0)
        loss = kl()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(kl())


def codec_from_package(folder: Path, fit_steps: int = 600) -> tuple[HyperpriorCodec, dict]:
    """A HyperpriorCodec with a package's weights, and a report of how close the rebuild is."""
    folder = Path(folder)
    man = json.loads((folder / MANIFEST).read_text())
    if man.get("kind") != "codec" or man.get("codec") != "hyperprior":
        raise ValueError(f"{folder} is not a hyperprior codec package")
    cfg = man["architecture"]
    codec = HyperpriorCodec(cfg["channels"], cfg["n"], cfg["m"], cfg["nh"], cfg["nz"], tuple(cfg["lambdas"]))
    graphs = man["graphs"]
    codec.g_a.load_state_dict(_initializers(folder / graphs["analysis"]))
    codec.h_a.load_state_dict(_initializers(folder / graphs["hyper_analysis"]))
    syn = _initializers(folder / graphs["synthesis"])
    state = {}
    for name, mod in codec.g_s.net.named_children():
        if isinstance(mod, nn.ConvTranspose2d):
            state[f"net.{name}.weight"], state[f"net.{name}.bias"] = deconv_from_subpixel(
                syn[f"g_s.net.{name}.conv.weight"], syn[f"g_s.net.{name}.conv.bias"])
        else:
            state[f"net.{name}.beta"] = syn[f"g_s.net.{name}.beta"]
            state[f"net.{name}.gamma"] = syn[f"g_s.net.{name}.gamma"]
    codec.g_s.load_state_dict(state)
    with np.load(folder / man["tables"]) as npz:
        t = {k: npz[k] for k in npz.files}
    _hyper_synthesis_from_tables(codec, t)
    codec.log_gain.data = torch.from_numpy(t["log_gain"]).float()
    codec.log_inv_gain.data = torch.from_numpy(t["log_inv_gain"]).float()
    kl = fit_entropy_bottleneck(codec.entropy_bottleneck, TableSet.from_arrays(t, "z"), steps=fit_steps)
    return codec, {"package": str(folder), "name": man.get("name"), "z_prior_kl_bits": kl,
                   "training": man.get("training", {})}


def denoiser_from_package(folder: Path):
    """A DenoiseNet with a denoiser package's weights, and its manifest."""
    from .denoiser import DenoiseNet

    folder = Path(folder)
    man = json.loads((folder / MANIFEST).read_text())
    if man.get("kind") != "denoiser":
        raise ValueError(f"{folder} is not a denoiser package")
    model = DenoiseNet(tuple(man["architecture"]["widths"]), man.get("channels", 3))
    model.load_state_dict(_initializers(folder / man["graphs"]["denoise"]))
    return model, man
