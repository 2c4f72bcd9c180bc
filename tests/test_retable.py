"""Refitting a codec's entropy tables to its encoder's symbols (aecompress.train.retable)."""

import json

import numpy as np
import pytest

from aecompress.codec import Codec
from aecompress.compress import decode_bytes, encode_picture
from aecompress.entropy import TableSet
from aecompress.imageio import Picture, read_image, to_rgb8
from aecompress.package import load_package
from aecompress.train.retable import refit, retable, symbol_counts

from .conftest import ROOT, SAMPLE


def test_refit_moves_each_table_towards_its_counts():
    tables = TableSet.from_pmfs([np.array([100, 800, 100, 1]), np.array([500, 500, 1])], [-1, 0])
    values = np.array([1, 1, 1, 1, 0, 1])
    index = np.array([0, 0, 0, 0, 0, 1])
    counts = symbol_counts(values, index, tables)
    assert counts.tolist() == [0, 1, 4, 0, 0, 1, 0]      # table 0: value 1 four times, 0 once; table 1: 1 once
    new = refit(tables, counts, kappa=1.0)
    p_old = tables.pmf[2] / tables.pmf[:4].sum()
    p_new = new.pmf[2] / new.pmf[:4].sum()
    assert p_new > p_old                                    # value 1 of table 0 became likelier
    assert (new.length == tables.length).all() and (new.minimum == tables.minimum).all()
    same = refit(tables, counts, kappa=1e12)               # an overwhelming prior keeps the model's shape
    np.testing.assert_allclose(same.pmf[:3] / same.pmf[:3].sum(), tables.pmf[:3] / tables.pmf[:3].sum(), atol=1e-3)


def test_retable_writes_a_new_package_that_codes_smaller_and_decodes(tmp_path):
    cat = to_rgb8(read_image(SAMPLE))
    images = [cat[:128, :192], cat[128:256, 200:392]]
    out = tmp_path / "photo-rt"
    logs = []
    record = retable(ROOT / "models" / "photo", out, images, "two crops of the sample", log=logs.append)
    b = record["bytes_on_fitting_images"]
    assert b["after"] < b["before"]                         # fitted on these very images
    old, new = load_package(ROOT / "models" / "photo"), load_package(out)
    assert new.model_id != old.model_id                     # the decoder computes something else now
    assert json.loads((out / "manifest.json").read_text())["training"]["stages"][-1] == record
    # graphs and the hyper-synthesis are untouched; only the y and z tables changed
    for name in ("analysis.onnx", "synthesis.onnx", "hyper_analysis.onnx"):
        assert (out / name).read_bytes() == (old.path / name).read_bytes()
    changed = {k for k in old.tables if not np.array_equal(old.tables[k], new.tables[k])}
    assert changed and changed <= {"y_pmf", "z_pmf"}
    # a file made with the new package decodes to the encoder's reconstruction
    enc = encode_picture(Picture(cat, "RGB"), Codec(new), quality=60)
    pixels, _, codec = decode_bytes(enc.data, new)
    assert np.array_equal(pixels, enc.recon)
    with pytest.raises(Exception):
        decode_bytes(enc.data, old)                         # and names the new model, not the old
