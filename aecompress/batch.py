"""Batch denoising: files and folders, mirrored output trees, resume, parallel workers, Ray.

One plan (`plan_jobs`) turns inputs into (source, destination, reference) jobs; `run_batch` runs them
on local worker threads (each with its own inference session) or on Ray actors (each holding one
session), and reports every finished job to a progress callback. Semantics shared by both engines:

- outputs are written atomically (a finished file or nothing) and never overwrite without `force`;
- `skip_existing` skips jobs whose output exists, so a rerun resumes an interrupted batch;
- a bad input is reported as a failed job and the others go on;
- `cancel()` (or Ctrl-C) stops starting new jobs; jobs in flight end without writing partial files.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .errors import AecError, DeviceError, ModelError, OutputExists, extra_hint
from .fsutil import STDOUT_ALIASES, StaleParts, first_writers, interrupts_deferred, is_stdio, taken
from .imageio import format_named, is_image_name
from .package import DEFAULT_DENOISER, load_package

SUFFIX = ".denoised"
ENGINES = ("local", "ray")


@dataclass
class Job:
    src: Path
    dst: Path
    rel: Path                       # path relative to its input root (the file name for file inputs)
    ref: Path | None = None
    error: str | None = None        # known to fail before it starts (a folder -r could not read)


@dataclass
class JobResult:
    src: str
    dst: str
    status: str                     # "done", "skipped" or "failed"
    error: str | None = None
    seconds: float = 0.0
    sigma_estimate: float | None = None
    psnr: float | None = None
    ssim: float | None = None
    psnr_input: float | None = None
    provider: str | None = None
    reference_error: str | None = None     # the output was written, but --reference could not score it
    notes: list[str] = field(default_factory=list)   # what reading changed (clipped or scaled samples)
    exit_code: int | None = None    # a failure's (a model problem's is 4); not in as_dict

    def as_dict(self) -> dict:
        """The result as `denoise --json` prints it: `input` and `output` name the files, as in
        `encode --json`."""
        d = asdict(self)
        d.pop("exit_code")
        return {"input": d.pop("src"), "output": d.pop("dst"), **d}


@dataclass
class BatchSummary:
    total: int
    results: list[JobResult] = field(default_factory=list)
    cancelled: bool = False
    seconds: float = 0.0
    queued: int = 0               # jobs left to work on once skips and refusals were reported

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def done(self) -> int:
        return self.count("done")

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def not_started(self) -> int:
        return self.total - len(self.results)

    def mean(self, key: str) -> float | None:
        vals = [getattr(r, key) for r in self.results if getattr(r, key) is not None]
        return round(sum(vals) / len(vals), 4) if vals else None

    def as_dict(self) -> dict:
        return {"total": self.total, "done": self.done, "skipped": self.skipped, "failed": self.failed,
                "not_started": self.not_started, "cancelled": self.cancelled, "seconds": round(self.seconds, 3),
                "mean_psnr": self.mean("psnr"), "mean_ssim": self.mean("ssim"),
                "mean_psnr_input": self.mean("psnr_input"),
                "results": [r.as_dict() for r in self.results]}


# ---------------------------------------------------------------- planning

def _scan(root: Path, recursive: bool, exclude: Path | None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The images under root: regular files, links to them included (a pipe would block the batch;
    a link that leads nowhere, a loop too, is left out as encode leaves it), and (folder, error) for
    each folder -r could not read (a failure, not skipped in silence)."""
    found: list[Path] = []
    errors: list[tuple[Path, str]] = []
    if recursive:
        def unreadable(exc: OSError) -> None:
            errors.append((Path(exc.filename), f"{exc.filename}: cannot read this folder ({exc.strerror or exc})"))

        for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
            d = Path(dirpath)
            dirnames[:] = sorted(n for n in dirnames if not n.startswith(".")
                                 and (exclude is None or os.path.realpath(d / n) != str(exclude)))
            found += [d / f for f in sorted(filenames) if is_image_name(d / f) and _is_file(d / f)]
    else:
        try:
            found = sorted(p for p in root.iterdir() if _is_file(p) and is_image_name(p))
        except OSError as exc:                      # an unreadable folder fails alone, as under -r
            errors.append((root, f"{root}: cannot read this folder ({exc.strerror or exc})"))
    return found, errors


def _is_file(p: Path) -> bool:
    try:
        return p.is_file()
    except OSError:                                 # a loop of links on Pythons that raise for it
        return False


def _find_reference(reference: Path, rel: Path, listings: dict[Path, list[str]] | None = None) -> Path | None:
    """The clean image for `rel`: the same relative path, else the same name under another image
    extension (a noisy JPEG's PNG), the name before the extension compared exactly (a pattern
    would take `cat.backup.png` for `cat.jpg`, or `shot1.png` for `shot[1].jpg`). `listings`
    keeps each folder's sorted names, so a folder of thousands is listed once, not once a file."""
    cand = reference / rel
    if cand.is_file():
        return cand
    listings = {} if listings is None else listings
    names = listings.get(cand.parent)
    if names is None:
        try:
            names = listings[cand.parent] = sorted(os.listdir(cand.parent))
        except OSError:                     # no such folder in the references
            names = listings[cand.parent] = []
    for n in names:
        p = cand.parent / n
        if p.stem == cand.stem and is_image_name(p) and _is_file(p):
            return p
    return None


def default_output(src: Path) -> Path:
    """NAME.denoised.EXT next to a file; NAME.denoised next to a folder (`.` and `..` are named by the
    folder they are: `denoise .` writes ../NAME.denoised, not a hidden `.denoised` inside the input)."""
    src = Path(src)
    if src.is_file():
        return src.with_name(src.stem + SUFFIX + src.suffix)
    if src.name in ("", ".", ".."):
        src = Path(os.path.realpath(src))
        if not src.name:
            raise AecError(f"{src}: a folder without a name has no default output folder; name one with -o")
    return src.with_name(src.name + SUFFIX)


def plan_jobs(inputs: Iterable[str | Path], output: str | Path | None = None, recursive: bool = False,
              reference: str | Path | None = None, left_out: list[tuple[Path, Path]] | None = None) -> list[Job]:
    """Turn files and folders into jobs. Raises AecError for inputs that do not exist.

    A single file with -o names the output file (or a folder to put it in, when -o is a folder or ends
    with a separator; a name without an extension is a file in the input's format, as for encode and
    decode); without -o the output is NAME.denoised.EXT beside it. Folders (and several
    inputs) need -o to be a folder, or write into a sibling NAME.denoised folder / beside each file;
    -r recurses and mirrors the folder structure. The output folder is never scanned as input.
    Without -o, an input that is another input's default output (`denoise *.jpg` run again names
    a.jpg and a.denoised.jpg) is an earlier run's output, not an image to denoise again: it is left
    out, and (input, the input whose output it is) appended to `left_out` when given.
    """
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise AecError("no input given")
    for p in inputs:
        if not p.exists():
            raise AecError(f"{p}: no such file or folder")
    if output is None and len(inputs) > 1:
        outputs = {}
        for p in inputs:
            try:
                outputs.setdefault(os.path.realpath(default_output(p)), p)
            except AecError:                # `/`: fails below, as a single input does
                pass
        kept = []
        for p in inputs:
            owner = outputs.get(os.path.realpath(p))
            if owner is None:
                kept.append(p)
            elif left_out is not None:
                left_out.append((p, owner))
        inputs = kept
    if output is not None and (is_stdio(output) or str(output) in STDOUT_ALIASES):
        raise AecError(f"-o {output}: denoise writes image files, not standard output; name a file or folder")
    out = Path(output) if output is not None else None
    ref = Path(reference) if reference is not None else None
    if ref is not None and not ref.is_dir():
        raise AecError(f"--reference {ref} is not a folder")
    single_file = len(inputs) == 1 and inputs[0].is_file()
    named_folder = output is not None and str(output).endswith(("/", os.sep))
    out_is_dir = out is not None and (out.is_dir() or named_folder or not single_file)
    if out is not None and out.exists() and not out.is_dir():
        if named_folder:
            raise AecError(f"-o {output} names a folder, and {out} is a file")
        if not single_file:
            raise AecError(f"-o {out} must be a folder when denoising several files or a folder")
    jobs: list[Job] = []
    for p in inputs:
        if p.is_file():
            rel = Path(p.name)
            dst = (out / rel if out_is_dir else out) if out is not None else default_output(p)
            jobs.append(Job(p, dst, rel))
        elif p.is_dir():
            root_out = out if out is not None else default_output(p)
            exclude = Path(os.path.realpath(root_out))        # never scanned as input (a rerun into it)
            found, errors = _scan(p, recursive, exclude)
            for f in found:
                rel = f.relative_to(p)
                jobs.append(Job(f, root_out / rel, rel))
            for folder, e in errors:
                jobs.append(Job(folder, root_out, Path(), error=e))
        else:
            raise AecError(f"{p} is not a file or folder")
    # an input given twice (`sub` and `./sub/`) is one job, and so is a file named as well as reached
    # through a folder (under -r, any folder above it: `shoot -r shoot/day1/best.jpg`, or zsh's
    # `shoot/**`), which goes to the output of its first naming, as encode runs such a file once: the
    # same entry of the same real folder (two links to one file are two inputs); outputs that would
    # replace their inputs (-o naming the input folder) are refused once, here, rather than once per file
    seen: set[tuple] = set()
    unique = []
    for j in jobs:
        # realpath: no error on a link loop; a folder that could not be read fails once, however named
        key = (os.path.realpath(j.src), os.path.realpath(j.dst), j.error is not None)
        entry = key if j.error else os.path.join(os.path.realpath(j.src.parent), j.src.name)
        if key not in seen and entry not in seen:
            seen.update((key, entry))
            unique.append(j)
    jobs = unique
    over = [j for j in jobs if j.error is None and os.path.realpath(j.src) == os.path.realpath(j.dst)]
    if over:
        raise AecError(f"the outputs of {len(over)} input(s) would replace the inputs themselves "
                       f"({over[0].src}): choose another -o")
    if ref is not None:
        listings: dict[Path, list[str]] = {}
        for j in jobs:
            j.ref = None if j.error else _find_reference(ref, j.rel, listings)
    return jobs


# ---------------------------------------------------------------- one file

def denoise_file(src: Path, dst: Path, pkg, force: bool = False, tile: int | None = None, sigma=None,
                 ref: Path | None = None, cancel: Callable[[], bool] | None = None, ensemble: int = 1,
                 quality: int | None = None) -> dict:
    """Read, denoise and atomically write one image, keeping format, size, mode, EXIF and ICC profile.
    quality: of a lossy output (imageio.save_image; None: a JPEG's own tables, else 95)."""
    from .denoise import DEFAULT_TILE, denoise_array
    from .fsutil import check_folder_writable, check_writable
    from .imageio import format_named, ico_smaller_sizes, read_image, save_image

    src, dst = Path(src), Path(dst)
    if dst.exists() and os.path.realpath(src) == os.path.realpath(dst):
        raise AecError(f"{dst}: refusing to overwrite the input")
    check_writable(dst, force)
    check_folder_writable(dst)                  # a read-only folder fails before the work, too
    format_named(dst, src)                      # an unknown extension fails before the work
    pic = read_image(src)
    if pic.frames > 1:               # writing back one frame would silently drop the rest
        raise AecError(f"{src}: multi-page TIFFs are not supported ({pic.frames} pages)" if pic.format == "TIFF"
                       else f"{src}: animated images are not supported ({pic.frames} frames)")
    out, info = denoise_array(pic.pixels, pkg, sigma=sigma, tile=DEFAULT_TILE if tile is None else tile,
                              cancel=cancel, ensemble=ensemble)
    notes = list(pic.notes)
    smaller = ico_smaller_sizes(pic)
    if smaller:                     # Pillow reads the largest icon; the others' own pixels cannot come back
        sizes = ", ".join(f"{w}x{h}" for w, h in smaller)
        fmt = format_named(dst, src, pic.format)
        notes.append(f"an icon of {len(smaller) + 1} sizes: the largest, {pic.width}x{pic.height}, is denoised, and "
                     + (f"the smaller ones ({sizes}) are made again from it" if fmt == "ICO" else
                        f"the smaller ones ({sizes}) are not written"))
    if cancel is not None and cancel():
        raise KeyboardInterrupt
    note = save_image(dst, out, force=force, mode=pic.mode, exif=pic.exif, icc=pic.icc,
                      format=format_named(dst, src, pic.format), source=pic.info, quality=quality)
    if note:
        notes.append(note)
    if notes:
        info["notes"] = notes
    if ref is not None:
        try:
            info.update(reference_metrics(out, pic.pixels, ref))
        except AecError as exc:          # the denoised file is written and good: not a failure
            info["reference_error"] = str(exc)
    return info


def reference_metrics(out, noisy, ref: Path) -> dict:
    from .imageio import read_image
    from .metrics import psnr, ssim

    clean = read_image(ref).pixels

    def describe(a) -> str:
        kind = {1: "greyscale", 2: "greyscale+alpha", 3: "colour", 4: "colour+alpha"}.get(a.shape[2], f"{a.shape[2]}-channel")
        return f"{a.shape[1]}x{a.shape[0]} {kind}" + (" 16-bit" if a.dtype.itemsize == 2 else "")

    if clean.shape != out.shape:
        raise AecError(f"reference {ref} is {describe(clean)}, the output is {describe(out)}: not scored")
    if clean.dtype != out.dtype:            # 8 and 16 bits: scored on the 8-bit scale
        from .rgb16 import narrow

        out, noisy, clean = (narrow(a) if a.dtype.itemsize == 2 else a for a in (out, noisy, clean))
    return {"psnr": round(psnr(out, clean, 65535.0 if clean.dtype.itemsize == 2 else 255.0), 4),
            "ssim": round(ssim(out, clean), 5),
            "psnr_input": round(psnr(noisy, clean, 65535.0 if clean.dtype.itemsize == 2 else 255.0), 4)}


def _result(job: Job, info: dict | None = None, error: str | None = None, status: str | None = None,
            seconds: float = 0.0, exit_code: int = 1) -> JobResult:
    info = info or {}
    return JobResult(str(job.src), str(job.dst), status or ("failed" if error else "done"), error,
                     round(seconds, 4), info.get("sigma_estimate"), info.get("psnr"), info.get("ssim"),
                     info.get("psnr_input"), info.get("provider"), info.get("reference_error"),
                     list(info.get("notes", [])), exit_code if error else None)


# ---------------------------------------------------------------- engines

def _as_cancel(cancel) -> Callable[[], bool]:
    if cancel is None:
        return lambda: False
    if isinstance(cancel, threading.Event):
        return cancel.is_set
    return cancel


def run_batch(inputs: Iterable[str | Path] | list[Job], output: str | Path | None = None, recursive: bool = False,
              skip_existing: bool = False, force: bool = False, jobs: int = 1, tile: int | None = None, sigma=None,
              ensemble: int = 1, reference: str | Path | None = None, model: str | Path = DEFAULT_DENOISER,
              device: str = "auto", quality: int | None = None,
              threads: int | None = None, engine: str = "local", address: str | None = None,
              progress: Callable[[JobResult, BatchSummary], None] | None = None,
              cancel: Callable[[], bool] | threading.Event | None = None,
              on_start: Callable[[BatchSummary], None] | None = None) -> BatchSummary:
    """Denoise many images. Returns a BatchSummary; never raises for a single bad file.

    inputs: paths (planned with plan_jobs) or ready Job objects. progress(result, summary) is called
    after every job (from the calling thread); cancel is a callable or threading.Event polled between
    and inside jobs. KeyboardInterrupt stops the batch the same way and is re-raised after cleanup.
    """
    if engine not in ENGINES:
        raise AecError(f"unknown engine '{engine}' (choose from {', '.join(ENGINES)})")
    job_list = list(inputs)
    if not job_list or not isinstance(job_list[0], Job):
        job_list = plan_jobs(job_list, output, recursive, reference)
    jobs = max(1, int(jobs or 1))
    is_cancelled = _as_cancel(cancel)
    summary = BatchSummary(total=len(job_list))
    t0 = time.perf_counter()
    todo: list[Job] = []
    stale = StaleParts()

    def report(r: JobResult) -> None:
        summary.results.append(r)
        summary.seconds = time.perf_counter() - t0
        if progress is not None:
            progress(r, summary)

    # inputs are never modified: not by their own output, nor by another's written through a link
    inputs = {os.path.realpath(j.src) for j in job_list if j.error is None}
    for i, (job, first) in enumerate(zip(job_list, first_writers(None if j.error else j.dst for j in job_list))):
        if job.error:
            report(_result(job, error=job.error))
            continue
        if first != i:
            report(_result(job, error=f"{job.dst}: also the output of {job_list[first].src}"))
            continue
        if os.path.realpath(job.dst) == os.path.realpath(job.src):
            report(_result(job, error=f"{job.dst}: refusing to overwrite the input"))
        elif os.path.realpath(job.dst) in inputs:
            report(_result(job, error=f"{job.dst}: refusing to write over an input of this run "
                                      f"({os.path.realpath(job.dst)})"))
        elif skip_existing and taken(job.dst):
            stale.remove(job.dst)                   # a run killed while replacing it (--force) left one
            report(_result(job, status="skipped"))
        elif taken(job.dst) and not force:
            report(_result(job, error=f"{job.dst} exists (use --force to overwrite or --skip-existing)"))
        else:
            todo.append(job)
    summary.queued = len(todo)
    if on_start is not None:                              # skips and refusals are reported by now
        on_start(summary)
    if not todo:
        summary.seconds = time.perf_counter() - t0
        return summary
    load_package(model)                                   # fail early, once, on a bad model name
    runner = _run_ray if engine == "ray" else _run_local
    try:
        runner(todo, report, is_cancelled, model=model, device=device, threads=threads, jobs=jobs, tile=tile,
               sigma=sigma, ensemble=ensemble, force=force, stale=stale, address=address, quality=quality,
               skip_existing=skip_existing)
    except KeyboardInterrupt:
        summary.cancelled = True
        summary.seconds = time.perf_counter() - t0
        raise
    summary.cancelled = summary.cancelled or (is_cancelled() and summary.not_started > 0)
    summary.seconds = time.perf_counter() - t0
    return summary


def _run_local(todo: list[Job], report, is_cancelled, *, model, device, threads, jobs, tile, sigma, ensemble, force,
               stale, address=None, quality=None, skip_existing=False) -> None:
    stop = threading.Event()
    halt = threading.Event()            # the device or the model cannot run: no more jobs start (not an interrupt)

    def cancelled() -> bool:
        return stop.is_set() or halt.is_set() or is_cancelled()

    per_worker = threads or (max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None)
    local = threading.local()

    def work(job: Job) -> JobResult:
        t = time.perf_counter()
        if cancelled():
            return None
        try:
            if not hasattr(local, "pkg"):
                local.pkg = load_package(model, device=device, threads=per_worker)
            stale.remove(job.dst)
            info = denoise_file(job.src, job.dst, local.pkg, force=force, tile=tile, sigma=sigma, ref=job.ref,
                                cancel=cancelled, ensemble=ensemble, quality=quality)
            return _result(job, info, seconds=time.perf_counter() - t)
        except (DeviceError, ModelError) as exc:     # every file would fail alike: start no more
            halt.set()
            return _result(job, error=str(exc), seconds=time.perf_counter() - t, exit_code=exc.exit_code)
        except OutputExists as exc:          # another run wrote it meanwhile
            if skip_existing:
                return _result(job, status="skipped", seconds=time.perf_counter() - t)
            return _result(job, error=str(exc), seconds=time.perf_counter() - t)
        except AecError as exc:
            return _result(job, error=str(exc), seconds=time.perf_counter() - t)
        except KeyboardInterrupt:            # the cancel check: Ctrl-C, or a job in flight when halted
            if not halt.is_set():
                stop.set()
            return None
        except MemoryError:
            return _result(job, error=f"{job.src}: not enough memory", seconds=time.perf_counter() - t)
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return _result(job, error=f"{job.src}: {msg}", seconds=time.perf_counter() - t)

    if jobs == 1:
        for job in todo:
            if cancelled():
                break
            r = work(job)
            if r is None:
                if stop.is_set() and not is_cancelled():
                    raise KeyboardInterrupt
                break
            report(r)
        return
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="aec-denoise")
    pending = set()
    submitted, reported = [], set()
    it = iter(todo)
    try:
        for job in it:
            submitted.append(pool.submit(work, job))
            pending.add(submitted[-1])
            if len(pending) >= jobs * 2:
                break
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for f in done:
                reported.add(f)
                r = f.result()
                if r is not None:
                    report(r)
            if cancelled():
                continue                     # let jobs in flight finish (or abort cleanly), start none
            for job in it:
                submitted.append(pool.submit(work, job))
                pending.add(submitted[-1])
                if len(pending) >= jobs * 2:
                    break
    except KeyboardInterrupt:
        stop.set()
        for f in pending:
            f.cancel()
        # the workers stop at their next tile; a second Ctrl-C must not end the process while they
        # are inside onnxruntime (it aborts: "terminate called without an active exception")
        with interrupts_deferred():
            pool.shutdown(wait=True, cancel_futures=True)
            # a job past its last check finished and wrote its output: it is reported as done
            for f in submitted:
                if f not in reported and f.done() and not f.cancelled() and f.exception() is None:
                    if f.result() is not None:
                        report(f.result())
        raise
    pool.shutdown(wait=True)
    if stop.is_set() and not is_cancelled():
        raise KeyboardInterrupt


# ---------------------------------------------------------------- Ray

def _package_files(model) -> tuple[str, dict[str, bytes]]:
    pkg = load_package(model, device="cpu", threads=1)
    # a graph that cannot open (not ONNX, the wrong inputs) is one model error here, not a dead
    # worker reported for every file
    pkg.session("denoise")
    names = ["manifest.json"] + sorted(set(pkg.manifest.get("graphs", {}).values()))
    return pkg.name, {n: (pkg.path / n).read_bytes() for n in names}


class _RayWorker:
    """Holds one inference session; gets file bytes, returns output bytes (no shared file system needed)."""

    def __init__(self, name: str, files: dict[str, bytes], device: str, threads: int | None):
        from .entrypoint import configure_process

        # the worker's process is aecompress's own, as the command line's is: the same image size
        # limit (Pillow's default refused from 179 million pixels, the local engine reads 400 million)
        configure_process()
        self.dir = Path(tempfile.mkdtemp(prefix="aec-ray-"))
        # the driver calls close() at the end of a batch; a worker that is killed instead (Ctrl-C,
        # Ray shutting down) still removes its copy of the model when its process exits
        atexit.register(self.close)
        try:
            pkg_dir = self.dir / "pkg" / name
            pkg_dir.mkdir(parents=True)
            for n, data in files.items():
                (pkg_dir / n).write_bytes(data)
            self.pkg = load_package(pkg_dir, device=device, threads=threads)
            self.pkg.session("denoise")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Remove this worker's copy of the model package and its scratch files."""
        shutil.rmtree(self.dir, ignore_errors=True)

    def process(self, name: str, data: bytes, ref_name: str | None, ref: bytes | None, tile, sigma,
                ensemble: int = 1, quality: int | None = None, out_suffix: str | None = None) -> dict:
        """out_suffix: the output's extension (it names the format written, as for a local run)."""
        t = time.perf_counter()
        work = Path(tempfile.mkdtemp(dir=self.dir))
        try:
            src = work / ("in" + Path(name).suffix)
            src.write_bytes(data)
            dst = work / ("out" + (Path(name).suffix if out_suffix is None else out_suffix))
            ref_path = None
            if ref is not None:
                ref_path = work / ("ref" + Path(ref_name).suffix)
                ref_path.write_bytes(ref)
            try:
                info = denoise_file(src, dst, self.pkg, force=True, tile=tile, sigma=sigma, ref=ref_path,
                                    ensemble=ensemble, quality=quality)
            except (DeviceError, ModelError) as exc:     # every file would fail alike: the driver stops
                return {"error": str(exc).replace(str(src), name), "seconds": time.perf_counter() - t,
                        "exit_code": exc.exit_code, "halt": True}
            except AecError as exc:
                return {"error": str(exc).replace(str(src), name), "seconds": time.perf_counter() - t}
            except Exception as exc:  # noqa: BLE001
                return {"error": f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                        "seconds": time.perf_counter() - t}
            if info.get("reference_error") and ref_path is not None:
                info["reference_error"] = info["reference_error"].replace(str(ref_path), ref_name)
            return {"data": dst.read_bytes(), "info": info, "seconds": time.perf_counter() - t}
        finally:
            for p in work.iterdir():
                p.unlink()
            work.rmdir()


def _run_ray(todo: list[Job], report, is_cancelled, *, model, device, threads, jobs, tile, sigma, ensemble, force,
             stale, address=None, quality=None, skip_existing=False) -> None:
    try:
        import ray
    except ImportError:
        raise AecError(f"--engine ray needs Ray: {extra_hint('cluster')}") from None
    from .fsutil import check_folder_writable, write_bytes_atomic

    # Ray installs its own SIGTERM handler in init (and a native one that dumps a stack), and shutdown
    # resets SIGTERM to the default action behind Python's back: ours are put back after both, so
    # `kill` stops a Ray batch as it stops a local one
    main = threading.current_thread() is threading.main_thread()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}

    def restore() -> None:
        for s, h in handlers.items():
            if h is not None:
                signal.signal(s, h)

    # Ray's logger prints notices on standard error (token authentication, at every local start),
    # past --quiet and beside our one-line report: only its errors come through while the Ray we
    # start runs, and its own level comes back after ray.shutdown (a program that runs batches as a
    # library keeps its logging setting)
    ray_log = logging.getLogger("ray")
    ray_level = ray_log.level
    started = False
    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray_log.setLevel(max(ray_log.getEffectiveLevel(), logging.ERROR))
        try:
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=jobs, **kwargs)
        except BaseException as exc:
            restore()
            try:
                with interrupts_deferred():     # interrupted while starting: stop what was started
                    ray.shutdown()
                restore()
            finally:
                ray_log.setLevel(ray_level)
            if isinstance(exc, SystemExit) and exc.code in (signal.SIGTERM, -signal.SIGTERM):
                signal.raise_signal(signal.SIGTERM)     # Ray's handler took our `kill`: handle it as ours
            raise
        restore()
        started = True
    try:
        name, files = _package_files(model)
        files_ref = ray.put(files)
        Worker = ray.remote(num_cpus=1)(_RayWorker)
        n = max(1, min(jobs, len(todo)))
        if device == "cuda":
            Worker = Worker.options(num_gpus=1)
        actors = [Worker.remote(name, files_ref, "cpu" if device == "auto" else device, threads or 1)
                  for _ in range(n)]
        it = iter(todo)
        running: dict = {}
        free = list(actors)
        halted = []                         # a model or device problem: no more jobs start

        def submit() -> None:
            while free and not is_cancelled() and not halted:
                job = next(it, None)
                if job is None:
                    return
                a = free.pop()
                stale.remove(job.dst)
                try:
                    format_named(job.dst, job.src)     # an unknown extension fails here, as locally
                    check_folder_writable(job.dst)     # and a folder that cannot take the output
                    data = job.src.read_bytes()
                    ref = job.ref.read_bytes() if job.ref is not None else None
                except AecError as exc:
                    free.append(a)
                    report(_result(job, error=str(exc)))
                    continue
                except OSError as exc:
                    free.append(a)
                    report(_result(job, error=f"{job.src}: cannot read ({exc.strerror or exc})"))
                    continue
                fut = a.process.remote(str(job.src), data, str(job.ref) if job.ref else None, ref, tile, sigma,
                                       ensemble, quality, job.dst.suffix)
                running[fut] = (job, a)

        submit()
        while running:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            for fut in ready:
                job, a = running.pop(fut)
                free.append(a)
                try:
                    res = ray.get(fut)
                except Exception as exc:  # noqa: BLE001 - a worker that died
                    report(_result(job, error=f"{job.src}: worker failed ({type(exc).__name__})"))
                    continue
                if "error" in res:
                    if res.get("halt"):
                        halted.append(job)
                    report(_result(job, error=res["error"], seconds=res["seconds"],
                                   exit_code=res.get("exit_code", 1)))
                    continue
                try:
                    write_bytes_atomic(job.dst, res["data"], force=force)
                except OutputExists as exc:      # another run wrote it meanwhile
                    report(_result(job, status="skipped", seconds=res["seconds"]) if skip_existing else
                           _result(job, error=str(exc), seconds=res["seconds"]))
                    continue
                except AecError as exc:
                    report(_result(job, error=str(exc), seconds=res["seconds"]))
                    continue
                report(_result(job, res["info"], seconds=res["seconds"]))
            submit()
        if not is_cancelled():
            try:
                ray.get([a.close.remote() for a in actors], timeout=30)
            except Exception:  # noqa: BLE001 - a worker that died has nothing more to remove
                pass
    finally:
        if started:
            try:
                ray.shutdown()
                restore()
            finally:
                ray_log.setLevel(ray_level)
