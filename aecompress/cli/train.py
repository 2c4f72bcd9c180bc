"""`aecompress train`, `embed` and `score`.

`train` needs the `train` extra (torch, onnx, onnxscript, matplotlib), imported only when it runs;
`embed` and `score` use the torch-free runtime.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

from . import app
from .common import bad_value, to_json, usage_error
from ..errors import AecError, extra_hint

TRAIN_EXTRA = extra_hint("train")
# a denoiser's default peak learning rate when fine-tuning (--init): the from-scratch 1e-3 undid much of
# the shipped model's training (a 1-minute run on 6 photos: -0.9 dB at sigma 15 against -0.2 at 1e-4)
INIT_LR = 1e-4

# dense-only options and their defaults (used to refuse them for `train conv`)
_DENSE_DEFAULTS = {"latent": 32, "hidden": "512,256", "activation": "elu", "linear": False, "tied": False,
                   "greedy": False, "sparse": "", "noise": "", "contractive": 0.0, "variational": False,
                   "beta": 1.0, "batchnorm": False, "output": None, "loss": "mse", "weight_decay": 0.0,
                   "rate": None, "size": None, "epochs": None, "val_split": 0.1, "patience": 10,
                   "greedy_steps": None, "quant_step": 0.1, "quant_bits": 4, "val_every": None}


def _need_torch():
    """Training needs the train extra; the rest of the CLI never imports torch or onnx."""
    import importlib

    try:
        for name in ("torch", "onnx"):
            importlib.import_module(name)
    except ImportError as exc:
        raise AecError(f"training needs {exc.name}: {TRAIN_EXTRA}") from None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise AecError(f"training reports need matplotlib: {TRAIN_EXTRA}") from None


def _parse_size(s: Optional[str]) -> Optional[tuple[int, int]]:
    if not s:
        return None
    try:
        w, h = (int(v) for v in s.lower().split("x"))
        if w < 1 or h < 1:
            raise ValueError
    except ValueError:
        raise bad_value("--size", f"'{s}': use WIDTHxHEIGHT, e.g. 28x28") from None
    return (h, w)


def _parse_hidden(s: str) -> tuple[int, ...]:
    if not s.strip() or s.strip() == "none":
        return ()
    try:
        hidden = tuple(int(v) for v in s.split(","))
    except ValueError:
        raise bad_value("--hidden", f"'{s}': use comma-separated layer widths, e.g. 300,150 (or none)") from None
    if any(h < 1 for h in hidden):
        raise bad_value("--hidden", "layer widths must be positive")
    return hidden


@app.command("train")
def train_cmd(
    arch: str = typer.Argument(..., help="conv (any image size, rate-distortion hyperprior codec), dense "
                                         "(fixed-size images, stack of dense layers) or denoise (a blind "
                                         "denoiser for `aecompress denoise`)"),
    data: Path = typer.Option(..., "--data", help="folder of training images (searched recursively; "
                                                  "sub-folder names are labels in a report)"),
    out: Path = typer.Option(..., "--out", "-o", help="model package folder to write (conv, dense: report in "
                                                      "OUT/report/; checkpoint in OUT.work/)"),
    name: Optional[str] = typer.Option(None, help="model name in the manifest (default: the folder name)"),
    description: str = typer.Option("", help="one-line description for the manifest"),
    mode: str = typer.Option("auto", help="auto, L (greyscale) or RGB"),
    steps: Optional[int] = typer.Option(None, min=1, help="training steps (conv default 20000; dense: see --epochs; "
                                                          "denoise: a cap; the learning rate's schedule spans --minutes)"),
    epochs: Optional[int] = typer.Option(None, min=1, help="dense: passes over the training images (default 30)"),
    batch: Optional[int] = typer.Option(None, min=1, help="batch size (conv 4, dense 128, denoise 16)"),
    lr: Optional[float] = typer.Option(None, help="peak learning rate (conv 2e-4, dense 2e-3, denoise 1e-3, "
                                                  "denoise --init 1e-4)"),
    seed: int = typer.Option(0, help="random seed (training is reproducible for a given seed)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the checkpoint in OUT.work/"),
    init: Optional[Path] = typer.Option(None, "--init", help="conv, denoise: fine-tune from this checkpoint's or model "
                                                             "package's weights (a folder or an installed name, "
                                                             "e.g. photo; fresh optimizer and schedule)"),
    device: str = typer.Option("auto", "--device", help="conv, denoise: auto (CUDA when torch sees a GPU), cpu or cuda"),
    checkpoint_every: Optional[int] = typer.Option(None, min=1, help="steps between checkpoints (conv 250, dense 500)"),
    val: Optional[Path] = typer.Option(None, help="conv: folder of validation images (default: 5% of --data); "
                                                  "denoise: photos to measure the package on (default: 4 training "
                                                  "photos)"),
    val_split: float = typer.Option(0.1, min=0.0, max=0.9, help="dense: share of the images held out for validation"),
    patience: int = typer.Option(10, min=0, help="dense: stop after this many validations without improvement (0: never)"),
    threads: Optional[int] = typer.Option(None, min=1, help="torch CPU threads (dense default 1, denoise: all "
                                                             "cores)"),
    minutes: Optional[float] = typer.Option(None, help="conv: wall-clock budget; denoise: the budget the learning "
                                                         "rate's cosine schedule spans (default 10)"),
    crop: Optional[int] = typer.Option(None, min=8, help="conv: training crop size, a multiple of 64 (default 192; "
                                                          "192 or more: see docs/training.md); denoise: a multiple "
                                                          "of 8 (default 80)"),
    n: int = typer.Option(64, min=1, help="conv: channels of the transforms"),
    m: int = typer.Option(128, min=1, help="conv: latent channels"),
    bf16: bool = typer.Option(False, "--bf16", help="conv, denoise: bfloat16 mixed precision until the final 15% of the "
                                                    "schedule (about 1.8x faster on CPUs with AVX512-BF16)"),
    whole_every: int = typer.Option(5000, min=0, help="conv --init: steps between whole-photo checks against the starting "
                                               "weights (0: at the end only); the best weights are exported"),
    latent: int = typer.Option(32, min=1, help="dense: code units (undercomplete autoencoder)"),
    hidden: str = typer.Option("512,256", help="dense: hidden layer widths, mirrored in the decoder, or none"),
    activation: str = typer.Option("elu", help="dense: elu or relu (He initialisation)"),
    linear: bool = typer.Option(False, "--linear", help="dense: no activations at all (learns the PCA subspace)"),
    tied: bool = typer.Option(False, "--tied", help="dense: decoder uses the encoder's transposed weights"),
    greedy: bool = typer.Option(False, "--greedy", help="dense: greedy layer-wise pretraining, then fine-tuning"),
    sparse: str = typer.Option("", help="dense: l1:WEIGHT or kl:TARGET:WEIGHT (sigmoid code)"),
    noise: str = typer.Option("", help="dense: denoising: gaussian:STD or mask:RATE (the target stays clean)"),
    contractive: float = typer.Option(0.0, min=0.0, help="dense: weight of the encoder Jacobian's squared Frobenius norm"),
    variational: bool = typer.Option(False, "--variational", help="dense: variational autoencoder (codes the mean)"),
    beta: float = typer.Option(1.0, min=0.0, help="dense: weight of the VAE's KL term"),
    batchnorm: bool = typer.Option(False, "--batchnorm", help="dense: batch normalisation after hidden layers"),
    output: Optional[str] = typer.Option(None, help="dense: output units, sigmoid (default) or linear"),
    loss: str = typer.Option("mse", help="dense: mse, bce or ms-ssim"),
    weight_decay: float = typer.Option(0.0, min=0.0, help="dense: L2 weight decay of the layer weights"),
    rate: Optional[float] = typer.Option(None, min=0.0, help="dense: lambda of the rate term, loss = distortion + lambda * "
                                                   "bits/pixel (default 0.02; 0: classic autoencoder, quantization "
                                                   "calibrated after training)"),
    size: Optional[str] = typer.Option(None, help="dense: resize every image to WIDTHxHEIGHT"),
    greedy_steps: Optional[int] = typer.Option(None, min=1, help="dense: pretraining steps per layer (default: steps / 4)"),
    quant_step: float = typer.Option(0.1, help="dense, rate 0: quantization step in standard deviations of each "
                                               "code unit"),
    quant_bits: int = typer.Option(4, min=1, max=8, help="dense, sigmoid (KL-sparse) code: 2^BITS levels on [0, 1]"),
    val_every: Optional[int] = typer.Option(None, min=1, help="dense: steps between validations (default: one epoch)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar or step lines (the final 'wrote OUT' stays)"),
    no_report: bool = typer.Option(False, "--no-report", help="conv, dense: skip the training report (OUT/report/; "
                                                              "a denoiser has none)"),
    force: bool = typer.Option(False, "--force", "-f", help="replace an existing package at OUT, or start over "
                                                            "where OUT.work/ holds an interrupted run"),
) -> None:
    """Train a codec on a folder of images and export it as a model package."""
    if arch not in ("conv", "dense", "denoise"):
        raise bad_value("ARCH", f"unknown architecture '{arch}' (choose conv, dense or denoise)")
    _need_torch()
    report = not no_report
    if mode not in ("auto", "L", "RGB"):
        raise bad_value("--mode", f"must be auto, L or RGB, not '{mode}'")
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").exists())):
        raise AecError(f"--out {out} exists and is not a model package (it would be replaced): choose another folder")
    if (out / "manifest.json").exists() and not force:
        raise AecError(f"--out {out} is a model package already (files made with it need it): "
                       "use --force to replace it, or choose another folder")
    if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
        raise bad_value("--minutes", f"must be positive and finite, not {minutes:g}")
    if lr is not None and not (math.isfinite(lr) and lr >= 0):
        raise bad_value("--lr", f"must be a finite number, positive (or 0 to train nothing), not {lr:g}")
    if arch == "conv" and crop is not None and crop % 64:
        raise bad_value("--crop", f"must be a multiple of 64 (the hyper-latent is at 1/64 resolution), not {crop}")
    if arch == "denoise" and crop is not None and crop % 8:
        raise bad_value("--crop", f"must be a multiple of 8 for a denoiser (its UNet halves the size three times), not {crop}")
    from ..train.fit_dense import work_dir

    wdir = work_dir(out)
    if wdir.exists() and not wdir.is_dir():
        raise AecError(f"{wdir} is a file: the training run keeps its checkpoint in that folder")
    if not resume and (wdir / "checkpoint.pt").exists() and not force:
        raise AecError(f"{wdir / 'checkpoint.pt'} holds an interrupted run: --resume to continue it, "
                       "or --force to start over")
    if val is not None:
        _check_val(Path(val))
    with _training_output(out, wdir), _interrupt_message(wdir):
        name = name or out.name
        say = (lambda msg: print(msg, file=sys.stderr))             # results: the package, its report
        log = (lambda *a, **k: None) if quiet else say              # progress: left out with --quiet
        if arch in ("conv", "denoise"):
            given = {"latent": latent, "hidden": hidden, "activation": activation, "linear": linear, "tied": tied,
                     "greedy": greedy, "sparse": sparse, "noise": noise, "contractive": contractive,
                     "variational": variational, "beta": beta, "batchnorm": batchnorm, "output": output, "loss": loss,
                     "weight_decay": weight_decay, "rate": rate, "size": size, "epochs": epochs,
                     "val_split": val_split, "patience": patience, "greedy_steps": greedy_steps,
                     "quant_step": quant_step, "quant_bits": quant_bits, "val_every": val_every}
            bad = [k for k, v in given.items() if v != _DENSE_DEFAULTS[k]]
            if bad:
                raise usage_error(f"--{bad[0].replace('_', '-')} applies to dense models only")
        if arch == "denoise":
            conv_only = {"--n": n != 64, "--m": m != 128, "--whole-every": whole_every != 5000,
                         "--checkpoint-every": checkpoint_every is not None, "--mode": mode != "auto"}
            bad = [k for k, v in conv_only.items() if v]
            if bad:
                raise usage_error(f"{bad[0]} does not apply to denoisers")
            _train_denoiser(data, out, name, steps, minutes, batch, crop, lr, seed, resume, init, device, threads, bf16,
                            val, quiet, say, description)
            return
        if arch == "conv":
            _train_conv(data, out, name, description, mode, steps, batch, lr, seed, resume, checkpoint_every, val,
                        threads, minutes, crop, n, m, quiet, report, log, init, bf16, whole_every, device, say)
            return
        if device != "auto":
            raise usage_error("--device applies to conv models only (dense models use CUDA when torch sees a GPU)")
        if init is not None:
            raise usage_error("--init applies to conv models only")
        if bf16:
            raise usage_error("--bf16 applies to conv models only")
        if val is not None or minutes is not None:
            raise usage_error(f"--{'val' if val is not None else 'minutes'} applies to conv models only "
                           "(dense models use --val-split and --steps/--epochs)")
        from ..train.fit_dense import DenseTrainConfig, train_dense

        cfg = DenseTrainConfig(
            data=str(data), out=str(out), mode=mode, size=_parse_size(size), latent=latent, hidden=_parse_hidden(hidden),
            activation=activation, linear=linear, tied=tied, batchnorm=batchnorm, output=output,
            variational=variational, beta=beta, loss=loss, rate=rate, sparse=sparse, noise=noise,
            contractive=contractive, weight_decay=weight_decay, greedy=greedy, steps=steps, epochs=epochs,
            batch=batch or 128, lr=2e-3 if lr is None else lr, seed=seed, val_split=val_split, patience=patience,
            checkpoint_every=checkpoint_every or 500, threads=threads, greedy_steps=greedy_steps,
            quant_step=quant_step, quant_bits=quant_bits, val_every=val_every)
        if latent < 1:
            raise bad_value("--latent", "must be at least 1")
        _check_dense_numbers({"--beta": beta, "--contractive": contractive, "--rate": rate,
                              "--weight-decay": weight_decay, "--val-split": val_split, "--quant-step": quant_step})
        _check_dense_choices(activation, output, loss, sparse, noise)
        result = train_dense(cfg, resume=resume, progress=not quiet, log=log)
        export_and_report_dense(result, out, name, description, report, say)


@contextmanager
def _training_output(out: Path, wdir: Path):
    """A file-system failure while training or exporting is one line naming the path; a failed run
    leaves no empty OUT.work/ behind."""
    try:
        yield
    except OSError as exc:
        raise AecError(f"cannot write {exc.filename or out}: {exc.strerror or exc}") from None
    finally:
        try:
            wdir.rmdir()                      # only when empty
        except OSError:
            pass


@contextmanager
def _interrupt_message(wdir: Path):
    """Ctrl-C or `kill` while training: one line saying whether a checkpoint is kept for --resume
    (the training loops save one on the way out), exit 130 or 143."""
    from ..errors import Terminated

    try:
        yield
    except (KeyboardInterrupt, Terminated) as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        if (wdir / "checkpoint.pt").exists():
            print(f"aecompress: {what}; the checkpoint in {wdir} is kept: run the same command with --resume "
                  "to continue", file=sys.stderr)
        else:
            print(f"aecompress: {what}; no partial output was left", file=sys.stderr)
        raise typer.Exit(143 if isinstance(exc, Terminated) else 130)


def _has_images(folder: Path) -> bool:
    from ..train.data import find_images

    return bool(find_images(folder))


def _check_val(folder: Path) -> None:
    """--val must hold at least one image that can be read (it is measured on, after training)."""
    from ..train.data import any_readable, find_images

    paths = find_images(folder) if folder.is_dir() else []
    if not paths:
        raise AecError(f"--val {folder}: no images there")
    if not any_readable(paths):
        raise AecError(f"--val {folder}: no readable images there ({len(paths)} files skipped)")


def export_and_report_dense(result, out: Path, name: str, description: str = "", report: bool = True,
                            log=print) -> Path:
    from ..train.dense import describe
    from ..train.export_dense import export_dense_codec, training_summary

    held_out = len(result.val_images) > 0
    sample = result.val_images if held_out else result.train_images
    # none held out: --val-split 0, or a single image, which split() never holds out whatever the share
    why = "--val-split 0" if result.cfg.val_split == 0 else "a single image"
    export_dense_codec(result.model, out, name, sample[:8], training_summary(result),
                       description or describe(result.model_cfg, result.obj), measure=sample[:500],
                       measure_set="held-out validation images" if held_out
                       else f"training images ({why}: none held out)")
    meas = json.loads((out / "manifest.json").read_text())["measured"]
    log(f"wrote {out}: {meas['mean_psnr']:.2f} dB, {meas['mean_file_bytes']:.1f} bytes per file "
        f"({meas['mean_payload_bytes']:.1f} payload) on {meas['images']} {meas['set']}")
    if report:
        from ..train.report import report_dense

        with _whole_report(out):
            html = report_dense(out, result)
        log(f"report: {html}")
    return out


@contextmanager
def _whole_report(out: Path):
    """The report goes into the finished package last: if writing it fails or is interrupted, the
    half-written report/ is removed, so the package is either reported or plainly without a report."""
    try:
        yield
    except BaseException:
        shutil.rmtree(out / "report", ignore_errors=True)
        raise


def _check_device_and_init(device: str, init) -> None:
    if device not in ("auto", "cpu", "cuda"):
        raise bad_value("--device", f"must be auto, cpu or cuda, not '{device}'")
    if init is not None and not Path(init).is_file():
        from ..train.from_package import package_for_init

        if package_for_init(init) is None:
            raise AecError(f"--init {init}: no such checkpoint or model package")


def _train_denoiser(data, out, name, steps, minutes, batch, crop, lr, seed, resume, init, device, threads, bf16,
                    val, quiet, say, description="") -> None:
    """`python -m aecompress.train.denoiser train` and `export` in one: checkpoint in OUT.work/, the
    package at OUT, measured on --val (else on four of the training images, and the manifest says so)."""
    import contextlib
    import io
    import os

    from ..train import denoiser
    from ..train.fit_dense import work_dir

    if not Path(data).exists():
        raise AecError(f"{data}: no such folder")
    if not _has_images(Path(data)):
        raise AecError(f"no images found in {data}")
    _check_device_and_init(device, init)
    wdir = work_dir(out)
    _check_resumable(wdir / "checkpoint.pt", resume, "denoise")
    # the module prints its progress; --quiet keeps it off the terminal
    sink = io.StringIO() if quiet else sys.stderr
    with contextlib.redirect_stdout(sink):
        try:
            ckpt = denoiser.train(wdir, 10.0 if minutes is None else minutes, batch or 16, crop or 80,
                                  (INIT_LR if init else 1e-3) if lr is None else lr, threads or os.cpu_count() or 1,
                                  seed=seed, max_steps=steps, data=Path(data), resume=resume, init=init, bf16=bf16,
                                  device=device)
        except (ValueError, FloatingPointError) as exc:
            raise AecError(str(exc).splitlines()[0]) from None
        denoiser.export_checkpoint(ckpt, out, name, measure_limit=None if val else 4, force=True,
                                   val_dir=Path(val or data).resolve(),
                                   measure_label=None if val else "{n} training photos of {folder} (no --val)",
                                   description=description)
    say(f"wrote {out}")


def _train_conv(data, out, name, description, mode, steps, batch, lr, seed, resume, checkpoint_every, val, threads,
                minutes, crop, n, m, quiet, report, log, init=None, bf16=False, whole_every=5000,
                device="auto", say=None) -> None:
    from ..train.data import find_images, load_folder
    from ..train.export import export_checkpoint
    from ..train.fit_conv import ConvConfig, train_conv
    from ..train.fit_dense import detect_mode, read_checkpoint, work_dir

    say = say or log
    if not Path(data).exists():
        raise AecError(f"{data}: no such folder")
    paths = find_images(Path(data))
    if not paths:
        raise AecError(f"no images found in {data}")
    if mode == "auto":
        mode = detect_mode(paths[:200])
    wdir = work_dir(out)
    _check_resumable(wdir / "checkpoint.pt", resume, "conv")
    cfg = ConvConfig(data=str(data), out=str(wdir), mode=mode, n=n, m=m, crop=crop or 192, batch=batch or 4,
                     steps=steps or 20000, minutes=minutes, lr=2e-4 if lr is None else lr, seed=seed, val=str(val) if val else None,
                     checkpoint_every=checkpoint_every or 250, threads=threads, init=str(init) if init else None,
                     bf16=bf16, whole_every=whole_every, device=device)
    _check_device_and_init(device, init)
    cfg.val_every = min(cfg.val_every, max(1, cfg.steps // 10))
    try:
        path = train_conv(cfg, resume=resume, log=log)
    except (ValueError, FloatingPointError) as exc:
        raise AecError(str(exc).splitlines()[0]) from None
    imgs = load_folder(Path(val or data), mode, jpeg_downscale=True, limit=4).images
    ck = read_checkpoint(path)
    export_checkpoint(path, out, name, imgs, description or f"convolutional hyperprior codec trained on {data}",
                      calib_set=_calibration_set(len(imgs), Path(val or data), val is not None, ck.get("held_out")))
    say(f"wrote {out}")
    if report:
        from ..train.report import report_conv

        with _whole_report(out):
            html = report_conv(out, ck.get("history", []), imgs)
        say(f"report: {html}")


def _check_resumable(ckpt: Path, resume: bool, arch: str) -> None:
    """--resume needs a checkpoint of this kind of model in OUT.work/."""
    from ..train.fit_dense import read_checkpoint

    if not resume:
        return
    if not ckpt.exists():
        raise AecError(f"nothing to resume: no checkpoint at {ckpt}")
    theirs = read_checkpoint(ckpt).get("arch") or ("denoise" if arch == "denoise" else None)
    if theirs != arch:
        raise AecError(f"checkpoint {ckpt} is from a {theirs or 'unknown'} model, not {arch}: "
                       "train into another --out or delete the checkpoint")


def _calibration_set(count: int, folder: Path, from_val: bool, held_out: int | None) -> str:
    """What the manifest's `measured.set` says the conv export coded: the first images of --val, or
    of --data, where all but the first `held_out` (held out for validation) are training images."""
    where = folder.resolve()
    if from_val:
        return f"{count} image(s) of --val {where}"
    if held_out is None:                                   # a checkpoint older than the count
        return f"{count} image(s) of {where} (no --val: the first held out for validation, the others training images)"
    held = min(count, held_out)
    if held == 0:
        return f"{count} training image(s) of {where} (no --val)"
    if held == count:
        return f"{count} image(s) of {where} held out for validation (no --val)"
    return (f"{count} image(s) of {where} (no --val): {count - held} training image(s) and {held} held out for "
            "validation")


# -- embed and score (torch-free) -----------------------------------------------------------------
def _read_for(codec, path: Path) -> np.ndarray:
    from ..imageio import read_image, to_channels8

    return to_channels8(read_image(path), codec.channels)


def _expand(images: List[Path]) -> list[Path]:
    from ..train.data import find_images

    out: list[Path] = []
    for p in images:
        p = Path(p)
        if p.is_dir():
            out += find_images(p)
        else:
            out.append(p)
    if not out:
        raise AecError("no images given")
    return out


def _each_image(codec, paths: list[Path], fn) -> tuple[list[Path], list, set[int]]:
    """fn(path, pixels) for every image, in order. A file that cannot be read or coded is reported
    on one line, named, and skipped, as encode does: (the paths done, their results, the failures'
    exit codes). The package itself is checked first: a broken one is one error, not one an image."""
    from .common import error_line, unexpected

    codec.check_tables()
    done, results, codes = [], [], set()
    for p in paths:
        try:
            results.append(fn(p, _read_for(codec, p)))
            done.append(p)
        except (AecError, OSError, ValueError) as exc:
            msg = str(exc) if isinstance(exc, AecError) else unexpected(exc)
            msg = msg if msg.startswith(str(p)) else f"{p}: {msg}"
            if len(paths) == 1:                       # the one image: its error is the run's, one line
                raise (type(exc) if isinstance(exc, AecError) else AecError)(msg) from None
            error_line(msg)
            codes.add(exc.exit_code if isinstance(exc, AecError) else 1)
    if not done:
        _failures(0, len(paths), codes)
    return done, results, codes


def _failures(done: int, total: int, codes: set[int]) -> None:
    """After a run that left images out: the count, and the failures' exit code when they all share
    one, else 1, as encode ends (the results of the others stand)."""
    if done < total:
        print(f"{done} done, {total - done} failed", file=sys.stderr)
        raise typer.Exit(next(iter(codes)) if len(codes) == 1 else 1)


def _check_dense_numbers(values: dict) -> None:
    """The dense options' numbers, before any data is read: NaN passes an option's range (it compares
    false), and was trained with (`--rate nan` as a classic autoencoder that the manifest called
    rate nan) or ended as a divergence blamed on --lr; infinity too. A usage error, exit 2."""
    for opt, value in values.items():
        if value is not None and not math.isfinite(value):
            raise bad_value(opt, f"must be a finite number, not {value:g}")
    if not values["--quant-step"] > 0:
        raise bad_value("--quant-step", f"must be positive, not {values['--quant-step']:g}")


def _check_dense_choices(activation, output, loss, sparse, noise) -> None:
    """The dense options whose values have a fixed form, checked before any data is read: a usage
    error (exit 2, with the --help to read) like every other value an option does not take."""
    from ..train.dense import ACTIVATIONS, LOSSES, OUTPUTS
    from ..train.fit_dense import parse_noise, parse_sparse

    for opt, value, choices in (("--activation", activation, ACTIVATIONS), ("--output", output, OUTPUTS),
                                ("--loss", loss, LOSSES)):
        if value and value not in choices:
            raise bad_value(opt, f"must be one of {', '.join(choices)}, not '{value}'")
    for opt, value, parse in (("--sparse", sparse, parse_sparse), ("--noise", noise, parse_noise)):
        try:
            parse(value)
        except AecError as exc:
            raise bad_value(opt, f"'{value}': " + str(exc).split(": ", 1)[-1]) from None


@app.command("embed")
def embed_cmd(
    package: str = typer.Argument(..., help="model package (folder or installed name)"),
    images: List[Path] = typer.Argument(..., help="images or folders"),
    out: str = typer.Option(..., "--out", "-o", help="output .npy file: one row of codes per image; the images' "
                            "paths, in row order, go beside it with .json"),
    force: bool = typer.Option(False, "--force", help="overwrite OUT (and its .json)"),
) -> None:
    """Write the encoder's codes of images as a (N, D) array.

    Hyperprior codecs: the latent averaged over space. An image that cannot be read or coded is
    reported and left out (the run then exits non-zero)."""
    from ..compress import open_codec
    from ..embedding import names_path, write_codes
    from ..fsutil import STDOUT_ALIASES, is_stdio

    if is_stdio(out) or out in STDOUT_ALIASES:
        raise bad_value("-o", "embed writes two files (the .npy array and its .json list of images): "
                              "name the .npy file, not standard output")
    if out.endswith(("/", os.sep)) or Path(out).is_dir():
        raise bad_value("-o", f"{out} names a folder: name the .npy file (the .json list goes beside it)")
    out = Path(out)
    names = names_path(out)
    if names == out:
        raise AecError(f"-o {out}: name the .npy file; the list of images goes beside it as .json")
    codec = open_codec(package, "cpu", None)

    def code(p: Path, px: np.ndarray) -> np.ndarray:
        y = np.asarray(codec.analyse(px).y, dtype=np.float32)
        return y.reshape(y.shape[0], -1).mean(1) if y.ndim == 3 else y.reshape(-1)

    paths = _expand(images)
    done, rows, exit_codes = _each_image(codec, paths, code)
    codes = np.stack(rows)
    write_codes(out, codes, str(package), [str(p) for p in done], force)
    print(f"{out}: {codes.shape[0]} codes of {codes.shape[1]} values; {names}: the images, in row order",
          file=sys.stderr)
    _failures(len(done), len(paths), exit_codes)


@app.command("score")
def score_cmd(
    package: str = typer.Argument(..., help="model package (folder or installed name)"),
    images: List[Path] = typer.Argument(..., help="images or folders"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object per image (input, mse, psnr, bytes), "
                                 "worst first, instead of a table"),
    quality: Optional[float] = typer.Option(None, min=1, max=100,
                                            help="quality 1-100 the images are coded at (default: the best)"),
) -> None:
    """Reconstruction error of each image through the codec, worst first (an anomaly score).

    An image that cannot be read or coded is reported and left out (the run then exits non-zero)."""
    from ..compress import open_codec
    from ..metrics import mse, psnr

    if quality is not None and not math.isfinite(quality):
        raise bad_value("--quality", f"{quality} is not a number from 1 to 100")
    codec = open_codec(package, "cpu", None)
    position = codec.quality_to_position(quality) if quality is not None else codec.span

    def score(p: Path, px: np.ndarray) -> dict:
        a = codec.analyse(px)
        data, st = codec.code(a, position, "L" if codec.channels == 1 else "RGB")
        rec = codec.reconstruct(st, a.height, a.width)
        return {"input": str(p), "mse": mse(rec, px), "psnr": psnr(rec, px), "bytes": len(data)}

    paths = _expand(images)
    _, rows, exit_codes = _each_image(codec, paths, score)
    rows.sort(key=lambda r: -r["mse"])
    if as_json:                       # one object a line, as encode --json and denoise --json print
        for r in rows:
            print(to_json(r))
    else:
        width = max(len(r["input"]) for r in rows)
        print(f"{'image':<{width}}  {'mse':>10}  {'psnr':>7}  {'bytes':>6}")
        for r in rows:
            print(f"{r['input']:<{width}}  {r['mse']:>10.2f}  {r['psnr']:>7.2f}  {r['bytes']:>6}")
    _failures(len(rows), len(paths), exit_codes)
