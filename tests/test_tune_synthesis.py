"""Fine-tuning a codec's synthesis on its encoder's own latents (aecompress.train.tune_synthesis)."""

import json

import numpy as np
import pytest

from aecompress import container
from aecompress.codec import Codec
from aecompress.ladder import Ladder
from aecompress.compress import decode_bytes, encode_picture
from aecompress.imageio import Picture, read_image, to_rgb8
from aecompress.metrics import psnr
from aecompress.package import load_package
from aecompress.train.refine import check_against_package
from aecompress.train.tune_synthesis import tune

from .conftest import ROOT, SAMPLE


def test_tuning_keeps_every_bit_and_lowers_the_distortion_it_trained_on(tmp_path):
    cat = to_rgb8(read_image(SAMPLE))
    held = [cat[200:264, 300:364]]
    train = [cat[0:64, 0:64], cat[64:128, 128:192]]      # crops of the training size: every step sees them whole
    out = tmp_path / "photo-tuned"
    logs = []
    record = tune(ROOT / "models" / "photo", out, held + train, "crops of the sample", minutes=10, crop=64,
                  batch=4, lr=1e-4, max_steps=25, held_out=1, levels=(6.0, 6.0),
                  log=logs.append)
    assert record["steps"] == 25 and record["history"][-1]["step"] == 25
    old, new = load_package(ROOT / "models" / "photo"), load_package(out)
    assert new.model_id != old.model_id                       # the decoder computes something else now
    man = json.loads((out / "manifest.json").read_text())
    assert man["training"]["stages"][-1] == record and "measured" not in man
    # the encoder side is untouched: same graphs, same tables but the decoder's inverse gains
    for name in ("analysis.onnx", "hyper_analysis.onnx"):
        assert (out / name).read_bytes() == (old.path / name).read_bytes()
    assert (out / "synthesis.onnx").read_bytes() != (old.path / "synthesis.onnx").read_bytes()
    changed = {k for k in old.tables if not np.array_equal(old.tables[k], new.tables[k])}
    assert changed == {"log_inv_gain"}
    for crop in train + held:
        for q in (20, 60, 95):
            a = encode_picture(Picture(crop, "RGB"), Codec(old), quality=q)
            b = encode_picture(Picture(crop, "RGB"), Codec(new), quality=q)
            # every bit of the payload is the same: any change is distortion at equal rate
            assert container.unpack(a.data)[1] == container.unpack(b.data)[1]
            pixels, _, _ = decode_bytes(b.data, new)
            assert np.array_equal(pixels, b.recon)            # files decode to the encoder's reconstruction
    # at the level it trained on, the images it was shown decode closer to the originals
    gains = []
    old_codec, new_codec = Codec(old), Codec(new)
    for c in (old_codec, new_codec):        # full resolution at every level: position = level
        c.ladder = Ladder.single(c.levels)
    position = 6.0
    for crop in train:
        ra = old_codec.reconstruct(old_codec.code(old_codec.analyse(crop), position)[1], 64, 64)
        rb = new_codec.reconstruct(new_codec.code(new_codec.analyse(crop), position)[1], 64, 64)
        gains.append(psnr(crop, rb) - psnr(crop, ra))
    assert min(gains) > 0.1, gains
    # the refinement graph was re-exported from the new synthesis
    assert check_against_package(out, out / man["encoder"]["refine_graph"]) < 1e-3


def test_crop_weights_run_from_equal_decibels_to_the_training_loss():
    import torch

    from aecompress.train.tune_synthesis import crop_weights

    codec = Codec(load_package(ROOT / "models" / "photo"))
    levels = np.array([0.0, 8.0])
    mse = torch.tensor([1e-3, 1e-3])
    lam = codec._lambda(8.0) / codec._lambda(0.0)              # 0.18 / 0.0009
    for weighting, ratio in (("db", 1.0), ("sqrt", lam ** 0.5), ("lambda", lam)):
        w = crop_weights(codec, levels, mse, weighting)
        assert float(w.mean()) == pytest.approx(1.0)
        assert float(w[1] / w[0]) == pytest.approx(ratio, rel=1e-5)
    # a crop that decodes worse weighs more under the training loss (its gradient is lambda * dMSE)
    w = crop_weights(codec, np.array([4.0, 4.0]), torch.tensor([1e-3, 4e-3]), "lambda")
    assert float(w[1] / w[0]) == pytest.approx(4.0)
