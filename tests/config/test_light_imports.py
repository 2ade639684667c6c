"""Validating a config must not load torch: launchers and a site's pre-flight check read
configs before anything trains, and importing torch, torchvision, Opacus or Flower costs seconds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "opacus", "flwr", "torchstain")


@pytest.mark.slow  # a Python subprocess
def test_config_validation_imports_nothing_heavy() -> None:
    probe = ("import sys; from common.config.run_config import RunConfig; RunConfig.from_mapping({}); "
             f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=True)
    assert done.stdout.strip() == "", f"common.config pulled in {done.stdout.strip()}"
