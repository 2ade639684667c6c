"""What every benchmark shares: one JSON line per result, the default policy, cached synthetic patches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.data.synthetic import make_synthetic
from simulations.harness.scenario import DEFAULTS

DEFAULT_POLICY = DEFAULTS.policy  # the run config's (pyproject's) policy: the one sites train by default


def emit(record: dict[str, Any], out: Path | None) -> None:
    line = json.dumps(record, sort_keys=False)
    print(line, flush=True)
    if out is not None:
        with open(out, "a") as handle:
            handle.write(line + "\n")


_SYNTHETIC: dict[tuple[int, int, int], Any] = {}


def cached_synthetic(images: int, image_size: int, seed: int) -> Any:
    key = (images, image_size, seed)
    if key not in _SYNTHETIC:
        _SYNTHETIC[key] = make_synthetic(images, image_size, seed)
    return _SYNTHETIC[key]
