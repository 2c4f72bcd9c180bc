"""`aecompress denoise`: files and folders, resume, parallel or Ray workers, reference metrics."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

import typer

from . import app
from .common import bad_value, check_skip, device_option, nonempty_model, one_line, threads_option, to_json


def _fmt(r, show_sigma: bool) -> str:
    line = f"{r.src} -> {r.dst}: {r.seconds:.2f} s"
    if show_sigma and r.sigma_estimate is not None:
        line += f", estimated sigma {r.sigma_estimate:.1f}"
    if r.psnr is not None:
        line += f", PSNR {r.psnr:.2f} dB (input {r.psnr_input:.2f} dB), SSIM {r.ssim:.4f}"
    return line


def _parse_sigma(sigma: Optional[str]):
    if sigma is None or sigma == "auto":
        return sigma
    try:
        v = float(sigma)
    except ValueError:
        raise bad_value("--sigma", f"must be 'auto' or a number, not '{sigma}'") from None
    if not 0 <= v <= 255:
        raise bad_value("--sigma", f"must be between 0 and 255, not {sigma}")
    return v


@app.command()
def denoise(
    inputs: List[Path] = typer.Argument(..., readable=False, help="Images and folders to denoise."),
    # a str, not a Path: Path drops the trailing / that makes a name a folder
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Output file (one input file) or folder (several, "
                                         "or a name ending in /). Default: NAME.denoised.EXT beside each file, "
                                         "FOLDER.denoised beside a folder."),
    recursive: bool = typer.Option(False, "-r", "--recursive", help="Recurse into folders and mirror their structure under -o."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip images whose output exists (resume a batch)."),
    jobs: int = typer.Option(1, "-j", "--jobs", min=1, help="Images processed in parallel (local threads or Ray workers)."),
    tile: int = typer.Option(512, "--tile", min=0, help="Tile size in pixels for bounded memory (0: whole image at once)."),
    sigma: Optional[str] = typer.Option(None, "--sigma", help="'auto' to estimate and report the noise level, or a known level (0-255 scale). The default model is blind and needs neither."),
    ensemble: int = typer.Option(1, "--ensemble", help="Average the model over 1, 2, 4 or 8 flipped/rotated copies: "
                                                       "N times slower, a cleaner result (x8: about +0.2-0.3 dB)."),
    quality: Optional[int] = typer.Option(None, "-q", "--quality", min=1, max=100,
                                          help="Quality of lossy outputs (JPEG, lossy WebP, AVIF). Default: a JPEG keeps "
                                               "its own quantization tables (its quality), others 95."),
    reference: Optional[Path] = typer.Option(None, "--reference",
                                             help="Folder of clean images with the same relative paths (or the "
                                                  "same names under another image extension): report PSNR and SSIM."),
    model: Optional[str] = typer.Option(None, "-m", "--model", callback=nonempty_model, help="Denoiser model package name or folder (default: denoise)."),
    engine: str = typer.Option("local", "--engine", help="local or ray."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (with --engine ray; default: start a local instance)."),
    device: str = device_option(),
    threads: Optional[int] = threads_option(),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per image, then a summary object."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite existing output files."),
    quiet: bool = typer.Option(False, "--quiet", help="Print nothing but errors and the summary of failures."),
) -> None:
    """Remove noise from photos: blind model, tiled, resumable batches with atomic writes."""

    from ..batch import ENGINES, plan_jobs, run_batch
    from ..fsutil import taken
    from ..denoise import ENSEMBLES
    from ..errors import AecError, ModelError
    from ..package import DEFAULT_DENOISER, load_package

    check_skip(skip_existing, force)
    sig = _parse_sigma(sigma)
    if ensemble not in ENSEMBLES:
        raise bad_value("--ensemble", f"must be one of {', '.join(map(str, ENSEMBLES))}, not {ensemble}")
    if engine not in ENGINES:
        raise bad_value("--engine", f"must be one of {', '.join(ENGINES)}, not '{engine}'")
    model = model or DEFAULT_DENOISER
    pkg = load_package(model)
    if pkg.kind != "denoiser":
        raise ModelError(f"model '{pkg.name}' is a {pkg.kind}, not a denoiser")
    if isinstance(sig, float) and not pkg.manifest.get("sigma_input", False) and not quiet:   # --json: on stderr too
        print(f"aecompress: note: model {pkg.name} is blind; it finds the noise level itself "
              f"(--sigma {sig:g} is not used)", file=sys.stderr)
    left_out: list = []
    job_list = plan_jobs(inputs, output, recursive, reference, left_out=left_out)
    if left_out and not quiet:          # `denoise *.jpg` again: the .denoised files of the first run
        src, owner = left_out[0]
        more = f" (and {len(left_out) - 1} more)" if len(left_out) > 1 else ""
        print(one_line(f"aecompress: note: {src}{more} left out: the output of {owner}, not denoised again"),
              file=sys.stderr)
    if not job_list:
        raise AecError("no images found" + ("" if recursive else " (use -r to recurse into subfolders)"))
    missing = [j for j in job_list if j.ref is None and j.error is None] if reference is not None else []
    for j in missing[:5]:
        print(one_line(f"aecompress: warning: no reference for {j.rel} in {reference}"), file=sys.stderr)
    if len(missing) > 5:
        print(f"aecompress: warning: ... and {len(missing) - 5} more images without a reference", file=sys.stderr)
    single = len(job_list) == 1
    if not single and not force and not skip_existing:
        # outputs of an earlier run: one line for all of them, before any work, rather than a
        # failure for each (a rerun of a finished batch of thousands)
        # (an output that is also an input of this run is refused by itself, --force or not)
        inputs = {os.path.realpath(j.src) for j in job_list if j.error is None}
        existing = [j for j in job_list if j.error is None and taken(j.dst) and os.path.realpath(j.dst) not in inputs]
        if existing:
            raise AecError(f"{len(existing)} of the {len(job_list)} outputs exist already ({existing[0].dst}"
                           f"{' ...' if len(existing) > 1 else ''}): --skip-existing resumes the batch, "
                           "--force replaces them")
    bar = task = None
    if not single and not quiet and sys.stderr.isatty():     # single files skip the progress machinery
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        bar = Progress(TextColumn("denoising"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                       TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("left"),
                       console=Console(stderr=True, highlight=False), transient=True,
                       redirect_stdout=sys.stdout.isatty())   # `--json > f`: the objects go to f
        task = bar.add_task("denoise", rate="",                # until on_start: the files not to skip
                            total=sum(not (skip_existing and taken(j.dst)) for j in job_list))

    def say(text: str, err: bool = False) -> None:
        if bar is not None and (err or sys.stdout.isatty()):      # above the bar, on its terminal
            bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=sys.stderr if err else sys.stdout, flush=True)

    started: list[float] = []           # [results reported while planning, time the work began]
    partial = []                        # the batch's summary, to report what was done if it is interrupted

    def on_start(summary) -> None:      # skips and refusals are reported: the bar counts the work left
        partial[:] = [summary]
        started[:] = [len(summary.results), time.perf_counter()]
        if bar is not None:
            bar.update(task, total=summary.queued, completed=0)

    def on_result(r, summary) -> None:
        if as_json and r.status == "failed":
            print(to_json(r.as_dict()), flush=True)
        if r.reference_error:
            say(f"aecompress: warning: {one_line(r.reference_error)}", err=True)
        for n in () if quiet else r.notes:     # samples a 16- or 8-bit output cannot hold (--json: also in it)
            say(one_line(f"aecompress: note: {r.src}: {n}"), err=True)
        if r.status == "failed":
            say(f"aecompress: error: {one_line(r.error)}", err=True)
        elif as_json:
            print(to_json(r.as_dict()), flush=True)
        elif not quiet:
            say(_fmt(r, sig == "auto") if r.status == "done" else f"{r.src}: skipped ({r.dst} exists)")
        if bar is not None and started:   # rate and time left are those of real work, skips left out
            n = len(summary.results) - started[0]
            spent = time.perf_counter() - started[1]
            bar.update(task, completed=n, rate=f"{n / spent:.2f} img/s" if spent > 0 and n else "")

    cancel = threading.Event()
    old_term = None
    terminated = []
    if threading.current_thread() is threading.main_thread():
        def _on_term(signum, frame):                    # `kill` stops the batch as Ctrl-C does: no partial files
            terminated.append(signum)
            raise KeyboardInterrupt
        old_term = signal.signal(signal.SIGTERM, _on_term)
    try:
        if bar is not None:
            bar.start()
        try:
            summary = run_batch(job_list, skip_existing=skip_existing, force=force, jobs=jobs, tile=tile, sigma=sig,
                                ensemble=ensemble, quality=quality, model=model, device=device, threads=threads,
                                engine=engine, address=address, progress=on_result, cancel=cancel, on_start=on_start)
        finally:
            if bar is not None:
                bar.stop()
    except KeyboardInterrupt:
        cancel.set()
        if partial:                     # what was done before the interrupt, as a finished batch reports it
            s = partial[0]
            s.cancelled = True
            if as_json:
                d = s.as_dict()
                d.pop("results")
                print(to_json({"summary": d}), flush=True)
            elif not single and not quiet:
                print(f"{s.done} denoised, {s.skipped} skipped, {s.failed} failed, {s.not_started} not started",
                      file=sys.stderr)
        print(f"aecompress: {'terminated' if terminated else 'interrupted'}; no partial files were left; "
              "rerun with --skip-existing to resume", file=sys.stderr)
        raise typer.Exit(143 if terminated else 130)
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    if as_json:
        d = summary.as_dict()
        d.pop("results")
        print(to_json({"summary": d}), flush=True)
    elif (not single or reference is not None) and not quiet:
        line = f"{summary.done} denoised, {summary.skipped} skipped, {summary.failed} failed"
        if summary.not_started and not summary.cancelled:       # stopped by a model or device problem
            line += f", {summary.not_started} not started"
        line += f" in {summary.seconds:.1f} s"
        if reference is not None:
            scored = sum(r.psnr is not None for r in summary.results)
            line += f"; {scored} of {summary.done} scored against a reference"
        if summary.mean("psnr") is not None:
            line += (f"; mean PSNR {summary.mean('psnr'):.2f} dB (input {summary.mean('psnr_input'):.2f} dB), "
                     f"mean SSIM {summary.mean('ssim'):.4f}")
        print(line, file=sys.stderr if summary.failed else sys.stdout, flush=True)
    elif summary.failed and not single:
        print(f"{summary.done} denoised, {summary.failed} failed", file=sys.stderr)
    if summary.failed:
        # the failures' exit code when they share one (a broken model, which stops the batch at
        # its first file: 4), as encode and decode end
        codes = {r.exit_code or 1 for r in summary.results if r.status == "failed"}
        raise typer.Exit(codes.pop() if len(codes) == 1 else 1)
