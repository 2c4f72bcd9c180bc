"""What a model's manifest says about the machine that trained it (`training.hardware`).

Checkpoints record `machine()` when they are saved, on the machine that trains; an export (which
may run elsewhere: GPU checkpoints come back to be exported) describes that record. One wording for
every kind of model: the device, the CPU, its cores, the torch threads and the torch version, e.g.
"CPU; AMD EPYC (x86_64) with 2 cores, 2 torch thread(s); torch 2.13.0+cpu".
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


def machine() -> dict:
    """This machine, for a checkpoint to record."""
    import torch

    return {"cpu": f"{cpu_name()} ({platform.machine()})", "cores": os.cpu_count(), "torch": torch.__version__}


def describe(device: str | None, threads: int | None = None, extra: str = "", machine: dict | None = None) -> str:
    """device: what ran the steps ('CPU', or a GPU's name); threads: torch's CPU threads; extra: a
    note on the device (e.g. how batches were made); machine: the checkpoint's `machine()` record
    (without one, from an older checkpoint, the CPU and torch are left out rather than guessed)."""
    out = f"{device or 'CPU'}{f', {extra}' if extra else ''}"
    cpu = f"{machine['cpu']} with {machine['cores']} cores" if machine else ""
    if threads:
        cpu += f"{', ' if cpu else ''}{threads} torch thread(s)"
    if cpu:
        out += f"; {cpu}"
    if machine:
        out += f"; torch {machine['torch']}"
    return out
