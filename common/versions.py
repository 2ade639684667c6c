"""Versions of everything that shapes a result, for reports and benchmarks."""

from __future__ import annotations

import os
import platform
from importlib import metadata

import common

PACKAGES = ("torch", "torchvision", "flwr", "opacus", "numpy")


def versions() -> dict[str, str]:
    out = {"fedpath": common.__version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> dict[str, str | int]:
    """Cores, CPU model and GPU (if any), as benchmarks must state them."""

    import torch

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cores": os.cpu_count() or 0, "cpu": cpu, "gpu": gpu, "platform": platform.platform()}
