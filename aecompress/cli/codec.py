"""`aecompress encode`, `decode`, `info` and `models`."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

from . import app
from .common import (bad_value, check_skip, device_option, nonempty_model, one_line, progress, run_many,
                     threads_option, to_json, usage_error)


def _ratio(x: float, digits: int) -> str:
    """A compression ratio with enough digits to stay informative below 1 (tiny images grow)."""
    return f"{x:.{digits if x >= 1 else 3}f}"


def _fmt_encode(r: dict) -> str:
    from ..ladder import resolution_name

    e = r["_extra"]
    line = (f"{r['input']} -> {r['output']}: {e['bytes']} bytes, {r['bpp']:.3f} bpp, "
            f"{_ratio(r['ratio_raw'], 1)}:1 vs raw ({_ratio(r['ratio_file'], 2)}:1 vs input), "
            f"PSNR {r['psnr']:.2f} dB, MS-SSIM {r['ms_ssim']:.4f}, q {e['quality']:g}"
            + (f" ({resolution_name(e['scale'])} resolution)" if e.get("scale", 1) != 1 else "") + ", "
            f"{r['seconds']:.2f} s, {r['provider']}")
    for n in e["notes"]:
        line += f"\n  note: {n}"
    return line


def _report(out: Path | None):
    """Where a file's report goes: standard error when standard output carries the file itself."""
    from ..fsutil import is_stdio

    return sys.stderr if is_stdio(out) else sys.stdout


def _print(line: str, out: Path | None, plain: bool = False) -> None:
    """A file's report line (plain: as is, for JSON), after the file itself was written: a report
    that cannot be printed (a full disk behind standard output) says so, and that the file is there."""
    try:
        if plain or _report(out) is sys.stderr:
            print(line, file=_report(out), flush=True)
        else:
            progress.print_line(line)
    except BrokenPipeError:
        raise
    except OSError as exc:
        from ..errors import AecError

        raise AecError(f"{out} was written, but its report could not be printed ({exc.strerror or exc})") from None


def _skip(path: Path, out: Path | None, skip_existing: bool, stale, quiet: bool, as_json: bool) -> bool:
    """Before a file is worked on: the temporary files a killed run (kill -9) left for its output
    go (stale: a StaleParts); then, with --skip-existing, True when out exists already, saying so
    unless --quiet (as the report lines do; with --json, whose objects are those of coded files, on
    standard error)."""
    from ..fsutil import is_stdio, taken

    if out is None or is_stdio(out):
        return False
    stale.remove(out)
    if not skip_existing or not taken(out):
        return False
    line = one_line(f"{path}: skipped ({out} exists)")
    if as_json:
        print(f"aecompress: note: {line}", file=sys.stderr, flush=True)
    elif not quiet:
        progress.print_line(line)
    return True


def _unless_skipped(path: Path, out: Path | None, skip_existing: bool, stale, quiet: bool, as_json: bool,
                    write: Callable[[], dict]) -> dict | None:
    """write()'s report, or None for a file --skip-existing leaves: its output existed, or another
    run wrote it while this one worked (the write then refuses to replace it)."""
    from ..errors import OutputExists

    if _skip(path, out, skip_existing, stale, quiet, as_json):
        return None
    try:
        return write()
    except OutputExists:
        if skip_existing and _skip(path, out, skip_existing, stale, quiet, as_json):
            return None
        raise


@app.command()
def encode(
    # readable=False: an unreadable file fails on its own, with one line, and the others go on
    images: List[Path] = typer.Argument(..., readable=False, help="Images to compress (any format Pillow reads), "
                                        "folders of them, or - for standard input."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Output file (one input) or folder (several, "
                                         "or a name ending in /); - for standard output (the report goes to stderr)."),
    quality: Optional[float] = typer.Option(None, "-q", "--quality", min=1, max=100, help="Quality 1-100 (default 75)."),
    bpp: Optional[float] = typer.Option(None, "--bpp", help="Target bits per pixel (largest file not above it)."),
    psnr: Optional[float] = typer.Option(None, "--psnr", help="Target PSNR in dB (smallest file reaching it)."),
    size: Optional[int] = typer.Option(None, "--size", min=1, help="Target file size in bytes."),
    model: Optional[str] = typer.Option(None, "-m", "--model", callback=nonempty_model, help="Model package name or folder (default: photo)."),
    device: str = device_option(),
    threads: Optional[int] = threads_option(),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per image."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite existing output files."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip images whose output exists "
                                       "(resume an interrupted batch)."),
    quiet: bool = typer.Option(False, "--quiet", help="Print nothing but errors (and skip the reconstruction "
                                                      "that PSNR and MS-SSIM need)."),
    refine: int = typer.Option(0, "--refine", min=0, max=1000, metavar="STEPS",
                               help="Slower; smaller files at equal PSNR: optimise the latent for this image in STEPS "
                                    "gradient steps (50 on 2 cores: about 9 s for a 500x500 photo at -q 75, "
                                    "20 s at -q 95, which codes it upsampled; under a second without). "
                                    "Files decode as usual."),
) -> None:
    """Compress images into .aez files and report bpp, compression ratio, PSNR and MS-SSIM."""
    from ..compress import encode_file, open_codec, plan_outputs
    from ..errors import AecError
    from ..fsutil import StaleParts
    from ..imageio import is_image_name

    if sum(x is not None for x in (quality, bpp, psnr, size)) > 1:
        raise usage_error("use only one of -q, --bpp, --psnr and --size")
    for flag, value in (("-q", quality), ("--bpp", bpp), ("--psnr", psnr)):
        if value is not None and not math.isfinite(value):
            raise bad_value(flag, f"must be a finite number, not {value}")
    for flag, value in (("--bpp", bpp), ("--psnr", psnr)):
        if value is not None and value <= 0:         # as --size 0: no file is that small
            raise bad_value(flag, f"must be above 0, not {value:g}")
    check_skip(skip_existing, force)
    plan = plan_outputs(images, output, ".aez", is_image_name, "images")
    codec = open_codec(model, device, threads, refine)
    stale = StaleParts()

    def one(job: tuple[Path, Path | None, str | None]) -> dict | None:
        path, out, error = job
        if error:
            raise AecError(error)
        # --quiet prints no report, so the reconstruction and its metrics are skipped
        r = _unless_skipped(path, out, skip_existing, stale, quiet, as_json,
                            lambda: encode_file(path, out, codec, force, quality, bpp, size, psnr,
                                                metrics=as_json or not quiet))
        if r is None:
            return None
        if as_json:
            _print(to_json({k: v for k, v in r.items() if not k.startswith("_")}), out, plain=True)
            for n in r["_extra"]["notes"]:          # the JSON object keeps exactly the documented fields
                print(one_line(f"aecompress: note: {r['input']}: {n}"), file=sys.stderr, flush=True)
        elif not quiet:
            _print(_fmt_encode(r), out)
        return r

    run_many(plan, one, "encoding")


@app.command()
def decode(
    files: List[Path] = typer.Argument(..., readable=False,
                                       help=".aez files to decompress, folders of them, or - for standard input."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Output image (one input) or folder (several, "
                                         "or a name ending in /); "
                                          "the extension picks the format (PNG by default); - for PNG on standard output."),
    quality: Optional[int] = typer.Option(None, "-q", "--quality", min=1, max=100,
                                          help="Quality of a lossy output (JPEG, WebP, AVIF; default 95)."),
    model: Optional[str] = typer.Option(None, "-m", "--model", callback=nonempty_model, help="Model package (default: found by the file's model id)."),
    device: str = device_option(),
    threads: Optional[int] = threads_option(),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per file."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite existing output files."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip files whose output exists "
                                       "(resume an interrupted batch)."),
    quiet: bool = typer.Option(False, "--quiet", help="Print nothing but errors."),
) -> None:
    """Decompress .aez files into images."""
    from ..compress import decode_file, plan_outputs
    from ..errors import AecError
    from ..fsutil import StaleParts
    from ..package import load_package

    check_skip(skip_existing, force)
    # hidden files are left out of a folder, as encode leaves them (a Mac's `._cat.aez` beside cat.aez)
    plan = plan_outputs(files, output, ".png", lambda p: p.suffix.lower() == ".aez" and not p.name.startswith("."),
                        ".aez files")
    pkg = load_package(model, device, threads) if model else None
    found: dict = {}                    # models found by id, opened once for all the files
    stale = StaleParts()

    def one(job: tuple[Path, Path | None, str | None]) -> dict | None:
        path, out, error = job
        if error:
            raise AecError(error)
        r = _unless_skipped(path, out, skip_existing, stale, quiet, as_json,
                            lambda: decode_file(path, out, pkg, force, device, threads, cache=found, quality=quality))
        if r is None:
            return None
        if as_json:
            _print(to_json({k: v for k, v in r.items() if not k.startswith("_")}), out, plain=True)
            for n in r["_notes"]:           # the JSON object keeps its fields; notes as encode's
                print(one_line(f"aecompress: note: {r['input']}: {n}"), file=sys.stderr, flush=True)
        elif not quiet:
            _print(f"{r['input']} -> {r['output']}: {r['width']}x{r['height']}, {r['seconds']:.2f} s, {r['provider']}"
                   + "".join(f"\n  note: {n}" for n in r["_notes"]), out)
        return r

    run_many(plan, one, "decoding")


@app.command()
def info(
    files: List[Path] = typer.Argument(..., readable=False, help=".aez files, or - for standard input."),
    model: Optional[str] = typer.Option(None, "-m", "--model", callback=nonempty_model, help="A model package (folder or name) to look "
                                        "the file's model up in, beside the installed ones."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per file."),
) -> None:
    """Show .aez files' headers without decoding them."""
    from ..compress import file_info
    from ..errors import AecError
    from ..package import load_package

    if len(files) > 1 and any(str(f) == "-" for f in files):
        raise AecError("'-' (standard input) must be the only input")
    extra = [load_package(model)] if model else None
    shown = []

    def one(path: Path) -> dict:
        d = file_info(path, extra)
        if as_json:
            print(to_json(d), flush=True)
            return d
        if d["model"] is None:
            d["model"] = ("neither the package given with -m nor an installed one" if model else
                          "not installed (name its package with -m, or put the package in a folder that "
                          "AECOMPRESS_MODELS lists)")
        if shown:
            print()                                  # a blank line between files
        shown.append(path)
        for k, v in d.items():
            print(f"{k:>14}: {round(v, 4) if isinstance(v, float) else v}", flush=True)   # --json: full precision
        return d

    run_many(files, one, "reading")


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List installed model packages and their measured rate-distortion."""
    from ..errors import ModelError
    from ..package import installed_packages

    rows, problems = [], []
    for p in installed_packages(problems):
        m = p.manifest
        try:
            model_id = p.model_id[:8].hex()          # reads every graph: a missing one shows here
        except ModelError as exc:
            problems.append(str(exc))
            continue
        rows.append({"name": p.name, "kind": p.kind, "codec": m.get("codec"), "channels": p.channels,
                     "path": str(p.path), "model_id": model_id,
                     "decodes": [h[:16] for h in m.get("decodes", [])],
                     "description": m.get("description", ""), "measured": m.get("measured", {})})
    for problem in problems:                         # the broken ones are named, the others still listed
        print(one_line(f"aecompress: warning: skipped {problem}"), file=sys.stderr)
    if as_json:
        print(to_json(rows, indent=2))
        return
    if not rows:
        print("no model packages installed")
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Installed model packages")
    t.add_column("name", no_wrap=True)
    t.add_column("kind")
    t.add_column("model id", no_wrap=True)
    t.add_column("measured", ratio=1)
    for r in rows:
        ids = "\n".join([r["model_id"]] + [f"(and {h})" for h in r["decodes"]])   # older ids whose files it decodes
        t.add_row(one_line(r["name"]), f"{r['kind']}" + (f" ({r['codec']})" if r["codec"] else ""), ids,
                  one_line(_measured_summary(r["measured"])))    # a manifest's text: no escape codes
    console = Console()
    console.print(t)
    for r in rows:
        console.print(one_line(f"{r['name']}: {r['path']}"), highlight=False, soft_wrap=True, markup=False)


def _measured_summary(meas) -> str:
    """One line of what a manifest says was measured: a codec's summary, a denoiser's PSNRs."""
    if not isinstance(meas, dict) or not meas:
        return "-"
    if meas.get("summary"):
        return str(meas["summary"])
    sig = [(k[len("psnr_sigma"):], v) for k, v in meas.items() if k.startswith("psnr_sigma")]
    if sig:
        parts = [f"sigma {s}: {v:.2f} dB" for s, v in sig]
        if "psnr_clean_input" in meas:
            parts.append(f"clean input kept at {meas['psnr_clean_input']:.1f} dB")
        where = str(meas.get("set") or "")
        if not where[:1].isdigit():                 # "data/val/photos", or nothing: say how many
            where = f"{meas.get('images', '?')} photos" + (f" of {where}" if where else "")
        return "; ".join(parts) + f" ({where}, blind)"
    if "mean_psnr" in meas and "bits_per_pixel" in meas:      # a dense (fixed-size) codec
        return (f"{meas['bits_per_pixel']:.3f} bpp ({meas.get('mean_file_bytes', 0):.0f} bytes a file), "
                f"{meas['mean_psnr']:.2f} dB on {meas.get('images', '?')} {meas.get('set', 'images')}")
    return "-"
