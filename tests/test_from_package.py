"""Fine-tuning a shipped model: torch networks rebuilt from model packages (`--init PACKAGE`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from aecompress.entropy import TableSet  # noqa: E402
from aecompress.train.conv import HyperpriorCodec  # noqa: E402
from aecompress.train.export import SubpixelDeconv, export_conv_codec  # noqa: E402
from aecompress.train.from_package import codec_from_package, deconv_from_subpixel, denoiser_from_package  # noqa: E402

EARLIER = {"steps": 5, "seconds": 7, "stages": [{"run": "runs/first", "steps": 3, "seconds": 4},
                                                {"run": "runs/second", "steps": 2, "seconds": 3}]}


def _photos(folder, seed: int = 0, count: int = 2, size=(96, 128)):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        # smooth random fields: something a codec can compress, unlike white noise
        small = rng.integers(0, 256, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
        im = np.asarray(Image.fromarray(small).resize((size[1], size[0]), Image.BICUBIC))
        Image.fromarray(im).save(folder / f"{i}.png")
        out.append(im)
    return out


@pytest.fixture(scope="module")
def codec_pkg(tmp_path_factory):
    """A small codec with trained-looking (non-initial) weights, exported as a package."""
    root = tmp_path_factory.mktemp("pkg")
    torch.manual_seed(0)
    codec = HyperpriorCodec(3, 16, 24, 16, 8)
    with torch.no_grad():
        for p in codec.parameters():
            p.add_(0.05 * torch.randn_like(p))
    calib = _photos(root / "imgs")
    export_conv_codec(codec, root / "codec", "tiny", calib, dict(EARLIER))
    return codec.eval(), root / "codec", root / "imgs"


def test_deconv_from_subpixel_inverts_the_export_rewrite():
    torch.manual_seed(1)
    dc = torch.nn.ConvTranspose2d(6, 5, 5, stride=2, padding=2, output_padding=1)
    sp = SubpixelDeconv(dc)
    w, b = deconv_from_subpixel(sp.conv.weight.data, sp.conv.bias.data)
    assert torch.equal(w, dc.weight.data) and torch.equal(b, dc.bias.data)        # a permutation: exact


def test_codec_rebuilt_from_its_package_computes_the_same_function(codec_pkg):
    original, pkg, _ = codec_pkg
    rebuilt, report = codec_from_package(pkg)
    rebuilt.eval()
    assert rebuilt.config == original.config and report["training"]["steps"] == 5
    for part in ("g_a", "h_a"):                                  # ONNX initializers are the state dict
        a, b = getattr(original, part).state_dict(), getattr(rebuilt, part).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(original.log_gain, rebuilt.log_gain) and torch.equal(original.log_inv_gain, rebuilt.log_inv_gain)
    torch.manual_seed(2)
    x = torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        y = original.g_a(x)
        assert torch.allclose(original.g_s(y), rebuilt.g_s(y), atol=1e-5)
        # the hyper-synthesis comes from 12-bit integer weights and 16-bit activations
        z = torch.round(original.h_a(y * torch.exp(original.log_gain[4])[None, :, None, None]))
        want, got = original.h_s(z), rebuilt.h_s(z)
        assert float((want - got).abs().max()) < 0.02 * max(1.0, float(want.abs().max()))
        # the factorized prior is refitted to the shipped tables
        assert report["z_prior_kl_bits"] < 0.02
        radius = 40
        p_orig = original.entropy_bottleneck.pmf_table(radius)
        p_new = rebuilt.entropy_bottleneck.pmf_table(radius)
        assert float((p_orig - p_new).abs().sum(1).max()) < 0.05                   # total variation per channel


def test_the_refitted_prior_matches_the_tables_it_came_from(codec_pkg):
    _, pkg, _ = codec_pkg
    rebuilt, _ = codec_from_package(pkg)
    with np.load(pkg / "tables.npz") as t:
        tables = TableSet.from_arrays({k: t[k] for k in t.files}, "z")
    from aecompress.train.export import factorized_tables

    again = factorized_tables(rebuilt.entropy_bottleneck)
    for c in range(len(tables)):                      # the bits a code costs barely move
        v = np.arange(int(tables.minimum[c]), int(tables.minimum[c] + tables.length[c] - 1))
        v = v[(v >= again.minimum[c]) & (v < again.minimum[c] + again.length[c] - 1)]
        bits_a = tables.bits(v, np.full(len(v), c))
        bits_b = again.bits(v, np.full(len(v), c))
        likely = bits_a < 8
        assert likely.any() and np.abs(bits_a - bits_b)[likely].max() < 0.1


def test_train_conv_init_from_a_package_continues_its_stage_list(codec_pkg, tmp_path):
    from typer.testing import CliRunner

    from aecompress.cli import app
    from aecompress.train.fit_dense import work_dir

    _, pkg, imgs = codec_pkg
    out = tmp_path / "next"
    args = ["train", "conv", "--data", str(imgs), "--out", str(out), "--crop", "64", "--n", "16", "--m", "24",
            "--batch", "2", "--steps", "1", "--lr", "0", "--quiet", "--no-report", "--init", str(pkg)]
    # the package is n=16, m=24 with nh=16, nz=8; the CLI builds nh=64, nz=32: refused in one line
    r = CliRunner().invoke(app, args)
    assert r.exit_code != 0 and "another configuration (nh=16, nz=8)" in r.output + str(r.exception)
    from aecompress.train.fit_conv import ConvConfig, train_conv

    cfg = ConvConfig(data=str(imgs), out=str(work_dir(out)), n=16, m=24, nh=16, nz=8, crop=64, batch=2, steps=1,
                     lr=0.0, init=str(pkg), device="cpu")
    ck_path = train_conv(cfg, log=lambda m: None)
    ck = torch.load(ck_path, weights_only=False)
    rebuilt, _ = codec_from_package(pkg)
    assert all(torch.equal(ck["model"][k], v) for k, v in rebuilt.state_dict().items() if k.startswith("g_s"))
    assert ck["init_package"]["path"] == str(pkg) and ck["device"] == "CPU"
    from aecompress.train.export import export_checkpoint

    export_checkpoint(ck_path, out, "next", _photos(tmp_path / "calib", seed=3))
    training = json.loads((out / "manifest.json").read_text())["training"]
    runs = [s.get("run") for s in training["stages"]]
    assert runs == ["runs/first", "runs/second", str(work_dir(out))]                # the package's stages, then this one
    assert training["steps"] == 3 + 2 + 1


def test_the_shipped_photo_codec_fine_tunes_by_name(tmp_path):
    """`--init photo`: the installed package by name; lr 0 keeps its weights, the stage list goes on."""
    from typer.testing import CliRunner

    from aecompress.cli import app
    from aecompress.package import find_package_dir

    shipped = find_package_dir("photo")
    _photos(tmp_path / "imgs", seed=6, size=(128, 128))
    out = tmp_path / "mine"
    r = CliRunner().invoke(app, ["train", "conv", "--data", str(tmp_path / "imgs"), "--out", str(out), "--init", "photo",
                                 "--steps", "1", "--lr", "0", "--crop", "64", "--batch", "2", "--quiet", "--no-report"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    import onnx
    from onnx import numpy_helper

    def weights(pkg):
        return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(pkg / "synthesis.onnx")).graph.initializer}

    a, b = weights(shipped), weights(out)
    assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-6) for k in a)
    shipped_stages = json.loads((shipped / "manifest.json").read_text())["training"]["stages"]
    stages = json.loads((out / "manifest.json").read_text())["training"]["stages"]
    assert stages[:-1] == shipped_stages and stages[-1]["steps"] == 1 and stages[-1]["init"] == "photo"
    bad = CliRunner().invoke(app, ["train", "conv", "--data", str(tmp_path / "imgs"), "--out", str(tmp_path / "x"),
                                   "--init", "no-such-model", "--steps", "1", "--quiet"])
    assert bad.exit_code != 0 and "no such checkpoint or model package" in bad.output + str(bad.exception)


def test_cuda_asked_for_without_a_gpu_is_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from tests.test_train_cli import run

    _photos(tmp_path / "imgs")
    r = run("train", "conv", "--data", str(tmp_path / "imgs"), "--out", str(tmp_path / "o"), "--steps", "1",
            "--crop", "64", "--n", "16", "--m", "24", "--quiet", "--device", "cuda")
    assert r.returncode != 0 and "torch sees no CUDA GPU" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not list(tmp_path.glob("o*"))


def test_denoiser_fine_tunes_from_a_package_with_batch_workers(tmp_path):
    from aecompress.train import denoiser

    model = denoiser.DenoiseNet((8, 8, 8))
    torch.manual_seed(4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pkg = denoiser.export_package(model, tmp_path / "pkg", training={"steps": 9, "minutes": 1.0, "stages": [
        {"run": "runs/d1", "steps": 9, "minutes": 1.0}], "data": "first photos", "hardware": "first machine"},
        measure=False)
    rebuilt, man = denoiser_from_package(pkg)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values()))
    _photos(tmp_path / "imgs", seed=5, size=(96, 96))
    # lr 0 through two worker processes making the batches: the weights stay the package's
    ck = denoiser.train(tmp_path / "run", minutes=5, batch=2, crop=32, lr=0.0, max_steps=2, data=tmp_path / "imgs",
                        widths=(8, 8, 8), init=pkg, workers=2, device="cpu")
    state = torch.load(ck, weights_only=False)
    assert state["step"] == 2 and state["workers"] == 2 and state["init_package"]["path"] == str(pkg)
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())
    denoiser.main(["export", str(ck), str(tmp_path / "out"), "--no-measure"])
    training = json.loads((tmp_path / "out" / "manifest.json").read_text())["training"]
    assert [s["run"] for s in training["stages"]] == ["runs/d1", str(tmp_path / "run")]
    assert training["steps"] == 11 and training["stages"][-1]["init"] == str(pkg)
    # what the package said of its training is kept, this stage's added after it, and recorded with the stage
    assert training["data"].startswith("first photos; then ") and str(tmp_path / "imgs") in training["data"]
    assert training["hardware"].startswith("first machine; then ")
    assert str(tmp_path / "imgs") in training["stages"][-1]["data"]


def test_prefetched_batches_train_exactly_as_inline_ones(tmp_path):
    """The GPU path cuts the next batch in a thread; the random sequence, hence training, is the same."""
    from aecompress.train.fit_conv import ConvConfig, train_conv

    _photos(tmp_path / "imgs", seed=7, size=(96, 96))
    states = []
    for prefetch in (False, True):
        cfg = ConvConfig(data=str(tmp_path / "imgs"), out=str(tmp_path / f"run{prefetch}"), n=16, m=24, crop=64,
                         batch=2, steps=4, val_every=1000, checkpoint_every=1000, device="cpu", prefetch=prefetch,
                         threads=1)
        states.append(torch.load(train_conv(cfg, log=lambda m: None), weights_only=False)["model"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_psnr_loss_weighs_the_cleaner_crop_up_and_is_recorded(tmp_path):
    from aecompress.train import denoiser

    target = torch.zeros(2, 3, 8, 8)
    grads = {}
    for loss in denoiser.LOSSES:
        y = torch.stack([torch.full((3, 8, 8), 0.01), torch.full((3, 8, 8), 0.1)]).requires_grad_()
        objective, mse = denoiser.training_objective(y, target, loss)
        objective.backward()
        assert mse.item() == pytest.approx((0.01 ** 2 + 0.1 ** 2) / 2)
        grads[loss] = y.grad.abs().flatten(1).mean(1)
    # pooled MSE: the gradient follows the error (10x for the noisier crop); psnr: 1 / (MSE + eps) reverses it
    assert grads["mse"][1] / grads["mse"][0] == pytest.approx(10, rel=1e-4)
    assert grads["psnr"][0] > 4 * grads["psnr"][1]
    with pytest.raises(ValueError, match="--loss"):
        denoiser.train(tmp_path / "bad", minutes=1, loss="l1")
    _photos(tmp_path / "imgs", seed=6, size=(64, 64))
    ck = denoiser.train(tmp_path / "run", minutes=5, batch=2, crop=32, max_steps=2, data=tmp_path / "imgs",
                        widths=(8, 8, 8), device="cpu", loss="psnr")
    assert torch.load(ck, weights_only=False)["loss"] == "psnr"
    denoiser.main(["export", str(ck), str(tmp_path / "out"), "--no-measure"])
    assert "psnr" in json.loads((tmp_path / "out" / "manifest.json").read_text())["training"]["loss"]
