"""Dense autoencoders: each variant's effect, PCA equivalence, export, resume, bad input.

Uses small subsets of ../shared/data/mnist5k (written out as PNG folders in a temporary directory)
and tiny networks trained for a few hundred steps, so the whole file runs in well under a minute.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from aecompress.errors import AecError  # noqa: E402
from aecompress.train import dense as D  # noqa: E402
from aecompress.train import fit_dense as F  # noqa: E402

MNIST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist5k" / "mnist_5k.csv.gz"


@functools.lru_cache(maxsize=1)
def _mnist_rows() -> np.ndarray:
    with gzip.open(MNIST, "rt") as f:
        return np.loadtxt(f, delimiter=",", dtype=np.int64)


def read_mnist(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n digits of all classes (the file is sorted by label: take evenly spaced rows)."""
    if not MNIST.exists():
        pytest.skip("../shared/data/mnist5k is not available")
    rows = _mnist_rows()
    rows = rows[np.linspace(0, len(rows) - 1, n).astype(int)]
    return rows[:, :784].reshape(-1, 28, 28).astype(np.uint8), rows[:, 784]


def write_digits(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    for i, (im, lab) in enumerate(zip(images, labels)):
        (root / str(lab)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(im, "L").save(root / str(lab) / f"{i:05d}.png")
    return root


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    images, labels = read_mnist(1200)
    return write_digits(tmp_path_factory.mktemp("digits"), images, labels)


@pytest.fixture(scope="module")
def digits500(tmp_path_factory) -> Path:
    images, labels = read_mnist(500)
    return write_digits(tmp_path_factory.mktemp("digits500"), images, labels)


def small(data: Path, out: Path, **kw) -> F.DenseTrainConfig:
    base = dict(data=str(data), out=str(out), latent=8, hidden=(64,), steps=150, batch=64, lr=3e-3,
                patience=0, eb_steps=20, val_split=0.2)
    base.update(kw)
    return F.DenseTrainConfig(**base)


def quiet(cfg, **kw):
    return F.train_dense(cfg, progress=False, log=lambda *a: None, **kw)


@pytest.fixture(scope="module")
def baseline(digits500, tmp_path_factory):
    """A plain rate-free model the variants are compared with."""
    return quiet(small(digits500, tmp_path_factory.mktemp("base") / "ref", rate=0, steps=150))


def mean_abs_code(r) -> float:
    with torch.no_grad():
        return float(r.model.eval().encode(F.to_tensor(r.val_images))["code"].abs().mean())


def masked_mse(model, x: torch.Tensor, rate: float, seed: int = 5) -> float:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(x.shape, generator=g) >= rate).float()
    with torch.no_grad():
        return float(((model.decode(model.encode(x * mask)["code"]).clamp(0, 1) - x) ** 2).mean())


# -- PCA ------------------------------------------------------------------------------------------
def test_linear_autoencoder_matches_pca(digits, tmp_path):
    n = 8
    cfg = F.DenseTrainConfig(data=str(digits), out=str(tmp_path / "lin"), linear=True, hidden=(), latent=n, rate=0,
                             steps=400, lr=1e-2, batch=256, val_split=1 / 3, patience=0, eb_steps=50)
    r = quiet(cfg)
    assert r.model_cfg.output == "linear" and r.model_cfg.linear
    tr = r.train_images.reshape(len(r.train_images), -1) / 255.0
    va = r.val_images.reshape(len(r.val_images), -1) / 255.0
    mu = tr.mean(0)
    _, _, vt = np.linalg.svd(tr - mu, full_matrices=False)
    p = vt[:n]
    pca = float((((va - mu) @ p.T @ p + mu - va) ** 2).mean())
    x = F.to_tensor(r.val_images)
    with torch.no_grad():
        ae = float(((r.model.decode(r.model.encode(x)["code"]) - x) ** 2).mean())
    assert ae <= 1.05 * pca, (ae, pca)
    # the decoder spans the PCA subspace: its columns have almost no energy outside it
    w = r.model.dec[0].weight.detach().double().numpy()          # (784, n)
    outside = w - p.T @ (p @ w)
    assert np.linalg.norm(outside) / np.linalg.norm(w) < 0.15


# -- structure of the variants --------------------------------------------------------------------
def test_variants_change_the_network():
    base = D.DenseConfig(1, 28, 28, latent=16, hidden=(300, 150))
    plain = D.DenseAE(base)
    assert [m.out_features for m in plain.enc] == [300, 150, 16]
    assert [m.out_features for m in plain.dec] == [150, 300, 784]

    tied = D.DenseAE(D.DenseConfig(1, 28, 28, latent=16, hidden=(300, 150), tied=True))
    assert tied.dec is None
    n_plain = sum(p.numel() for p in plain.parameters())
    n_tied = sum(p.numel() for p in tied.parameters())
    assert n_plain - n_tied == 784 * 300 + 300 * 150 + 150 * 16
    assert tied.dec_weight(0).data_ptr() == tied.enc[2].weight.data_ptr()      # the same storage, transposed
    assert torch.equal(tied.dec_weight(2), tied.enc[0].weight.t())

    bn = D.DenseAE(D.DenseConfig(1, 28, 28, latent=16, hidden=(300, 150), batchnorm=True))
    assert len(bn.enc_bn) == 2 and len(bn.dec_bn) == 2

    vae = D.DenseAE(D.DenseConfig(1, 28, 28, latent=16, hidden=(64,), variational=True))
    out = vae.encode(torch.rand(4, 1, 28, 28))
    assert set(out) >= {"mu", "logvar", "code"}

    lin = D.DenseAE(D.DenseConfig(1, 28, 28, latent=4, hidden=(32,), linear=True, output="linear"))
    x = torch.rand(3, 1, 28, 28)
    # no activations: the whole autoencoder is an affine map
    a, b = lin.decode(lin.encode(x)["code"]), lin.decode(lin.encode(2 * x)["code"])
    c0 = lin.decode(lin.encode(torch.zeros_like(x))["code"])
    assert torch.allclose(b - c0, 2 * (a - c0), atol=1e-5)

    relu = D.DenseAE(D.DenseConfig(1, 28, 28, latent=4, hidden=(32,), activation="relu"))
    assert relu.act(torch.tensor([-1.0])).item() == 0.0
    elu = D.DenseAE(D.DenseConfig(1, 28, 28, latent=4, hidden=(32,), activation="elu"))
    assert elu.act(torch.tensor([-1.0])).item() < 0.0
    # He initialisation: weight variance 2 / fan_in
    assert abs(float(plain.enc[0].weight.detach().var()) * 784 / 2 - 1) < 0.1


def test_ms_ssim_loss_agrees_with_metrics():
    from aecompress.metrics import ms_ssim as np_ms_ssim

    images, _ = read_mnist(4)
    a = images[:, :, :, None]
    rng = np.random.default_rng(0)
    b = np.clip(a.astype(np.int64) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    ta, tb = F.to_tensor(a), F.to_tensor(b)
    got = D.ms_ssim(ta, tb).numpy()
    want = np.array([np_ms_ssim(x, y) for x, y in zip(a, b)])
    assert np.allclose(got, want, atol=0.02), (got, want)


# -- effects of the objectives --------------------------------------------------------------------
def test_sparse_kl_reaches_target_activation(digits500, tmp_path):
    r = quiet(small(digits500, tmp_path / "kl", sparse="kl:0.05:1.0", rate=0, steps=250))
    assert r.model_cfg.code == "sigmoid"
    assert r.stats["mean_activation"] < 0.1 and r.stats["sparse_target"] == 0.05
    free = quiet(small(digits500, tmp_path / "kl0", sparse="kl:0.05:0", rate=0, steps=250))
    assert free.stats["mean_activation"] > 2 * r.stats["mean_activation"]
    # the sigmoid code is quantized on a 2^4-level grid
    assert torch.allclose(r.model.gain, torch.full((8,), 15.0))


def test_sparse_l1_shrinks_codes(digits500, tmp_path, baseline):
    a = quiet(small(digits500, tmp_path / "l1", sparse="l1:0.05", rate=0))
    assert a.stats["mean_activation"] < 0.5 * mean_abs_code(baseline)


def test_denoising_noise_helps_on_corrupted_input(digits500, tmp_path, baseline):
    den = quiet(small(digits500, tmp_path / "den", noise="mask:0.5", rate=0))
    ref = baseline
    x = F.to_tensor(den.val_images)
    d, r = den.model.eval(), ref.model.eval()
    assert masked_mse(d, x, 0.5) < 0.95 * masked_mse(r, x, 0.5)
    # masking half the pixels hurts the plain model and not the denoising one
    harm_den = masked_mse(d, x, 0.5) - masked_mse(d, x, 0.0)
    harm_ref = masked_mse(r, x, 0.5) - masked_mse(r, x, 0.0)
    assert harm_ref > 0.003 and harm_den < 0.3 * harm_ref
    with pytest.raises(AecError, match="gaussian:STD"):
        F.parse_noise("salt:0.3")
    torch.manual_seed(0)
    g = F.corrupt(torch.full((1000,), 0.5), ("gaussian", 0.1))
    assert 0.08 < float(g.std()) < 0.12


def test_contractive_penalty_shrinks_jacobian(digits500, tmp_path, baseline):
    c = quiet(small(digits500, tmp_path / "cae", contractive=0.1, rate=0))
    ref = baseline
    assert c.stats["jacobian_frobenius_sq"] < 0.5 * ref.stats["jacobian_frobenius_sq"]
    # the Hutchinson estimate used in training agrees with the exact norm
    torch.manual_seed(0)
    x = F.to_tensor(ref.val_images[:64])
    exact = float(D.jacobian_frobenius(ref.model, x, probes=8, create_graph=False))
    est = float(D.jacobian_frobenius(ref.model, x, probes=64, create_graph=False))
    assert abs(est - exact) / exact < 0.25


def test_greedy_pretraining_gives_a_working_stack(digits500, tmp_path):
    r = quiet(small(digits500, tmp_path / "greedy", hidden=(64, 32), greedy=True, greedy_steps=150, steps=30, rate=0))
    layers = [g for g in r.greedy_history if "layer" in g]
    assert [(g["inputs"], g["units"]) for g in layers] == [(784, 64), (64, 32), (32, 8)]
    after = next(g["after_pretraining"] for g in r.greedy_history if "after_pretraining" in g)
    torch.manual_seed(0)
    fresh = D.DenseAE(r.model_cfg)
    fresh.init_output_bias(F.to_tensor(r.train_images).mean(0))
    rand = F.evaluate(fresh, r.obj, F.to_tensor(r.val_images), quantized=False)
    assert after["mse"] < 0.8 * rand["mse"]
    assert r.history[-1]["val_psnr"] >= after["psnr"] - 0.5


def test_greedy_pretraining_with_batchnorm_fine_tunes_the_pretrained_stack():
    """The greedy phase pretrains without BatchNorm; fine-tuning (train mode, batch statistics) must
    start from the stack it pretrained, not one whose BatchNorm standardises every layer's activations
    (that changed the code of a batch by ~70%: the layers above saw inputs they were not trained on)."""
    images, _ = read_mnist(300)
    x = F.to_tensor(images[:, :, :, None])
    models = {}
    for bn in (False, True):
        torch.manual_seed(0)
        m = D.DenseAE(D.DenseConfig(1, 28, 28, latent=8, hidden=(64, 32), batchnorm=bn))
        m.init_output_bias(x.mean(0))
        F.greedy_pretrain(m, x, 60, 64, 3e-3, 0)
        models[bn] = m
    ref, bn = models[False].eval(), models[True]
    batch = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:128]]
    with torch.no_grad():
        code = ref.encode(batch)["code"]
        assert torch.allclose(bn.eval().encode(batch)["code"], code, atol=1e-4)       # eval mode: the same stack
        train_code = bn.train().encode(batch)["code"]
    assert float((train_code - code).norm() / code.norm()) < 0.3


def test_greedy_with_noise_pretrains_stacked_denoising_autoencoders():
    """--greedy --noise: every layer of the greedy phase is a denoising autoencoder (Vincent et al.
    2010), so the pretrained stack restores masked digits better than one pretrained on clean ones
    (the greedy phase ignored --noise: only the fine-tuning was denoising)."""
    images, _ = read_mnist(500)
    x = F.to_tensor(images[:, :, :, None])
    masked = F.corrupt(x.flatten(1), ("mask", 0.5), torch.Generator().manual_seed(1))
    err = {}
    for noise in ((), ("mask", 0.5)):
        torch.manual_seed(0)
        m = D.DenseAE(D.DenseConfig(1, 28, 28, latent=16, hidden=(64,)))
        m.init_output_bias(x.mean(0))
        F.greedy_pretrain(m, x, 300, 64, 3e-3, 0, noise=noise)
        with torch.no_grad():
            rec = m.eval().decode(m.encode(masked.reshape(x.shape))["code"])
        err[noise] = float(((rec.reshape(x.shape) - x) ** 2).mean())
    assert err[("mask", 0.5)] < 0.9 * err[()], err


def test_variational_codes_the_mean(digits500, tmp_path):
    r = quiet(small(digits500, tmp_path / "vae", variational=True, beta=1.0, steps=200, loss="bce"))
    assert r.obj.rate == 0 and r.model_cfg.variational
    assert 0 < r.stats["active_dims"] <= 8
    # quantization step = mean posterior std of each dimension
    with torch.no_grad():
        enc = r.model.encode(F.to_tensor(r.train_images[:400]))
        step = torch.exp(0.5 * enc["logvar"]).mean(0)
    assert torch.allclose(1 / r.model.gain, step, rtol=0.2)


def test_batchnorm_and_losses_train(digits500, tmp_path):
    for kw in ({"batchnorm": True, "loss": "ms-ssim"}, {"loss": "bce", "tied": True}):
        r = quiet(small(digits500, tmp_path / "v", steps=40, **kw))
        assert np.isfinite(r.history[-1]["val_loss"])
    with pytest.raises(AecError, match="sigmoid output"):
        quiet(small(digits500, tmp_path / "v", loss="bce", linear=True))


def test_weight_decay_shrinks_weights(digits500, tmp_path, baseline):
    a = quiet(small(digits500, tmp_path / "wd", weight_decay=0.05, rate=0))
    assert a.model.enc[0].weight.norm() < 0.8 * baseline.model.enc[0].weight.norm()


# -- codec, export, runtime -----------------------------------------------------------------------
def test_rate_term_trades_size_for_quality(digits500, tmp_path):
    lo = quiet(small(digits500, tmp_path / "lo", rate=0.002, steps=150))
    hi = quiet(small(digits500, tmp_path / "hi", rate=2.0, steps=150))
    assert hi.stats["val"]["bits"] < 0.6 * lo.stats["val"]["bits"]
    assert hi.stats["val"]["psnr"] < lo.stats["val"]["psnr"]


def test_export_package_codes_digits(digits500, tmp_path):
    from aecompress.codec import Codec
    from aecompress.package import load_package
    from aecompress.train.export_dense import export_dense_codec, training_summary

    r = quiet(small(digits500, tmp_path / "pkg", steps=200, eb_steps=150))
    out = export_dense_codec(r.model, tmp_path / "pkg", "digits-test", r.val_images[:8], training_summary(r),
                             measure=r.val_images)
    m = json.loads((out / "manifest.json").read_text())
    assert m["codec"] == "factorized" and m["input_size"] == [28, 28] and m["latent_shape"] == [8]
    assert m["measured"]["mean_file_bytes"] < 60
    hw = m["training"]["hardware"]                  # one wording for every kind (aecompress.train.hardware)
    assert hw.startswith("CPU; ") and "cores" in hw and "torch thread(s)" in hw and "; torch 2." in hw
    codec = Codec(load_package(out))
    im = r.val_images[0]
    data, st = codec.code(codec.analyse(im), 0, "L")
    rec, header = codec.decode(data)
    assert np.array_equal(rec, codec.reconstruct(st, 28, 28))
    assert len(data) < 60
    # the runtime reconstruction matches torch on the quantized code
    with torch.no_grad():
        x = F.to_tensor(im[None])
        ref = (r.model.reconstruct(x)[0, 0].numpy() * 255).round()
    assert np.abs(ref - rec[:, :, 0].astype(float)).max() <= 1
    with pytest.raises(AecError, match="28x28"):
        codec.analyse(np.zeros((30, 30, 1), np.uint8))


def test_rate_free_model_gets_calibrated_gain(digits500, tmp_path):
    from aecompress.train.export_dense import export_dense_codec, training_summary

    r = quiet(small(digits500, tmp_path / "cal", rate=0, quant_step=0.1, eb_steps=300))
    std = r.model.encode(F.to_tensor(r.train_images))["code"].detach().std(0)
    assert torch.allclose(r.model.gain * std * 0.1, torch.ones(8), rtol=0.05)
    out = export_dense_codec(r.model, tmp_path / "cal", "cal", r.val_images[:8], training_summary(r), measure=r.val_images)
    with np.load(out / "tables.npz") as t:
        assert t["log_gain"].shape == (1, 8)
        assert np.allclose(t["log_gain"], -t["log_inv_gain"])
    m = json.loads((out / "manifest.json").read_text())["measured"]
    assert m["mean_psnr"] > r.stats["val"]["psnr"] - 1.0


# -- training loop ---------------------------------------------------------------------------------
def test_seeded_and_resumable(digits500, tmp_path):
    a = quiet(small(digits500, tmp_path / "a", steps=60, checkpoint_every=1000))
    b = quiet(small(digits500, tmp_path / "b", steps=60, checkpoint_every=1000), stop_at=25)
    assert b.steps == 25 and (tmp_path / "b.work" / "checkpoint.pt").exists()
    b = F.train_dense(small(digits500, tmp_path / "b", steps=60, checkpoint_every=1000), resume=True,
                      progress=False, log=lambda *x: None)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.allclose(va.float(), vb.float(), atol=1e-6), k
    assert [h["step"] for h in a.history] == [h["step"] for h in b.history]


def test_resume_refuses_other_architecture(digits500, tmp_path):
    out = tmp_path / "m"
    quiet(small(digits500, out, steps=5))
    with pytest.raises(AecError, match="another dense architecture"):
        F.train_dense(small(digits500, out, steps=10, latent=16), resume=True, progress=False, log=lambda *a: None)
    (tmp_path / "c.work").mkdir()
    torch.save({"arch": "conv", "model_config": {}}, tmp_path / "c.work" / "checkpoint.pt")
    with pytest.raises(AecError, match="conv model, not dense"):
        F.train_dense(small(digits500, tmp_path / "c"), resume=True, progress=False, log=lambda *a: None)
    with pytest.raises(AecError, match="nothing to resume"):
        F.train_dense(small(digits500, tmp_path / "none"), resume=True, progress=False, log=lambda *a: None)


def test_early_stop_keeps_best(digits500, tmp_path):
    r = quiet(small(digits500, tmp_path / "es", steps=400, lr=0.05, val_every=10, patience=2))
    assert r.stats["stopped_early"] and r.steps < 400
    assert r.stats["best_step"] <= r.steps


def test_bad_input(tmp_path, digits500, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AecError, match="no images found"):
        quiet(small(empty, tmp_path / "o"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"not a png")
    with pytest.raises(AecError, match="no readable images.*1 files skipped"):
        quiet(small(bad, tmp_path / "o"))
    # unreadable files among good ones are skipped and counted
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    images, labels = read_mnist(40)
    write_digits(mixed, images, labels)
    (mixed / "broken.png").write_bytes(b"\x89PNG garbage")
    r = quiet(small(mixed, tmp_path / "o", steps=3, eb_steps=3))
    assert len(r.skipped) == 1 and len(r.train_images) + len(r.val_images) == 40
    # a wrong size
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(mixed / "big.png")
    with pytest.raises(AecError, match="1 of 41 are not 28x28.*--size 28x28"):
        quiet(small(mixed, tmp_path / "o"))
    r = quiet(small(mixed, tmp_path / "o", size=(28, 28), steps=2, eb_steps=2))
    assert len(r.train_images) + len(r.val_images) == 41
    # NaN loss: a one-line error, no package
    real = F.objective

    def nan_objective(*a, **k):
        out = real(*a, **k)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(F, "objective", nan_objective)
    with pytest.raises(AecError, match="diverged.*lower --lr"):
        quiet(small(digits500, tmp_path / "nan"))
    assert not (tmp_path / "nan").exists()


def test_a_one_rate_model_says_that_quality_options_change_nothing(digits500, tmp_path):
    """A dense codec has one rate: `-q 40` gave the same file as the default, silently."""
    import subprocess
    import sys

    from aecompress.train.export_dense import export_dense_codec, training_summary

    r = quiet(small(digits500, tmp_path / "run", steps=30))
    export_dense_codec(r.model, tmp_path / "one", "one", r.val_images[:8], training_summary(r))
    img = next((digits500 / "3").iterdir())
    outs = []
    for args in ([], ["-q", "40"]):
        out = tmp_path / f"d{len(args)}.aez"
        r = subprocess.run([sys.executable, "-m", "aecompress", "encode", str(img), "-m", str(tmp_path / "one"),
                            "-o", str(out), *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        outs.append((out.read_bytes(), r.stdout))
    assert outs[0][0] == outs[1][0]
    assert "codes at one rate" in outs[1][1] and "codes at one rate" not in outs[0][1]


def test_training_data_leaves_out_packages_checkpoints_and_hidden_files(tmp_path):
    """--out inside --data: a second run (--force) trained on the first one's report images (a
    conv run said 11 training images where there were 9; a dense one failed on curves.png)."""
    from aecompress.train.data import find_images

    for rel in ("a.png", "sub/b.png", "model/report/curves.png", "model.work/peek.png", ".hidden/c.png", ".d.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8)).save(tmp_path / rel)
    (tmp_path / "model" / "manifest.json").write_text("{}")
    (tmp_path / "model.work" / "checkpoint.pt").write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)] == ["a.png", "sub/b.png"]
