"""What the app's tabs share: the device, the model packages the user added, and opened models.

Opening a model package and its inference sessions is slow, so codecs and denoisers are opened once
per (package, device) on a worker thread and reused. The lists of models come from the same registry
as `aecompress models` (aecompress.package.installed_packages) plus folders added in the app.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from aecompress.codec import Codec
from aecompress.errors import AecError, ModelError
from aecompress.package import ModelPackage, installed_packages, load_package
from aecompress.session import DEVICES

# what an error says to do about a .aez file whose model is not at hand (the CLI says "pass it with -m")
APP_MODEL_HINT = "add the folder of the model that made it (File \u203a Add model folder\u2026)"

PROVIDER_NAMES = {"CPUExecutionProvider": "CPU", "CUDAExecutionProvider": "CUDA",
                  "TensorrtExecutionProvider": "TensorRT", "CoreMLExecutionProvider": "Core ML",
                  "DmlExecutionProvider": "DirectML"}


def provider_text(provider: str | None, long: bool = True) -> str:
    """'CPU (CPUExecutionProvider)' for the status bar; the provider's own name alone in panels."""
    if not provider:
        return "\u2013"
    short = PROVIDER_NAMES.get(provider)
    return f"{short} ({provider})" if short and long else provider


@dataclass(frozen=True)
class ModelEntry:
    """One model in a picker: `key` is what load_package takes (a name, or a folder the user added)."""

    label: str
    key: str
    kind: str
    description: str = ""


class Runtime:
    def __init__(self, device: str = "auto", extra_folders: list[str] | None = None, threads: int | None = None):
        self.device = device if device in DEVICES else "auto"
        self.threads = threads
        self.extra_folders: list[str] = []
        self._lock = threading.Lock()
        self._codecs: dict[tuple[str, str], Codec] = {}
        self._packages: dict[tuple[str, str], ModelPackage] = {}
        for f in extra_folders or []:
            try:
                self.add_folder(f)
            except AecError:
                continue          # a folder that went away since last time: forget it quietly

    # -- the model lists (UI thread) -------------------------------------------------------------
    def add_folder(self, folder: str | Path) -> ModelEntry:
        """Validate a package folder and remember it; AecError if it is not a model package (or one
        that could not run: a malformed manifest, a missing graph or tables file)."""
        pkg = load_package(Path(folder))
        pkg.model_id                      # reads every graph and the tables: ModelError if one is missing
        if pkg.kind == "codec":
            Codec(pkg)                    # checks the coding fields of the manifest
        key = str(pkg.path.resolve())
        if key not in self.extra_folders:
            self.extra_folders.append(key)
        return self._entry(pkg, key)

    def remove_folder(self, key: str) -> None:
        """Forget an added folder (its files stay where they are)."""
        if key in self.extra_folders:
            self.extra_folders.remove(key)
        with self._lock:
            for cache in (self._codecs, self._packages):
                for k in [k for k in cache if k[0] == key]:
                    del cache[k]

    @staticmethod
    def _entry(pkg: ModelPackage, key: str) -> ModelEntry:
        return ModelEntry(f"{pkg.name} (added: {pkg.path.name})", key, pkg.kind,
                          str(pkg.manifest.get("description", "")))

    def models(self, kind: str) -> list[ModelEntry]:
        out, seen = [], set()
        for pkg in installed_packages():
            if pkg.kind == kind and pkg.name not in seen:
                seen.add(pkg.name)
                out.append(ModelEntry(pkg.name, pkg.path.name, pkg.kind, str(pkg.manifest.get("description", ""))))
        for folder in self.extra_folders:
            try:
                pkg = load_package(folder)
            except AecError:
                continue
            if pkg.kind == kind:
                out.append(self._entry(pkg, folder))
        return out

    def extra_packages(self) -> list[ModelPackage]:
        """The added folders as packages, for decode_bytes(extra=...) to find a file's model among."""
        out = []
        for folder in self.extra_folders:
            try:
                out.append(load_package(folder, self.device, self.threads))
            except AecError:
                continue
        return out

    def set_threads(self, threads: int | None) -> None:
        """CPU threads per model from now on (None: onnxruntime's default); models are reopened."""
        self._reopen(threads=threads or None)

    def set_device(self, device: str) -> None:
        if device not in DEVICES:
            raise AecError(f"unknown device '{device}'")
        self._reopen(device=device)

    def _reopen(self, **setting) -> None:
        with self._lock:
            for k, v in setting.items():
                setattr(self, k, v)
            self._codecs.clear()
            self._packages.clear()

    # -- opened models (worker threads) ----------------------------------------------------------
    def codec(self, key: str) -> Codec:
        """The codec for a picker key on the current device, opened once."""
        with self._lock:
            k = (key, self.device)
            if k not in self._codecs:
                self._codecs[k] = Codec(load_package(key, self.device, self.threads))
            return self._codecs[k]

    def denoiser(self, key: str) -> ModelPackage:
        with self._lock:
            k = (key, self.device)
            if k not in self._packages:
                pkg = load_package(key, self.device, self.threads)
                if pkg.kind != "denoiser":
                    raise ModelError(f"model '{pkg.name}' is a {pkg.kind}, not a denoiser")
                self._packages[k] = pkg
            return self._packages[k]
