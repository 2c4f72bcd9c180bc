"""Fine-tuning a codec's encoder for its fixed decoder (aecompress.train.tune_analysis), and the
`decodes` list that lets the new package read the old one's files."""

import json
import shutil

import numpy as np
import pytest

from aecompress import container
from aecompress.codec import Codec
from aecompress.ladder import Ladder
from aecompress.compress import decode_bytes, encode_picture
from aecompress.errors import ModelError
from aecompress.imageio import Picture, read_image, to_rgb8
from aecompress.package import ModelPackage, find_by_id, load_package, manifest_problem
from aecompress.train.tune_analysis import tune

from .conftest import ROOT, SAMPLE


def rd_cost(codec: Codec, crop: np.ndarray, position: float, level: float) -> float:
    """bits per pixel of the real file + lambda * 255^2 * MSE of its decoded pixels."""
    data, st = codec.code(codec.analyse(crop), position)
    rec = codec.reconstruct(st, *crop.shape[:2]).astype(np.float64)
    mse = float(((rec - crop) ** 2).mean()) / 255.0**2
    return len(data) * 8 / (crop.shape[0] * crop.shape[1]) + codec._lambda(level) * 255**2 * mse


def test_tuning_keeps_the_decoder_and_lowers_the_cost_it_trained_on(tmp_path):
    cat = to_rgb8(read_image(SAMPLE))
    held = [cat[172:300, 300:428]]
    train = [cat[0:128, 0:128], cat[128:256, 128:256]]    # crops of the training size: every step sees them whole
    out = tmp_path / "photo-enc"
    logs = []
    record = tune(ROOT / "models" / "photo", out, held + train, "crops of the sample", minutes=10, crop=128,
                  batch=4, lr=3e-5, max_steps=60, held_out=1, levels=(6.0, 6.0), rate="noise", log=logs.append)
    assert record["steps"] == 60 and record["history"][-1]["step"] == 60
    old, new = load_package(ROOT / "models" / "photo"), load_package(out)
    assert new.model_id != old.model_id
    man = json.loads((out / "manifest.json").read_text())
    assert man["training"]["stages"][-1] == record and "measured" not in man
    assert man["training"]["steps"] == old.manifest["training"]["steps"] + 60
    assert man["decodes"][0] == old.model_id.hex()
    # the decoder side is untouched; the encoder side changed
    for name in ("synthesis.onnx", "refine.onnx"):
        assert (out / name).read_bytes() == (old.path / name).read_bytes()
    for name in ("analysis.onnx", "hyper_analysis.onnx"):
        assert (out / name).read_bytes() != (old.path / name).read_bytes()
    changed = {k for k in old.tables if not np.array_equal(old.tables[k], new.tables[k])}
    assert changed == {"log_gain"}
    # the old package's files decode with the new one, to the same pixels; the new one's files too
    for crop in train + held:
        for q in (20, 60, 95):
            a = encode_picture(Picture(crop, "RGB"), Codec(old), quality=q)
            b = encode_picture(Picture(crop, "RGB"), Codec(new), quality=q)
            assert container.read_header(a.data).model_id == old.model_id[:container.ID_BYTES]
            assert np.array_equal(decode_bytes(a.data, new)[0], decode_bytes(a.data, old)[0])
            assert np.array_equal(decode_bytes(b.data, new)[0], b.recon)
            with pytest.raises(ModelError):                   # but not the other way round
                decode_bytes(b.data, old)
    # at the level it trained on, the crops it was shown cost less: real bytes, decoded pixels
    # (about 0.45% less after these 60 steps; the noisy rate proxy makes a single crop's cost wander)
    old_codec, new_codec = Codec(old), Codec(new)
    for c in (old_codec, new_codec):        # full resolution at every level: position = level
        c.ladder = Ladder.single(c.levels)
    position = 6.0
    before = sum(rd_cost(old_codec, crop, position, 6.0) for crop in train)
    after = sum(rd_cost(new_codec, crop, position, 6.0) for crop in train)
    assert after < before * 0.998, (before, after)


def test_a_package_finds_the_files_of_the_ids_it_lists(tmp_path):
    pkg = tmp_path / "enc"
    shutil.copytree(ROOT / "models" / "photo", pkg)
    man = json.loads((pkg / "manifest.json").read_text())
    before = load_package(pkg).model_id
    man["decodes"] = ["ab" * 16]
    (pkg / "manifest.json").write_text(json.dumps(man))
    p = load_package(pkg)
    assert p.model_id == before                               # listing ids does not change the id
    assert p.decodes(bytes.fromhex("ab" * 8)) and p.decodes(p.model_id[:8])
    assert not p.decodes(bytes.fromhex("ac" * 8))
    assert find_by_id(bytes.fromhex("ab" * 8), extra=[p]).path == pkg
    with pytest.raises(ModelError, match="no installed model package"):
        find_by_id(bytes.fromhex("ac" * 8), extra=[p])
    for bad in ("ab" * 16, ["xyz"], ["ab"], [16]):
        assert "decodes" in manifest_problem({**man, "decodes": bad})
    assert isinstance(p, ModelPackage)
