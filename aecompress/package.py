"""Model packages: a folder of ONNX graphs, a tables file and a JSON manifest, found by name or path.

Search order for a name: $AECOMPRESS_MODELS (a path list), the shipped models (this checkout's
models/ folder, which an installed wheel carries as aecompress/_models), then
~/.local/share/aecompress/models. The model id is a content hash of everything that decides the
bitstream (graphs, tables and the manifest's coding fields), so a file names exactly the model that
made it, and editing the manifest's notes or measurements does not change it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import ModelError, UnknownModelError
from .session import Session, open_session

MANIFEST = "manifest.json"
FORMAT = "aecompress-model/1"
# Manifest keys that describe provenance, measurements or encoder-only choices: they do not change
# what a decoder computes from a file.
NON_CODING_KEYS = {"description", "training", "measured", "notes", "license", "encoder", "quality_anchor", "decodes"}
DEFAULT_CODEC = "photo"
DEFAULT_DENOISER = "denoise"


def search_path() -> list[Path]:
    paths: list[Path] = []
    env = os.environ.get("AECOMPRESS_MODELS")
    if env:
        paths += [Path(p) for p in env.split(os.pathsep) if p]
    here = Path(__file__).resolve().parent
    bundled = here / "_models"              # a wheel carries models/ as aecompress/_models (pyproject.toml)
    paths.append(bundled if bundled.is_dir() else here.parent / "models")
    paths.append(Path.home() / ".local" / "share" / "aecompress" / "models")
    return paths


@dataclass
class ModelPackage:
    path: Path
    manifest: dict
    device: str = "auto"
    threads: int | None = None
    _sessions: dict = field(default_factory=dict, repr=False)
    _provider: str | None = field(default=None, repr=False)      # of the sessions opened so far

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.path.name))

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind", "codec"))

    @property
    def channels(self) -> int:
        return int(self.manifest.get("channels", 3))

    @cached_property
    def model_id(self) -> bytes:
        """16-byte content hash of the package."""
        h = hashlib.sha256()
        coding = {k: v for k, v in self.manifest.items() if k not in NON_CODING_KEYS}
        h.update(json.dumps(coding, sort_keys=True).encode())
        graphs = set(self.manifest.get("graphs", {}).values())
        files = sorted(graphs | ({self.manifest["tables"]} if "tables" in self.manifest else set()))
        for name in files:
            p = package_file(self.path, name)
            h.update(name.encode())
            try:
                data = p.read_bytes()
            except OSError as exc:
                raise ModelError(f"model package {self.path}: cannot read {name} ({exc.strerror or exc})") from None
            problem = onnx_problem(data) if name in graphs else None
            if problem:                     # `models` lists a package by its id: not one whose graph is junk
                raise ModelError(f"model package {self.path}: {name} is not an ONNX model ({problem})")
            h.update(data)
        return h.digest()[:16]

    def decodes(self, model_id: bytes) -> bool:
        """Whether files made with model id `model_id` (as stored: a prefix of the hash) decode with
        this package: its own, or one of the earlier packages the manifest's `decodes` lists (an
        encoder-only retraining, aecompress.train.tune_analysis, keeps everything a decoder
        computes, so the files of the package it started from decode to the same pixels)."""
        ids = [self.model_id] + [bytes.fromhex(h) for h in self.manifest.get("decodes", [])]
        return any(len(i) >= len(model_id) and i[: len(model_id)] == model_id for i in ids)

    @cached_property
    def tables(self) -> dict[str, np.ndarray]:
        name = self.manifest.get("tables")
        if not name:
            return {}
        path = package_file(self.path, name)
        try:
            problem = tables_size_problem(path)
            if problem is None:
                with np.load(path) as z:
                    return {k: z[k] for k in z.files}
        except Exception as exc:  # noqa: BLE001
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"model package {self.path}: cannot read {name} ({problem})")

    def session(self, graph: str) -> Session:
        """The inference session of one graph, opened once and reused."""
        if graph not in self._sessions:
            graphs = self.manifest.get("graphs", {})
            if graph not in graphs:
                raise ModelError(f"model package {self.name} has no '{graph}' graph")
            self._sessions[graph] = open_session(package_file(self.path, graphs[graph]), self.device, self.threads,
                                                 **self._signature(graph))
            self._provider = self._provider or self._sessions[graph].provider
        return self._sessions[graph]

    def release(self, graph: str) -> None:
        """Close a graph's session; the next use opens it again (tens of milliseconds). ONNX
        Runtime keeps the first memory region of a session's largest run for the session's life
        (about 180 MB after a 1024-pixel tile of the photo codec's analysis), so a graph that has
        done its part on a large image is let go rather than held beside the next one."""
        self._sessions.pop(graph, None)

    def encoder_session(self, key: str) -> Session | None:
        """An encoder-only graph named in the manifest's `encoder` table (e.g. `refine_graph`),
        opened once; None when the package has none. Such graphs do not take part in the model id:
        the decoder never runs them."""
        name = self.manifest.get("encoder", {}).get(key)
        if not name:
            return None
        if key not in self._sessions:
            self._sessions[key] = open_session(package_file(self.path, name), self.device, self.threads,
                                               **ENCODER_SIGNATURES.get(key, {}))
            self._provider = self._provider or self._sessions[key].provider
        return self._sessions[key]

    def _signature(self, graph: str) -> dict:
        """What a graph the runtime runs with one array must take (session.signature_problem)."""
        m = self.manifest
        if graph == "denoise":                      # greyscale is run as three equal channels
            return {"inputs": 1, "rank": 4, "channels": 3}
        if graph == "analysis":
            return {"inputs": 1, "rank": 4, "channels": self.channels}
        latent = m.get("latent_shape") if m.get("codec", "hyperprior") == "factorized" else None
        if graph == "synthesis" and latent:
            return {"inputs": 1, "rank": 1 + len(latent), "channels": latent[0]}
        if graph in ("hyper_analysis", "synthesis"):
            return {"inputs": 1, "rank": 4 if m.get("codec", "hyperprior") == "hyperprior" else None,
                    "channels": m.get("latent_channels")}
        return {}

    @property
    def provider(self) -> str:
        """Execution provider of the sessions opened so far (CPUExecutionProvider if none yet)."""
        return self._provider or "CPUExecutionProvider"


# A tables file is loaded whole, every array decompressed: a 1 GiB array of zeros compresses to
# 1 MB. The shipped photo codec's hold 1.5 MB in 32 arrays.
MAX_TABLES_BYTES = 256 << 20
MAX_TABLES_ARRAYS = 4096


def tables_size_problem(path: Path) -> str | None:
    """Why a tables file (.npz) is not to be loaded, or None: read from the zip directory and each
    array's header, before any array is decompressed."""
    import zipfile

    with zipfile.ZipFile(path) as zf:
        entries = zf.infolist()
        if len(entries) > MAX_TABLES_ARRAYS:
            return f"{len(entries)} arrays, more than {MAX_TABLES_ARRAYS}"
        total = sum(e.file_size for e in entries)
        if total > MAX_TABLES_BYTES:
            return f"its arrays hold {total / 2**20:.0f} MiB, more than {MAX_TABLES_BYTES >> 20} MiB"
        for e in entries:
            with zf.open(e) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    return f"{e.filename} is an .npy file of version {version[0]}.{version[1]}"
            # np.load makes the array its header names before it reads the data
            if math.prod(shape) * dtype.itemsize > e.file_size:
                return f"{e.filename} names an array of shape {shape}, larger than the data it holds"
    return None


# what the encoder-only graphs take and give (aecompress.refine: y, mean, scale, inv_gain, target and
# mask -> bits, sse and their gradients)
ENCODER_SIGNATURES = {"refine_graph": {"inputs": 6, "outputs": 4}}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while shift < 70:
        if pos >= len(data):
            raise IndexError
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
    raise IndexError


def onnx_problem(data: bytes) -> str | None:
    """Why `data` is not an ONNX model, or None: its top level must parse as a protobuf message (each
    field's tag, wire type and length inside the data, ending with it) that has a graph (ModelProto
    field 7). Looks at a few dozen bytes whatever the graph's size, and loads nothing: a text file
    named analysis.onnx was listed by `models` as a good package."""
    if data[4:8] == b"ORTM":
        return None                 # onnxruntime's own format (a flatbuffer, .ort), which it runs as well
    pos, fields = 0, set()
    try:
        while pos < len(data):
            tag, pos = _varint(data, pos)
            number, wire = tag >> 3, tag & 7
            if number == 0 or wire not in (0, 1, 2, 5):
                return f"byte {pos - 1} is not a field of a protobuf message"
            if wire == 0:
                _, pos = _varint(data, pos)
            elif wire == 2:
                length, pos = _varint(data, pos)
                pos += length
            else:
                pos += 8 if wire == 1 else 4
            if pos > len(data):
                return "cut short"
            fields.add(number)
    except IndexError:
        return "cut short"
    return None if 7 in fields else "no graph in it"


def package_file(folder: Path, name: str) -> Path:
    """A file of a package, checked before it is opened: a regular file whose real place is inside
    the package folder. A link to a device (/dev/zero: read until memory ran out), a named pipe
    (a read that never returns) or a file elsewhere (a link to /etc/passwd) is a model error."""
    folder = Path(folder)
    p = folder / name
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise ModelError(f"model package {folder}: {name} is missing") from None
    except OSError as exc:
        raise ModelError(f"model package {folder}: cannot read {name} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelError(f"model package {folder}: {name} is not a regular file")
    real, home = os.path.realpath(p), os.path.realpath(folder)
    if os.path.commonpath([real, home]) != home:
        raise ModelError(f"model package {folder}: {name} leads outside the package ({real})")
    return p


def read_manifest(folder: Path) -> dict:
    f = Path(folder) / MANIFEST
    try:
        if not f.exists() and not f.is_symlink():
            raise FileNotFoundError
        m = json.loads(package_file(folder, MANIFEST).read_text())
    except FileNotFoundError:
        raise ModelError(f"{folder} is not a model package (no {MANIFEST})") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise ModelError(f"{f}: unreadable manifest ({type(exc).__name__ if isinstance(exc, RecursionError) else exc})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ModelError(f"{f}: not an {FORMAT} manifest")
    try:
        json.dumps(m)                       # the model id hashes it: nesting too deep for that fails here
        problem = manifest_problem(m)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        problem = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else 'a value of the wrong type'}"
    if problem:
        raise ModelError(f"{f}: malformed manifest ({problem})")
    return m


# the graphs each kind of package runs (a manifest may name more)
REQUIRED_GRAPHS = {("codec", "hyperprior"): ("analysis", "hyper_analysis", "synthesis"),
                   ("codec", "factorized"): ("analysis", "synthesis"),
                   ("denoiser", None): ("denoise",)}


def _is_id(h: str) -> bool:
    try:
        return 8 <= len(bytes.fromhex(h)) <= 32
    except ValueError:
        return False


def _number(v) -> bool:
    """A finite JSON number (not a boolean; an integer too large for a float is not one)."""
    try:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    except OverflowError:
        return False


def _gain_curve_problem(g) -> bool:
    """Whether a denoiser's residual_gain ({"sigma": [...], "gain": [...]}) is malformed."""
    if not isinstance(g, dict):
        return True
    s, v = g.get("sigma"), g.get("gain")
    if not (isinstance(s, list) and isinstance(v, list) and len(s) == len(v) >= 1):
        return True
    if not all(_number(x) for x in s + v):
        return True
    return any(b <= a for a, b in zip(s, s[1:])) or any(not 0 < x <= 1 for x in v)


def manifest_problem(m: dict) -> str | None:
    """What is wrong with the shape of a manifest, or None: the fields every command reads must
    have their types, so a bad package is refused when it is found rather than failing later."""
    kind = m.get("kind", "codec")
    if kind not in ("codec", "denoiser"):
        return f"unknown kind {kind!r}"
    if not isinstance(m.get("name", ""), str):
        return "name is not a string"
    def inside(name) -> bool:             # a file name inside the package folder
        return isinstance(name, str) and bool(name) and not Path(name).is_absolute() and ".." not in Path(name).parts

    graphs = m.get("graphs")
    if not isinstance(graphs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in graphs.items()):
        return "graphs is not a table of graph names to file names"
    if not all(inside(v) for v in graphs.values()):
        return "graph files must lie inside the package folder"
    enc = m.get("encoder", {})
    if not isinstance(enc, dict) or ("refine_graph" in enc and not inside(enc["refine_graph"])):
        return "encoder is not a table, or its refine_graph is not a file name inside the package folder"
    dec = m.get("decodes", [])
    if not isinstance(dec, list) or not all(isinstance(h, str) and _is_id(h) for h in dec):
        return "decodes is not a list of model ids (hexadecimal)"
    if "residual_gain" in m and _gain_curve_problem(m["residual_gain"]):
        return "residual_gain is not a table of increasing sigmas and gains between 0 and 1"
    if "tables" in m and not inside(m["tables"]):
        return "tables is not a file name inside the package folder"
    channels = m.get("channels", 3)
    if isinstance(channels, bool) or channels not in (1, 3):
        return f"channels must be 1 or 3, not {channels!r}"
    codec = m.get("codec", "hyperprior") if kind == "codec" else None
    if kind == "codec" and codec not in ("hyperprior", "factorized"):
        return f"unknown codec {codec!r}"
    missing = [g for g in REQUIRED_GRAPHS.get((kind, codec), ()) if g not in graphs]
    if missing:
        return f"no {', '.join(missing)} graph"
    return _sizes_problem(m, kind, codec) or (_encoder_problem(m, codec) if kind == "codec" else None)


# Bounds (lowest, highest) of the manifest numbers that size the work, when a manifest has them. A
# denoiser's align of 4096 padded a 192x128 image to 4096x4096 (GBs of memory); an overlap of
# 100,000 turned the tiling off; a latent_channels of a billion made every file of the
# model "damaged". The bounds leave room around what the shipped packages and the training's
# exports write (align 8, receptive_radius 43; pad_multiple 64, levels 9, latent_channels 128,
# overlap 64 and 4 latent cells; a dense codec's 28x28 input and 32-value latent): an overlap at
# most a quarter of its tile (1024 pixels, 64 latent cells), at most 64 levels (a file stores its
# level x 1024 in 16 bits).
SIZE_BOUNDS = {
    "denoiser": {"align": (1, 64), "receptive_radius": (0, 256)},
    "codec": {"pad_multiple": (1, 256), "levels": (1, 64), "latent_channels": (1, 1024), "downsample": (1, 64)},
}
OVERLAP_BOUNDS = {"analysis": (0, 256), "synthesis": (0, 16)}
MAX_INPUT_SIDE = 4096               # a fixed-size (factorized) codec's input_size
MAX_LATENT_VALUES = 1 << 22         # a fixed-size codec's latent_shape: values a file holds


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _sizes_problem(m: dict, kind: str, codec: str | None) -> str | None:
    """What is wrong with the numbers of a manifest that size the work (see SIZE_BOUNDS), or None."""
    for key, (lo, hi) in SIZE_BOUNDS[kind].items():
        if key in m and not (_whole(m[key]) and lo <= m[key] <= hi):
            return f"{key} must be a whole number from {lo} to {hi}, not {m[key]!r}"
    if kind != "codec":
        return None
    if codec == "hyperprior":
        # the decoder's grids are fixed: a latent cell is 16 pixels, a hyper-latent cell 64
        if "downsample" in m and m["downsample"] != 16:
            return f"a hyperprior codec's downsample is 16, not {m['downsample']!r}"
        if m.get("pad_multiple", 1) % 64:       # missing, the codec would pad to 1: z's grid would not fit
            given = repr(m["pad_multiple"]) if "pad_multiple" in m else "missing"
            return f"a hyperprior codec's pad_multiple must be a multiple of 64, not {given}"
    ov = m.get("overlap", {})
    if not isinstance(ov, dict):
        return "overlap is not a table of tile overlaps"
    for key, (lo, hi) in OVERLAP_BOUNDS.items():
        v = ov.get(key, lo)
        if not (_whole(v) and lo <= v <= hi):
            return f"overlap.{key} must be a whole number from {lo} to {hi}, not {v!r}"
    size = m.get("input_size")
    if size is not None and not (isinstance(size, list) and len(size) == 2
                                 and all(_whole(v) and 1 <= v <= MAX_INPUT_SIDE for v in size)):
        return f"input_size must be a height and a width from 1 to {MAX_INPUT_SIDE}"
    shape = m.get("latent_shape")
    if shape is not None and not (isinstance(shape, list) and 1 <= len(shape) <= 3
                                  and all(_whole(v) and v >= 1 for v in shape)
                                  and math.prod(shape) <= MAX_LATENT_VALUES):
        return f"latent_shape must be 1 to 3 positive sizes of at most {MAX_LATENT_VALUES} values in all"
    return None


def _shown(v) -> str:
    """A manifest value in an error line (at most 40 characters)."""
    return repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."


def _encoder_problem(m: dict, codec: str) -> str | None:
    """What is wrong with the fields of a codec manifest that say how the encoder codes (read, until
    they were checked here, only when the codec was built: `models` listed such a package as good):
    encoder.rdoq_lambda, architecture.lambdas, resolution_ladder, quality_anchor. After the types,
    the ladder's own rules (aecompress.ladder.Ladder.from_manifest) decide: supported scales, levels
    rising within the model's, an anchor inside the ladder."""
    lam = m.get("encoder", {}).get("rdoq_lambda", 0.0)
    if not (_number(lam) and lam >= 0):
        # NaN made every comparison of the rounding false (every value rounded down), silently
        return f"encoder.rdoq_lambda must be a number of at least 0, not {_shown(lam)}"
    arch = m.get("architecture", {})
    if not isinstance(arch, dict):
        return "architecture is not a table"
    lams = arch.get("lambdas")
    # the training lambda of each level, the rate-distortion weight of encode --refine (interpolated
    # geometrically between levels): a non-number failed every encode as "malformed manifest", a zero
    # or negative one gave the refinement a lambda of 0 or NaN. None or [] (none recorded) and a list
    # of another length than the levels leave the codec without --refine (Codec.refine_problem says so)
    if lams not in (None, []) and not (isinstance(lams, list) and all(_number(v) and v > 0 for v in lams)):
        return f"architecture.lambdas must be a list of numbers above 0 (one a level), not {_shown(lams)}"
    spec, anchor = m.get("resolution_ladder"), m.get("quality_anchor")

    def rung(r) -> bool:
        return (isinstance(r, dict) and (isinstance(r.get("scale"), str) or _number(r.get("scale")))
                and _number(r.get("lo")) and _number(r.get("hi")))

    if spec not in (None, []) and not (isinstance(spec, list) and all(rung(r) for r in spec)):
        return "resolution_ladder is not a list of rungs, each a table of scale, lo and hi (numbers)"
    if anchor not in (None, {}) and not (
            isinstance(anchor, dict) and _number(anchor.get("quality")) and _number(anchor.get("position"))
            and (anchor.get("calibration_psnr") is None or _number(anchor["calibration_psnr"]))):
        return "quality_anchor is not a table of a quality and a position (numbers)"
    from .ladder import Ladder                  # numbers of the right types: the ladder's own rules

    try:
        ladder = Ladder.from_manifest({**m, "quality_anchor": None}, m.get("levels", 1))
    except ValueError as exc:
        return f"resolution_ladder: {exc}"
    if codec != "hyperprior" and any(r.scale != 1 for r in ladder.rungs):
        return "resolution_ladder: only hyperprior codecs can change resolution"
    try:
        Ladder.from_manifest(m, m.get("levels", 1))
    except ValueError as exc:
        return f"quality_anchor: {exc}"
    return None


def find_package_dir(name_or_path: str | Path) -> Path:
    p = Path(name_or_path).expanduser()
    if p.is_dir() and (p / MANIFEST).exists():
        return p
    if p.is_file() and p.name == MANIFEST:
        return p.parent
    for root in search_path():
        cand = root / str(name_or_path)
        if (cand / MANIFEST).exists():
            return cand
    if p.exists():
        raise ModelError(f"{p} is not a model package (no {MANIFEST})")
    # the name `aecompress models` shows is the manifest's: a package copied into a folder of another
    # name (or trained with --name) is found by it too, when no folder has that name
    named = [pkg.path for pkg in installed_packages() if pkg.name == str(name_or_path)]
    if len(named) == 1:
        return named[0]
    if named:
        raise ModelError(f"{len(named)} installed packages are named '{name_or_path}' ({', '.join(map(str, named))}): "
                         "pass the folder with -m")
    raise ModelError(f"unknown model '{name_or_path}' (see `aecompress models`)")


def load_package(name_or_path: str | Path, device: str = "auto", threads: int | None = None) -> ModelPackage:
    folder = find_package_dir(name_or_path)
    return ModelPackage(folder, read_manifest(folder), device, threads)


def installed_packages(problems: list[str] | None = None) -> list[ModelPackage]:
    """The model packages in the search path's folders, first found first. A folder with a manifest
    that is not a usable package is left out; `problems`, when given, gets a line saying why."""
    seen: set[Path] = set()
    out = []
    for root in search_path():
        try:
            entries = sorted(root.iterdir()) if root.is_dir() else []
        except OSError:                     # an unreadable folder on the search path hides nothing else
            continue
        for d in entries:
            if d.name.startswith("."):      # a training run's export being staged (or one killed), not a package
                continue
            try:
                if (d / MANIFEST).exists() and d.resolve() not in seen:
                    seen.add(d.resolve())
                    out.append(ModelPackage(d, read_manifest(d)))
            except (ModelError, OSError) as exc:
                if problems is not None:
                    problems.append(str(exc))
                continue
    return out


MODEL_HINT = "pass it with -m"


def find_by_id(model_id: bytes, extra: list[ModelPackage] | None = None, device: str = "auto",
               threads: int | None = None, hint: str = MODEL_HINT,
               usable: Callable[[ModelPackage], object] | None = None) -> ModelPackage:
    """The codec package whose content hash starts with model_id, or that decodes that model's files
    (ModelPackage.decodes; only codecs make .aez files);
    hint ends the error when none does (what to do about it where the caller runs). usable, when
    given, raises ModelError for a package that cannot serve (a broken copy with the same id, whose
    manifest differs where the id does not look, or one that claims the id in `decodes`): the next
    is tried, and the first one's error is raised when none can."""
    listed: list[ModelPackage] = []
    first: ModelError | None = None

    def attempt(pkg: ModelPackage) -> ModelPackage:
        found = ModelPackage(pkg.path, pkg.manifest, device, threads)
        if usable is not None:
            usable(found)
        return found

    for pkg in (extra or []) + installed_packages():
        if pkg.kind != "codec":
            continue
        try:
            exact = pkg.model_id[: len(model_id)] == model_id          # the model that made it comes first
            if not exact and pkg.decodes(model_id):
                listed.append(pkg)
        except ModelError:
            continue
        if exact:
            try:
                return attempt(pkg)
            except ModelError as exc:
                first = first or exc
    for pkg in listed:
        try:
            return attempt(pkg)
        except ModelError as exc:
            first = first or exc
    if first is not None:
        raise first
    raise UnknownModelError(f"no installed model package matches this file (model id {model_id.hex()}); {hint}")
