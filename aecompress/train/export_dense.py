"""Export a trained dense autoencoder as a "factorized" codec model package.

analysis.onnx maps (1, C, H, W) pixels in [0, 1] to the (1, D) code; synthesis.onnx maps a (1, D)
code back to pixels, clamped to [0, 1] inside the graph; tables.npz holds one factorized table per
code unit (prefix "z") and, when the gain is not 1, log_gain / log_inv_gain of shape (1, D): the
runtime codes round(code * gain) and decodes q / gain. Both graphs are checked against torch, and the
finished package is loaded by the torch-free runtime, used to code sample images and checked to
decode them exactly as the encoder predicted, all before it is moved into place.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import AecError
from ..package import FORMAT, MANIFEST, ModelPackage
from .dense import DenseAE
from .export import _write_package_atomically, export_onnx, factorized_tables
from .resume import resolved


class _Analysis(nn.Module):
    def __init__(self, model: DenseAE):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.encode(x)["code"]


class _Synthesis(nn.Module):
    def __init__(self, model: DenseAE):
        super().__init__()
        self.model = model

    def forward(self, y):
        return torch.clamp(self.model.decode(y), 0.0, 1.0)


def measure_package(folder: Path, images: np.ndarray, manifest: dict | None = None) -> dict:
    """Code images (N, H, W, C uint8) with the runtime: mean file bytes, payload bytes and PSNR.

    Raises if a file does not decode to the reconstruction the encoder predicted."""
    from .. import container
    from ..codec import Codec
    from ..metrics import mse as _mse

    pkg = ModelPackage(Path(folder), manifest or json.loads((Path(folder) / MANIFEST).read_text()))
    codec = Codec(pkg)
    mode = "L" if codec.channels == 1 else "RGB"
    sizes, psnrs, mses, header_bytes = [], [], [], []
    for i, im in enumerate(images):
        a = codec.analyse(im)
        data, st = codec.code(a, codec.span, mode)
        rec = codec.reconstruct(st, a.height, a.width)
        if i < 8:
            dec, _ = codec.decode(data)
            if not np.array_equal(dec, rec):
                raise AecError("exported package does not decode its own files exactly")
        _, payload = container.unpack(data)
        sizes.append(len(data))
        header_bytes.append(len(data) - len(payload))
        m = _mse(rec, im)
        mses.append(m)
        psnrs.append(100.0 if m == 0 else 10 * np.log10(255.0**2 / m))
    return {"images": len(images), "mean_file_bytes": float(np.mean(sizes)), "max_file_bytes": int(np.max(sizes)),
            "mean_payload_bytes": float(np.mean(sizes) - np.mean(header_bytes)),
            "container_overhead_bytes": float(np.mean(header_bytes)),
            "mean_psnr": float(np.mean(psnrs)), "psnr_of_mean_mse": float(10 * np.log10(255.0**2 / max(np.mean(mses), 1e-10))),
            "bits_per_pixel": float(np.mean(sizes) * 8 / (images.shape[1] * images.shape[2]))}


def export_dense_codec(model: DenseAE, out: Path, name: str, samples: np.ndarray, training: dict,
                       description: str = "", measure: np.ndarray | None = None,
                       measure_set: str | None = None) -> Path:
    """Write the package; samples: a few (N, H, W, C) uint8 images to verify the graphs with;
    measure: images to measure (file bytes, PSNR) with the runtime into manifest["measured"],
    which `measure_set` names (held-out or training images)."""
    model = model.eval().cpu()
    c = model.cfg
    gain = model.gain.detach().double().numpy()
    if not np.all(np.isfinite(gain)) or np.any(gain <= 0):
        raise AecError("cannot export: the model's quantization gains are not finite and positive")

    def build(tmp: Path) -> None:
        x = torch.from_numpy(samples[:4].transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
        ex = x[:1]
        export_onnx(_Analysis(model), ex, tmp / "analysis.onnx", dynamic_hw=False)
        with torch.no_grad():
            y = model.quantize(model.encode(ex)["code"])
        export_onnx(_Synthesis(model), y, tmp / "synthesis.onnx", dynamic_hw=False)
        tables = factorized_tables(model.eb).to_arrays("z")
        if not np.allclose(gain, 1.0):
            tables["log_gain"] = np.log(gain)[None, :]
            tables["log_inv_gain"] = -np.log(gain)[None, :]
        np.savez_compressed(tmp / "tables.npz", **tables)
        manifest = {
            "format": FORMAT, "name": name, "kind": "codec", "codec": "factorized", "channels": c.channels,
            "input_size": [c.height, c.width], "latent_shape": [c.latent], "levels": 1,
            "graphs": {"analysis": "analysis.onnx", "synthesis": "synthesis.onnx"}, "tables": "tables.npz",
            "architecture": {"type": "dense", **c.as_dict()},
            "description": description, "training": training, "measured": {},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        measured = measure_package(tmp, measure if measure is not None else samples, manifest)
        manifest["measured"] = {**measured, **({"set": measure_set} if measure_set else {})}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))

    return _write_package_atomically(Path(out), build)


def training_summary(result) -> dict:
    """The manifest's "training" block from a fit_dense.DenseResult."""
    from dataclasses import asdict

    from .hardware import describe, machine

    cfg = result.cfg
    last = result.history[-1] if result.history else {}
    hw = describe(f"CUDA GPU ({torch.cuda.get_device_name(0)})" if result.device == "cuda" else "CPU",
                  None if result.device == "cuda" else torch.get_num_threads(), machine=machine())
    return {"data": resolved(cfg.data), "images": int(len(result.train_images) + len(result.val_images)),
            "validation_images": int(len(result.val_images)), "skipped": len(result.skipped),
            "steps": int(result.steps), "seconds": round(result.seconds, 1), "hardware": hw, "seed": cfg.seed,
            "options": {k: v for k, v in asdict(cfg).items() if k not in ("data", "out")},
            "objective": asdict(result.obj), "final_validation": result.stats.get("val", {}),
            "last_history": last, "stats": {k: v for k, v in result.stats.items() if k not in ("val", "gain")}}
