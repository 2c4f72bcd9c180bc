"""Whole-process speed: `aecompress encode` and `aecompress decode` as new processes, side by side.

    python bench/speed.py [IMAGE] [-m photo] [--compare NAME=MODEL ...] [--rev NAME=GITREV ...] [--runs 7]
                          [--out bench/results]

The issue's target is encode + decode of a 768x512 photo in at most 1 s on a 2-core CPU, whole
process (Python start-up, imports, model loading, image I/O and the report included). IMAGE
(default: the first validation photo of at least 768x512) is centre-cropped to 768x512 (a smaller
one scaled up first, keeping its shape). Every run times, for each model
in turn (interleaved, so a busy moment of a shared machine hits all of them alike):

* `encode` as a user runs it: it reconstructs the image to report PSNR and MS-SSIM;
* `encode --quiet`: no report, so no reconstruction (as cwebp without -print_psnr);
* `decode`.

It prints medians and minima, and writes speed.json and speed.png to OUT. `--rev old=c57de5f` adds
the code of another commit (a temporary git worktree, run with its own package and models), so a
change's effect is measured side by side on the same machine at the same moment, never against a
number remembered from a quieter day.

The package's bytecode is compiled first, as `pip install` does: an editable install never writes
it when PYTHONDONTWRITEBYTECODE is set (as on this machine), and every run would then recompile
about fifteen modules (some 30 ms a process) that an installed copy loads ready-made.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("encode", "encode_quiet", "decode")


def crop_768x512(path: Path, dst: Path) -> None:
    """The centre 768x512 of an image; a smaller one is first scaled up, keeping its shape, until it
    covers 768x512 (it used to be stretched to exactly that: a 500x500 photo lost its aspect)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = max(768 / im.width, 512 / im.height)
        if scale > 1:
            im = im.resize((max(768, round(im.width * scale)), max(512, round(im.height * scale))), Image.LANCZOS)
        left, top = (im.width - 768) // 2, (im.height - 512) // 2
        im.crop((left, top, left + 768, top + 512)).save(dst)


def default_image() -> Path:
    """The first validation photo at least 768x512 (no scaling), else the first one."""
    photos = sorted((ROOT.parent / "shared" / "data" / "val" / "photos").glob("*.png"))
    if not photos:
        raise SystemExit("speed.py: error: no IMAGE given and no photos in ../shared/data/val/photos")
    for p in photos:
        with Image.open(p) as im:
            if im.width >= 768 and im.height >= 512:
                return p
    return photos[0]


def compile_bytecode(root: Path = ROOT) -> bool:
    """Compile a checkout's package to __pycache__ (what pip does at install); True when it worked."""
    import compileall
    return bool(compileall.compile_dir(root / "aecompress", quiet=1))


def measure(variants: dict[str, tuple[str, dict | None]], image: Path, runs: int = 7) -> dict:
    """{name: {step: [seconds per run]}} for the three commands; variants (name: (model, environment
    or None for this one)) interleaved within each run."""
    exe = [sys.executable, "-m", "aecompress"]
    times = {name: {s: [] for s in STEPS} for name in variants}
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "photo.png"
        crop_768x512(image, src)
        for _ in range(runs):
            for name, (model, env) in variants.items():
                aez, png = Path(d) / f"{name}.aez", Path(d) / f"{name}.png"
                cmds = {"encode": ["encode", str(src), "-o", str(aez), "-m", model, "--force"],
                        "encode_quiet": ["encode", str(src), "-o", str(aez), "-m", model, "--force", "--quiet"],
                        "decode": ["decode", str(aez), "-o", str(png), "-m", model, "--force", "--quiet"]}
                for step in STEPS:
                    t0 = time.perf_counter()
                    r = subprocess.run(exe + cmds[step], capture_output=True, text=True, cwd=d, env=env)
                    if r.returncode:                 # say why (an unknown model, say), not "exit status 4"
                        last = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
                        raise RuntimeError(f"{name}: aecompress {step.replace('_quiet', ' --quiet')} failed: {last}")
                    times[name][step].append(time.perf_counter() - t0)
    return times


def checkout(rev: str, where: Path) -> dict:
    """A worktree of `rev` at `where`, compiled; the environment that runs its package."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(where), rev], check=True)
    compile_bytecode(where)
    return dict(os.environ, PYTHONPATH=str(where))


def summarise(times: dict) -> dict:
    out = {}
    for name, t in times.items():
        both = [e + d for e, d in zip(t["encode"], t["decode"])]
        quiet = [e + d for e, d in zip(t["encode_quiet"], t["decode"])]
        out[name] = {**{f"{s}_median_s": statistics.median(v) for s, v in t.items()},
                     "encode_decode_median_s": statistics.median(both), "encode_decode_min_s": min(both),
                     "quiet_encode_decode_median_s": statistics.median(quiet), "quiet_encode_decode_min_s": min(quiet)}
    return out


def plot(summary: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names = list(summary)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = np.arange(len(names))
    for i, (key, label) in enumerate((("encode_decode", "encode + decode"),
                                      ("quiet_encode_decode", "encode --quiet + decode"))):
        med = [summary[n][f"{key}_median_s"] for n in names]
        lo = [summary[n][f"{key}_median_s"] - summary[n][f"{key}_min_s"] for n in names]
        ax.bar(x + (i - 0.5) * 0.38, med, 0.38, yerr=[lo, [0] * len(names)], label=label, capsize=3)
    ax.axhline(1.0, color="k", lw=1, ls="--", label="target (1 s)")
    ax.set_xticks(x, names)
    ax.set_ylabel("seconds, whole process (median; whisker: min)")
    ax.set_title("768x512 photo, new processes")
    ax.set_ylim(0, 1.4 * max(max(v["encode_decode_median_s"] for v in summary.values()), 1.0))
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", nargs="?", type=Path, default=None)
    ap.add_argument("-m", "--model", default="photo")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=MODEL")
    ap.add_argument("--rev", action="append", default=[], metavar="NAME=GITREV",
                    help="also time the code of another commit (e.g. old=HEAD~3), side by side")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = ap.parse_args()
    if a.runs < 1:
        ap.error("--runs must be at least 1")
    for spec in a.compare + a.rev:
        if "=" not in spec or not spec.split("=", 1)[0] or not spec.split("=", 1)[1]:
            ap.error(f"'{spec}': use NAME=MODEL for --compare, NAME=GITREV for --rev")
    if a.image is not None and not a.image.is_file():
        ap.error(f"{a.image}: no such file")
    image = a.image or default_image()
    models = {"ours": a.model, **dict(spec.split("=", 1) for spec in a.compare)}
    revs = dict(spec.split("=", 1) for spec in a.rev)
    compiled = compile_bytecode()
    # the commands run in a temporary folder: a package given as a relative path must stay findable
    variants = {name: (str(Path(m).resolve()) if Path(m).exists() else m, None) for name, m in models.items()}
    trees = Path(tempfile.mkdtemp(prefix="speed-revs-"))
    try:
        for name, rev in revs.items():
            variants[name] = (a.model, checkout(rev, trees / name))
        summary = summarise(measure(variants, image, a.runs))
    finally:
        for name in revs:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(trees / name)],
                           capture_output=True)
        shutil.rmtree(trees, ignore_errors=True)
    print(f"whole process, 768x512 crop of {image.name}, {a.runs} runs, medians in seconds (min in brackets)\n")
    print("| model | encode | encode --quiet | decode | encode + decode | encode --quiet + decode |")
    print("|---|---|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['encode_median_s']:.2f} | {s['encode_quiet_median_s']:.2f} | {s['decode_median_s']:.2f} "
              f"| {s['encode_decode_median_s']:.2f} ({s['encode_decode_min_s']:.2f}) "
              f"| {s['quiet_encode_decode_median_s']:.2f} ({s['quiet_encode_decode_min_s']:.2f}) |")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "speed.json").write_text(json.dumps(
        {"image": image.name, "size": [768, 512], "runs": a.runs, "models": models, "revs": revs, "summary": summary,
         "machine": f"{platform.machine()}, {os.cpu_count()} cores", "bytecode_compiled": compiled, "date": time.strftime("%Y-%m-%d")}, indent=2) + "\n")
    plot(summary, a.out / "speed.png")
    print(f"\nwrote {a.out / 'speed.json'} and {a.out / 'speed.png'}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import run

    run(main)
