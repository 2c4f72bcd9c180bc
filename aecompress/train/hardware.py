"""What a model's manifest says about the machine that trained it (`training.hardware`).

One wording for every kind of model: the device, the CPU, its cores, the torch threads and the torch
version, e.g. "CPU; AMD EPYC (x86_64) with 2 cores, 2 torch thread(s); torch 2.13.0+cpu".
"""

from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: str | None = None, threads: int | None = None, extra: str = "",
             torch_version: str | None = None) -> str:
    """device: what ran the steps ('CPU', or a GPU's name); threads: torch's CPU threads; extra: a
    note on the device (e.g. how batches were made); torch_version: default the running torch's."""
    if torch_version is None:
        import torch
        torch_version = torch.__version__
    cpu = f"{cpu_name()} ({platform.machine()}) with {os.cpu_count()} cores"
    if threads:
        cpu += f", {threads} torch thread(s)"
    return f"{device or 'CPU'}{f', {extra}' if extra else ''}; {cpu}; torch {torch_version}"
