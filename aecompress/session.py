"""ONNX Runtime inference sessions: device choice, thread count, and the provider that really ran."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import entrypoint
from .cstderr import quiet
from .errors import AecError, DeviceError, ModelError, NonFiniteOutput, env_flag, extra_hint
from .fsutil import interrupts_deferred

DEVICES = ("auto", "cpu", "cuda")


def installed_runtimes() -> list[str]:
    """Distributions that provide the onnxruntime module (exactly one should be installed).

    Looks for their .dist-info folders on sys.path directly: importlib.metadata costs ~35 ms of
    every command's start."""
    found = set()
    for entry in sys.path:
        try:
            with os.scandir(entry or ".") as it:
                for e in it:
                    name = e.name.lower()
                    if name.endswith(".dist-info"):
                        dist = name[: -len(".dist-info")].rsplit("-", 1)[0].replace("_", "-")
                        if dist in ("onnxruntime", "onnxruntime-gpu"):
                            found.add(dist)
        except OSError:
            continue
    return sorted(found)


def _ort():
    if len(installed_runtimes()) > 1:
        raise AecError("both onnxruntime and onnxruntime-gpu are installed and clash; "
                       "pip uninstall -y onnxruntime onnxruntime-gpu, then install the cpu or the gpu extra "
                       "(pip install -e '.[cpu]' in the aecompress checkout)")
    try:
        # a Ctrl-C or `kill` while its C module initialises comes out as ImportError ("initialization
        # failed"): held until the import is over, it is delivered as itself. Its logger starts
        # before set_default_logger_severity can quiet it, and warns on descriptor 2 (e.g. "Failed to
        # persist telemetry device ID" when HOME is not writable): kept off standard error
        with interrupts_deferred(), quiet():
            import onnxruntime as ort
    except ImportError:
        raise AecError(f"onnxruntime is not installed: {extra_hint('cpu')}, or the gpu extra for CUDA") from None
    if entrypoint.configured:          # the command line's and the app's choice; a library caller's is its own
        ort.set_default_logger_severity(3)
    return ort


def available_providers() -> list[str]:
    return list(_ort().get_available_providers())


@dataclass
class Session:
    """One ONNX graph ready to run, with the execution provider that actually serves it."""

    path: Path
    provider: str
    _sess: object
    _opts: object = None

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self._sess.get_inputs()]

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs; a NaN or an infinity in them (a diverged or damaged model) is a
        ModelError here, before it can turn into garbage pixels or an unbounded latent."""
        feeds = {name: np.ascontiguousarray(x, dtype=np.float32) for name, x in zip(self.input_names, inputs)}
        try:
            outs = self._sess.run(None, feeds, self._run_options)
        except Exception as exc:
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            raise run_failure(self.path, exc) from None
        for out in outs:
            if not np.isfinite(out).all():
                raise NonFiniteOutput(f"model {self.path.parent.name}: {self.path.name} gave NaN or infinite "
                                      "values (a diverged or damaged model)")
        return outs

    @property
    def _run_options(self):
        # hand the memory arena back after every run: otherwise each graph keeps the peak of its
        # largest tile (hundreds of MB) for the life of the process, and analysis + synthesis add up
        if self._opts is None:
            ort = _ort()
            self._opts = ort.RunOptions()
            dev = "gpu:0" if self.provider == "CUDAExecutionProvider" else "cpu:0"
            self._opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", dev)
        return self._opts

    def __call__(self, *inputs: np.ndarray) -> np.ndarray:
        return self.run(*inputs)[0]


def run_failure(path: Path, exc: Exception) -> Exception:
    """What onnxruntime's own failure while running a graph is: out of memory (an allocation that
    failed: MemoryError, reported as such everywhere), else an error of this image's run, in one line
    (onnxruntime's message is long, and its status code is noise). Not a ModelError, which stops a
    batch: a provider can refuse one input's shape and run the next."""
    msg = " ".join(str(exc).split())
    if any(w in msg.lower() for w in ("failed to allocate", "bad_alloc", "out of memory")):
        return MemoryError(f"onnxruntime: {msg}")
    msg = msg.split("Status Message:", 1)[-1].strip() if "Status Message:" in msg else msg
    msg = msg.split(" : ", 3)[-1] if msg.startswith("[ONNXRuntimeError]") else msg
    return AecError(f"onnxruntime could not run {path.name} of model {path.parent.name} ({msg[:300]})")


def check_device(device: str) -> None:
    """AecError when `device` is unknown, or is cuda and this onnxruntime has no CUDA provider."""
    if device not in DEVICES:
        raise AecError(f"unknown device '{device}' (choose from {', '.join(DEVICES)})")
    if device == "cuda" and "CUDAExecutionProvider" not in _ort().get_available_providers():
        raise AecError(f"CUDA was requested but this onnxruntime has no CUDA provider: {extra_hint('gpu')}")


def signature_problem(sess, inputs: int | None = None, rank: int | None = None, channels: int | None = None,
                      outputs: int = 1) -> str | None:
    """What keeps an opened graph from being run the way its package says, or None: every input and
    output float32 (the runtime feeds and reads float32), `inputs` inputs, at least `outputs`
    outputs, and the first input's number of axes and channels (axis 1) where the graph fixes them.
    A graph that took float16 or two inputs failed at its first run as 'unexpected ... a bug'."""
    ins, outs = sess.get_inputs(), sess.get_outputs()
    if inputs is not None and len(ins) != inputs:
        return f"takes {len(ins)} inputs ({', '.join(i.name for i in ins[:4])}), not {inputs}"
    if len(outs) < outputs:
        return f"gives {len(outs)} outputs, not {outputs}"
    for what, args in (("input", ins), ("output", outs)):
        for a in args:
            if a.type != "tensor(float)":
                return f"{what} '{a.name}' is {a.type.removeprefix('tensor(').rstrip(')')}, not float32"
    shape = ins[0].shape if ins else None
    if rank is not None and shape and len(shape) != rank:      # [] when the graph gives no shape
        return f"input '{ins[0].name}' has {len(shape)} axes, not {rank}"
    if channels is not None and shape and len(shape) > 1 and isinstance(shape[1], int) and shape[1] != channels:
        return f"input '{ins[0].name}' has {shape[1]} channels, not {channels}"
    return None


def open_session(path: str | Path, device: str = "auto", threads: int | None = None, **signature) -> Session:
    """Open an ONNX graph. device: auto (CUDA when it really works, else CPU), cpu or cuda.
    signature: what the graph must take and give (see signature_problem); a ModelError if it does not."""
    ort = _ort()
    path = Path(path)
    check_device(device)
    if not path.exists():
        raise ModelError(f"model graph {path} is missing")
    opts = ort.SessionOptions()
    opts.log_severity_level = 4     # fatal only: a failed run is raised as one line (run_failure), not logged too
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle pool threads sleep instead of spinning: between graph runs numpy does the quantizing,
    # entropy coding and metrics on the same cores (whole encode + decode: ~4% faster on 2 cores)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    have_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    wants_cuda = device == "cuda" or (device == "auto" and have_cuda and not env_flag("AECOMPRESS_NO_CUDA"))
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if wants_cuda else ["CPUExecutionProvider"]
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        if wants_cuda and device == "auto":
            sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        else:
            raise ModelError(f"cannot load {path.name}: {str(exc).splitlines()[0]}") from None
    problem = signature_problem(sess, **signature)
    if problem:
        raise ModelError(f"model {path.parent.name}: {path.name} {problem}")
    provider = sess.get_providers()[0]
    if device == "cuda" and provider != "CUDAExecutionProvider":
        raise DeviceError("CUDA was requested but onnxruntime could not start it on this machine "
                          "(--device auto falls back to the CPU)")
    return Session(path, provider, sess)
