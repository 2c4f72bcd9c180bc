"""bench/rd.py --merge: runs on disjoint images combine into the result of one run on all of them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rd():
    spec = importlib.util.spec_from_file_location("bench_rd", ROOT / "bench" / "rd.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SETTINGS = {"ours": [10, 30, 50, 70, 90], "ours-refine50": [10, 30, 50, 70, 90], "WEBP": [20, 40, 60, 80, 95]}


def fake_rows(seed: int, n: int) -> dict:
    """Per-image points of n images: each codec a rising curve, ours a little cheaper than WebP."""
    rng = np.random.default_rng(seed)
    rows = {}
    for c, qs in SETTINGS.items():
        cheaper = {"ours": 0.95, "ours-refine50": 0.85, "WEBP": 1.0}[c]
        rows[c] = {}
        for k, q in enumerate(qs):
            pts = []
            for _ in range(n):
                bpp = 0.1 * 2 ** k * cheaper * rng.uniform(0.9, 1.1)
                pts.append({"bpp": bpp, "psnr": 26 + 3 * np.log2(bpp / 0.1 / cheaper) + rng.normal(0, 0.05),
                            "ms_ssim": 1 - 0.1 * 0.7 ** k})
            rows[c][q] = pts
    return rows


def run_json(rd, rows: dict, names: list[str], model_id: str = "abcd") -> dict:
    codecs = list(SETTINGS)
    curves, bd, bd_refined = rd.summarise(rows, SETTINGS, codecs, "ours-refine50", len(names))
    proc = {"encode_s": 0.5, "encode_quiet_s": 0.4, "decode_s": 0.5, "total_s": 1.0, "quiet_total_s": 0.9}
    return {"folder": "photos", "images": names, "model": "photo", "model_name": "photo", "model_id": model_id,
            "machine": "x", "curves": curves, "bd_rate_vs": bd,
            "seconds_per_image": {c: {"encode": 1.0 + i, "decode": 0.1} for i, c in enumerate(codecs)},
            "whole_process_768x512": proc, "refine_steps": 50, "refined": "ours-refine50",
            "bd_rate_of_refined_vs": bd_refined,
            "per_image": {c: {str(q): lst for q, lst in rows[c].items()} for c in codecs}}


def test_merge_equals_one_run_on_all_images(rd, tmp_path):
    a, b = fake_rows(1, 3), fake_rows(2, 2)
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(run_json(rd, a, ["p1", "p3", "p5"])))
    pb.write_text(json.dumps(run_json(rd, b, ["p2", "p4"])))
    merged = rd.merge([pa, pb])
    both = {c: {q: a[c][q] + b[c][q] for q in qs} for c, qs in SETTINGS.items()}
    one = run_json(rd, both, ["p1", "p3", "p5", "p2", "p4"])
    assert merged["images"] == one["images"]
    for c in SETTINGS:
        for p, q in zip(merged["curves"][c], one["curves"][c]):
            assert p == pytest.approx(q)
    assert merged["bd_rate_vs"]["WEBP"]["psnr"] == pytest.approx(one["bd_rate_vs"]["WEBP"]["psnr"])
    assert merged["bd_rate_vs"]["WEBP"]["psnr"] < 0
    refined = merged["bd_rate_of_refined_vs"]["WEBP"]
    assert refined["psnr"] == pytest.approx(one["bd_rate_of_refined_vs"]["WEBP"]["psnr"])
    assert refined["psnr_per_image"]["images"] == 5
    assert merged["seconds_per_image"]["ours"]["encode"] == pytest.approx(1.0)
    assert len(merged["whole_process_768x512"]) == 2

    # without per-image points (runs from before they were stored) the averaged curves are the same
    for p in (pa, pb):
        d = json.loads(p.read_text())
        del d["per_image"]
        p.write_text(json.dumps(d))
    old = rd.merge([pa, pb])
    for c in SETTINGS:
        for p, q in zip(old["curves"][c], one["curves"][c]):
            assert p == pytest.approx(q)
    assert old["bd_rate_vs"]["WEBP"]["psnr"] == pytest.approx(one["bd_rate_vs"]["WEBP"]["psnr"])
    assert old["bd_rate_vs"]["WEBP"]["psnr_per_image"] is None


def test_merge_refuses_overlapping_or_mismatched_runs(rd, tmp_path):
    pa, pb, pc = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    pa.write_text(json.dumps(run_json(rd, fake_rows(1, 2), ["p1", "p2"])))
    pb.write_text(json.dumps(run_json(rd, fake_rows(2, 2), ["p2", "p3"])))
    pc.write_text(json.dumps(run_json(rd, fake_rows(3, 1), ["p9"], model_id="ffff")))
    with pytest.raises(SystemExit, match="more than one run"):
        rd.merge([pa, pb])
    with pytest.raises(SystemExit, match="model_id"):
        rd.merge([pa, pc])
