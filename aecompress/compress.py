"""Compress and decompress images and files: the operations the CLI and the GUI both call.

Rate control: the analysis transform runs once per resolution; a target (bpp, bytes or PSNR) is
then met by bisection over the model's continuous quality scale (its resolution ladder: see
aecompress.ladder), re-running only the cheap quantize/entropy coding steps (and the synthesis, for
a PSNR target).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import container
from . import codec as codec_module
from .codec import Analysis, Codec
from .errors import AecError, ModelError, OutputExists
from .fsutil import (STDIO, STDOUT_ALIASES, first_writers, is_stdio, read_stdin, refuse_device, write_bytes_atomic,
                     taken, write_stdout)
from .imageio import (Picture, ico_smaller_sizes, image_bytes, read_image, save_image, srgb_conversion,
                      to_channels8, to_rgb8, to_srgb)
from .ladder import resolution_name
from .metrics import ms_ssim, psnr
from .package import DEFAULT_CODEC, MODEL_HINT, ModelPackage, find_by_id, load_package

DEFAULT_QUALITY = 75
SEARCH_STEPS = 12


@dataclass
class Encoded:
    data: bytes
    recon: np.ndarray | None     # (H, W, C) uint8 as the decoder will produce it (None: not asked for)
    reference: np.ndarray        # (H, W, C) uint8 that was coded (after mode conversion)
    position: float              # on the codec's quality scale (Codec.position_to_quality gives 1-100)
    scale: int = 1               # coded at 1/scale resolution
    notes: list[str] = field(default_factory=list)


# --refine with a target: the refined file is kept only when it is better at the target (codec.md)
REFINE_NOT_KEPT = "refinement found no better file for this target; the plain encoding is kept"


def coding_input(pic: Picture, codec: Codec) -> tuple[np.ndarray, list[str]]:
    """The pixels a codec will code for a picture (mode converted), and notes on what was lost."""
    container.check_size(pic.width, pic.height)
    notes = list(pic.notes)
    if pic.has_alpha:
        notes.append("alpha channel dropped (the codec stores colour only)")
    if pic.bits == 16:
        notes.append("16-bit samples reduced to 8 bits")
    if pic.frames > 1 and pic.format == "TIFF":     # a scan's pages, not an animation
        notes.append(f"multi-page TIFF: only the first of its {pic.frames} pages is coded")
    elif pic.frames > 1:
        notes.append(f"animated image: only the first of its {pic.frames} frames is coded")
    if pic.info.get("extra_images"):
        notes.append("the JPEG's extra image (an HDR gain map, a depth map or a second view) is not coded"
                     if pic.info["extra_images"] == 1 else
                     f"the JPEG's {pic.info['extra_images']} extra images (HDR gain map, depth map, views) are not coded")
    if ico_smaller_sizes(pic):
        notes.append(f"an icon of {len(ico_smaller_sizes(pic)) + 1} sizes: only the largest, "
                     f"{pic.width}x{pic.height}, is coded")
    if codec.channels == 1 and pic.mode not in ("L", "LA"):
        notes.append("colour converted to greyscale (the model is greyscale)")
    if pic.mode in ("RGB", "RGBA") and srgb_conversion(pic.icc):
        # .aez files hold sRGB (they carry no profile): a photo in another RGB space (Display P3,
        # Adobe RGB) is converted, else it would decode with washed-out or shifted colours; an sRGB
        # profile (most cameras') costs no copy of the pixels
        srgb, profile = to_srgb(to_rgb8(pic), pic.icc)
        notes.append(f"colours converted from {profile} to sRGB (.aez files hold sRGB)")
        pic = Picture(srgb, "RGB", 8)
    return to_channels8(pic, codec.channels), notes


def _search(lo: float, hi: float, ok, steps: int = SEARCH_STEPS, want_high: bool = True):
    """Bisection for the highest (want_high) or lowest position in [lo, hi] where ok(position)
    holds (monotone): (position, ok's result), or None where it holds nowhere.

    The segment's ends are tried first: a segment wholly inside or wholly outside the target (every
    rung of the ladder but one, for most targets) costs one or two codings instead of `steps`. The
    ends tried are one bisection step inside [lo, hi], the farthest the bisection itself reaches: a
    position on the border of two rungs may code on either rung, as float rounding has it."""
    step = (hi - lo) / 2 ** steps
    lo, hi = lo + step, hi - step
    near, far = (hi, lo) if want_high else (lo, hi)
    res = ok(near)
    if res is not None:
        return near, res
    res = ok(far)
    if res is None:
        return None
    return _bisect(lo, hi, ok, steps, want_high, best=(far, res))


def _bisect(lo: float, hi: float, ok, steps: int = SEARCH_STEPS, want_high: bool = True, best=None):
    """`steps` halvings of [lo, hi] towards the border where ok(position) stops (want_high) or starts
    holding: the last (position, result) where it held, else `best`."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        res = ok(mid)
        if res is not None:
            best = (mid, res)
            lo, hi = (mid, hi) if want_high else (lo, mid)
        else:
            lo, hi = (lo, mid) if want_high else (mid, hi)
    return best


def encode_picture(pic: Picture, codec: Codec, quality: float | None = None, target_bpp: float | None = None,
                   target_size: int | None = None, target_psnr: float | None = None,
                   analysis: Analysis | None = None, reconstruct: bool = True,
                   check: Callable[[], None] | None = None, refine: int | None = None) -> Encoded:
    """Code a picture at a quality or for a target. analysis: this picture's analysis from an
    earlier call (the GUI keeps it while the user moves the target), else computed here.
    reconstruct=False leaves Encoded.recon None unless the search made it anyway (the synthesis and
    the metrics after it are about a third of a whole `encode` process; only reports and previews
    need them). check, when given, is called between steps (every coding of a search, every tile)
    and may raise to cancel. refine: steps of latent refinement (None: the codec's setting)."""
    pixels, notes = coding_input(pic, codec)
    if analysis is None:
        analysis = codec.analyse(pixels, check)
    mode, bits, dropped = pic.mode, pic.bits, pic.has_alpha
    top = codec.span
    if top == 0 and (quality, target_bpp, target_size, target_psnr) != (None, None, None, None):
        notes.append(f"model {codec.pkg.name} codes at one rate: -q, --bpp, --size and --psnr change nothing")
    ref_px = in_mode(pixels, mode)          # PSNR is measured in the layout the decoder writes

    steps = codec.refine if refine is None else max(0, int(refine))
    refining = steps > 0 and codec.can_refine()
    if steps > 0 and not refining:
        notes.append(f"{codec.refine_problem()}: --refine changes nothing")
    targeted = (target_bpp, target_size, target_psnr) != (None, None, None)

    def run(position: float, refine: bool = not targeted):
        # a target's search codes the image a dozen times or more, unrefined; its answer is refined after
        if check is not None:
            check()
        return codec.code(analysis, position, mode, bits, dropped, refine=steps if refine else 0, check=check)

    def segment(u: float) -> tuple[float, float]:
        return next(((lo, hi) for lo, hi in segments if lo <= u <= hi), (0.0, float(top)))

    def rebuild(st: dict) -> np.ndarray:
        return codec.reconstruct(st, pic.height, pic.width, check)

    recon = None
    # Each rung of the resolution ladder is searched on its own: where one resolution hands over to
    # the other differs from image to image, so the better of the rungs' answers is kept.
    segments = codec.ladder.intervals()
    if target_bpp is not None or target_size is not None:
        limit = target_size if target_size is not None else target_bpp * pic.width * pic.height / 8

        def fits(u: float):
            data, st = run(u)
            return (data, st) if len(data) <= limit else None

        best = fits(float(top))                 # often the highest quality already fits
        if best is None:
            candidates = []
            for lo, hi in segments:
                found = _search(lo, hi, fits)
                if found is not None:
                    candidates.append(found[1])
            if not candidates:
                best = run(0.0)
                n = len(best[0])
                asked = f"{target_size:,} bytes" if target_size is not None else f"{target_bpp:g} bpp"
                notes.append(f"target {asked} not reachable: the smallest file, at the lowest quality, is {n:,} bytes "
                             f"({n * 8 / (pic.width * pic.height):.3f} bpp)")
            elif len(candidates) == 1:
                best = candidates[0]
            else:
                scored = []
                for data, st in candidates:
                    rec = rebuild(st)
                    scored.append((psnr(ref_px, in_mode(rec, mode)), data, st, rec))
                _, data, st, recon = max(scored, key=lambda t: t[0])
                best = data, st
        data, st = best
        if refining and len(data) <= limit:
            # refinement changes the file's size at a position (it may spend fewer bits, or buy
            # quality with more): refined at the position whose unrefined size, scaled by that
            # change, fills the limit, else at the position found; kept when better than unrefined
            at = run(st["position"], True)
            room = limit * len(data) / len(at[0])
            lo, hi = segment(st["position"])
            found = _search(lo, hi, lambda u: u if len(run(u)[0]) <= room else None)
            tries = ([run(found[0], True)] if found and found[0] != st["position"] else []) + [at]
            kept = False
            for refined in tries:
                if len(refined[0]) <= limit:
                    rec_r = rebuild(refined[1])
                    recon = rebuild(st) if recon is None else recon
                    if psnr(ref_px, in_mode(rec_r, mode)) > psnr(ref_px, in_mode(recon, mode)):
                        (data, st), recon, kept = refined, rec_r, True
                    break
            if not kept:
                notes.append(REFINE_NOT_KEPT)
    elif target_psnr is not None:
        def attempt(u: float):
            data, st = run(u)
            rec = rebuild(st)
            return data, st, rec, psnr(ref_px, in_mode(rec, mode)) >= target_psnr

        def reaches(u: float):
            data, st, rec, ok = attempt(u)
            return (data, st, rec) if ok else None

        candidates = []
        for lo, hi in segments:
            found = _search(lo, hi, reaches, want_high=False)
            if found is not None:
                candidates.append(found[1])
        if candidates:
            data, st, recon = min(candidates, key=lambda c: len(c[0]))
            if refining:
                # refinement changes the PSNR at a position (up, or down for fewer bits): refined at
                # the position whose unrefined PSNR misses the target by that change, when the file
                # is smaller (kept only if so)
                d_p, s_p = run(st["position"], True)
                r_p = rebuild(s_p)
                gain = psnr(ref_px, in_mode(r_p, mode)) - psnr(ref_px, in_mode(recon, mode))
                lo, hi = segment(st["position"])
                found = _search(lo, hi, lambda u: (u,) if psnr(ref_px, in_mode(rebuild(run(u)[1]), mode))
                                >= target_psnr - gain else None, want_high=False)
                tries = ([found[0]] if found and found[0] != st["position"] else []) + [st["position"]]
                for u in tries:
                    d_r, s_r, r_r = (d_p, s_p, r_p) if u == st["position"] else (*run(u, True), None)
                    r_r = rebuild(s_r) if r_r is None else r_r
                    if psnr(ref_px, in_mode(r_r, mode)) >= target_psnr and len(d_r) < len(data):
                        data, st, recon = d_r, s_r, r_r
                        break
                else:
                    notes.append(REFINE_NOT_KEPT)
        else:
            data, st, recon, _ = attempt(float(top))
            notes.append(f"target {target_psnr} dB not reachable with this model; used the highest quality")
    else:
        data, st = run(codec.quality_to_position(DEFAULT_QUALITY if quality is None else quality))
        if reconstruct:
            # the latent is all the synthesis needs: the coded integers and the means (about
            # 200 MB on a 24-megapixel photo) and the analysis go before it runs
            y_hat = codec.latent_from_state(st)
            st = {"position": st["position"], "scale": st["scale"], "instead_of": st.get("instead_of")}
            del analysis
            recon = codec.render(y_hat, st["scale"], pic.height, pic.width, check)
            del y_hat
    if recon is None and reconstruct:
        recon = rebuild(st)
    if st.get("instead_of") is not None:
        # a 45-megapixel photo at -q 90: the quality reported is where that file sits on the ladder
        notes.append(f"too large to code at {resolution_name(st['instead_of'])} resolution (over "
                     f"{codec_module.MAX_UPSCALED_PIXELS / 1e6:g} million coded pixels): coded at "
                     f"{resolution_name(st['scale'])} resolution instead")
    return Encoded(data, recon, pixels, st["position"], st["scale"], notes)


def in_mode(pixels: np.ndarray, mode: str) -> np.ndarray:
    """Pixels in the channel layout of a source of this mode: what the decoder writes (a greyscale
    source coded by a colour model comes back as the mean of the three decoded channels)."""
    if mode in ("L", "LA") and pixels.shape[2] == 3:
        return np.round(pixels.astype(np.float32).mean(axis=2, keepdims=True)).astype(np.uint8)
    return pixels


def decoded_to_mode(pixels: np.ndarray, header: container.Header) -> np.ndarray:
    """Decoded pixels in the source's channel layout (greyscale sources come back greyscale)."""
    return in_mode(pixels, header.mode)


def quality_report(enc: "Encoded", mode: str, check: Callable[[], None] | None = None) -> tuple[float, float]:
    """(PSNR, MS-SSIM) of the reconstruction against what was coded, both in the source's channel
    layout: the figures a user gets by comparing the decoded file with the input."""
    ref, rec = in_mode(enc.reference, mode), in_mode(enc.recon, mode)
    return psnr(ref, rec), ms_ssim(ref, rec, check)


def _can_decode(pkg: ModelPackage) -> None:
    """ModelError unless the package can decode: its manifest makes a codec, its tables fit it, its
    synthesis opens (find_by_id then tries the next package with the file's model id)."""
    Codec(pkg).check_tables()
    pkg.session("synthesis")


def decode_bytes(data: bytes, pkg: ModelPackage | None = None, device: str = "auto",
                 threads: int | None = None, extra: list[ModelPackage] | None = None,
                 check: Callable[[], None] | None = None, hint: str = MODEL_HINT, cache: dict | None = None
                 ) -> tuple[np.ndarray, container.Header, Codec]:
    """The decoded pixels, the header and the codec that decoded them. pkg: the model, else found
    by the file's model id among `extra` and the installed packages (hint: what the error says to
    do when none matches); cache, a dict kept across the files of a batch, keeps the packages found
    by id, with their open sessions (finding one hashes every installed package). check is called
    between tiles and may raise to cancel."""
    header = container.read_header(data)
    if pkg is None:
        pkg = cache.get(header.model_id) if cache is not None else None
        if pkg is None:
            pkg = find_by_id(header.model_id, extra, device, threads, hint, usable=_can_decode)
            if cache is not None:
                cache[header.model_id] = pkg
    elif not pkg.decodes(header.model_id):
        raise ModelError(f"model '{pkg.name}' does not match this file (file needs model id {header.model_id.hex()})")
    codec = Codec(pkg)
    pixels, header = codec.decode(data, check)
    return decoded_to_mode(pixels, header), header, codec


# -- files ------------------------------------------------------------------------------------

STDIN_NAME, STDOUT_NAME = "<stdin>", "<stdout>"       # how reports name the standard streams


def read_input(path: Path) -> tuple[bytes, str]:
    """A file's bytes (all of standard input for "-") and the name reports give it."""
    if is_stdio(path):
        return read_stdin(), STDIN_NAME
    try:
        if path.is_dir():
            raise AecError(f"{path} is a folder")
        refuse_device(path)
        return path.read_bytes(), str(path)
    except FileNotFoundError:
        raise AecError(f"{path}: no such file") from None
    except OSError as exc:
        raise AecError(f"{path}: cannot read ({exc.strerror})") from None


def output_for(inp: Path, output: Path | None, many: bool, suffix: str) -> Path:
    if output is None and is_stdio(inp):
        raise AecError("reading standard input needs -o: a file, or - for standard output")
    if output is None:
        return inp.with_suffix(suffix) if inp.suffix.lower() != suffix else inp.with_name(inp.name + suffix)
    if many or output.is_dir():
        if is_stdio(inp):       # the folder would get a file named "-.aez", which the shell reads as an option
            raise AecError(f"reading standard input needs -o to name a file (or - for standard output), "
                           f"not the folder {output}")
        return output / (inp.stem + suffix)
    return output


def plan_outputs(inputs: Sequence[Path], output: Path | str | None, suffix: str,
                 accept: Callable[[Path], bool], what: str) -> list[tuple[Path, Path | None, str | None]]:
    """(input, output, error) for each file to process. A folder stands for the files directly in it
    that `accept` takes (`what` names them in the error for a folder without any). An input whose
    output an earlier input of the same run already takes gets an error instead of an output, so
    one run never overwrites its own results (a/cat.png and b/cat.jpg into one folder), and an
    input that would be its own output gets an error (even --force never replaces an input).
    "-" as an input is standard input, and -o - standard output; each takes a single file. An
    output named with a trailing slash is a folder, whatever the number of inputs. A file given
    twice (also through a folder) is processed once, as `aecompress denoise` does."""
    if output is not None and str(output) in STDOUT_ALIASES:
        output = STDIO                             # -o /dev/stdout: written as -o - (never renamed over)
    as_folder = output is not None and str(output).endswith(("/", os.sep))
    output = Path(output) if output is not None else None
    files: list[tuple[Path, str | None]] = []
    folders = False
    for p in map(Path, inputs):
        if is_stdio(p) and len(inputs) > 1:
            raise AecError("'-' (standard input) must be the only input")
        if is_stdio(p):
            files.append((p, None))
        elif p.is_dir():
            folders = True
            try:
                found = sorted(q for q in p.iterdir() if q.is_file() and accept(q))
            except OSError as exc:                 # an unreadable folder fails alone
                files.append((p, f"{p}: cannot read this folder ({exc.strerror or exc})"))
                continue
            files += [(q, None) for q in found] or [(p, f"{p}: no {what} in this folder")]
        else:
            files.append((p, None))
    # a file given twice (`cat.png ./cat.png`, or also through its folder) runs once: the same
    # entry of the same real folder (`link/../a.png` is the a.png beside the link's target), while
    # two links to one file are two inputs with two outputs
    unique, seen = [], set()
    for p, error in files:
        key = p if is_stdio(p) or error else os.path.join(os.path.realpath(p.parent), p.name)
        if key not in seen:
            seen.add(key)
            unique.append((p, error))
    files = unique
    many = len(files) > 1 or folders or as_folder
    if many and is_stdio(output):
        raise AecError("-o - (standard output) takes a single input")
    if many and output is not None and output.exists() and not output.is_dir():
        if as_folder:
            raise AecError(f"-o {output}{os.sep} names a folder, and {output} is a file")
        raise AecError(f"-o {output}: several inputs need a folder, and {output} is a file")
    outs = [None if error else output_for(inp, output, many, suffix) for inp, error in files]
    plan = []
    inputs = {os.path.realpath(p) for p, e in files if e is None and not is_stdio(p)}
    for i, ((inp, error), out, first) in enumerate(zip(files, outs, first_writers(outs))):
        if first is not None and first != i:
            earlier = files[first][0]
            error, out = f"{inp}: its output {out} is also the output of {earlier}", None
        elif (out is not None and not is_stdio(out) and not is_stdio(inp)
              and os.path.realpath(out) == os.path.realpath(inp)):      # realpath: no error on a link loop
            error, out = f"{inp}: refusing to write the output over its own input", None
        elif out is not None and not is_stdio(out) and os.path.realpath(out) in inputs:   # through a link
            error, out = f"{inp}: its output {out} would replace an input of this run", None
        plan.append((inp, out, error))
    return plan


def encode_file(inp: Path, out: Path, codec: Codec, force: bool = False, quality: float | None = None,
                target_bpp: float | None = None, target_size: int | None = None,
                target_psnr: float | None = None, metrics: bool = True,
                check: Callable[[], None] | None = None) -> dict:
    """Encode one image file; the report's psnr and ms_ssim are None with metrics=False (then the
    reconstruction is not made at all: `aecompress encode --quiet`, like cwebp without -print_psnr).
    check: as encode_picture's (called between steps; may raise to cancel, before anything is written)."""
    t0 = time.perf_counter()
    if not is_stdio(out) and taken(out) and not force:
        raise OutputExists(f"{out} exists (use --force to overwrite or --skip-existing)")
    if is_stdio(inp) or (inp.exists() and not inp.is_file()):     # a pipe has no size to stat: read it
        source, in_name = read_input(inp)
        pic, in_size = read_image(in_name, source), len(source)
    else:
        pic, in_size, in_name = read_image(inp), inp.stat().st_size, str(inp)
    try:
        enc = encode_picture(pic, codec, quality, target_bpp, target_size, target_psnr, reconstruct=metrics,
                             check=check)
    except AecError as exc:         # "too large", "takes 28x28 images": say which image
        if in_name in str(exc):
            raise
        raise type(exc)(f"{in_name}: {exc}") from None
    if is_stdio(out):
        write_stdout(enc.data)
        size, out_name = len(enc.data), STDOUT_NAME
    else:
        write_bytes_atomic(out, enc.data, force)
        size, out_name = out.stat().st_size, str(out)
    quality = quality_report(enc, pic.mode) if metrics else (None, None)
    seconds = time.perf_counter() - t0
    pixels = pic.width * pic.height
    report = {
        "input": in_name, "output": out_name,
        "bpp": size * 8 / pixels,
        "ratio_raw": pixels * 3 / size,
        "ratio_file": in_size / size,
        "psnr": quality[0],
        "ms_ssim": quality[1],
        "seconds": seconds,
        "provider": codec.pkg.provider,
    }
    extras = {"bytes": size, "width": pic.width, "height": pic.height,
              "quality": round(codec.position_to_quality(enc.position), 1), "scale": enc.scale,
              "model": codec.pkg.name, "notes": enc.notes}
    return {**report, "_extra": extras}


def decode_file(inp: Path, out: Path, pkg: ModelPackage | None = None, force: bool = False,
                device: str = "auto", threads: int | None = None, extra: list[ModelPackage] | None = None,
                hint: str = MODEL_HINT, cache: dict | None = None, quality: int | None = None) -> dict:
    """Decode one .aez file to an image file (extra, hint and cache as for decode_bytes; quality:
    of a lossy output format, default imageio.DEFAULT_QUALITY)."""
    t0 = time.perf_counter()
    if not is_stdio(out) and taken(out) and not force:
        raise OutputExists(f"{out} exists (use --force to overwrite or --skip-existing)")
    data, name = read_input(inp)
    try:
        pixels, header, codec = decode_bytes(data, pkg, device, threads, extra, hint=hint, cache=cache)
    except AecError as exc:
        raise type(exc)(f"{name}: {exc}") from None
    notes = []
    if is_stdio(out):
        write_stdout(image_bytes(pixels))           # PNG: there is no extension to name another format
    else:
        note = save_image(out, pixels, force=force, quality=quality)
        if note:
            notes.append(note)
    return {"input": name, "output": STDOUT_NAME if is_stdio(out) else str(out),
            "width": header.width, "height": header.height,
            "bpp": len(data) * 8 / (header.width * header.height), "model": codec.pkg.name,
            "seconds": time.perf_counter() - t0, "provider": codec.pkg.provider, "_notes": notes}


def open_codec(model: str | None, device: str = "auto", threads: int | None = None, refine: int = 0) -> Codec:
    return Codec(load_package(model or DEFAULT_CODEC, device, threads), refine=refine)


def file_info(path: Path, extra: list[ModelPackage] | None = None) -> dict:
    """The header of an .aez file (`aecompress info`), with the name of its model and the quality
    when the model is installed (or among `extra`)."""
    data, name = read_input(path)
    try:
        header = container.read_header(data)
    except AecError as exc:
        raise type(exc)(f"{name}: {exc}") from None
    info = {"file": name, "bytes": len(data), **header.as_dict(),
            "resolution": resolution_name(header.scale), "bpp": len(data) * 8 / (header.width * header.height)}
    try:
        codec = Codec(find_by_id(header.model_id, extra, usable=Codec))
        info["model"] = codec.pkg.name
        info["quality"] = round(codec.position_to_quality(codec.ladder.position(header.scale, header.quality)), 1)
    except AecError:
        info["model"] = None
    return info


__all__ = ["Encoded", "coding_input", "encode_picture", "in_mode", "quality_report", "decode_bytes", "encode_file", "decode_file", "open_codec",
           "file_info", "output_for", "plan_outputs", "Analysis", "asdict"]
