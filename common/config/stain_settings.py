"""The `stain` / `stain-reference` run-config values: names, parsing, checks, the report's wording.

Torch-free, so `common.config` can validate a run before torch is imported; the work itself is
`common.data.stain_handling` (torchstain).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

STAIN_SETTINGS = ("none", "normalize", "augment", "normalize+augment")
# torchstain's Macenko reference (TorchMacenkoNormalizer.HERef, .maxCRef; tests check they still match).
TORCHSTAIN_HE = (0.5626, 0.2159, 0.7201, 0.8012, 0.4062, 0.5581)
TORCHSTAIN_MAX_C = (1.9705, 1.0308)
# torchstain's augmentation strengths (TorchMacenkoAugmentor defaults): C' = C·U(1 ± s1) + U(± s2).
SIGMA_SCALE, SIGMA_SHIFT = 0.2, 0.2


def normalises(setting: str) -> bool:
    return setting in ("normalize", "normalize+augment")


def augments(setting: str) -> bool:
    return setting in ("augment", "normalize+augment")


@dataclass(frozen=True)
class StainReference:
    """Macenko target: H&E optical-density matrix (3 x 2, row-major) and max concentrations (2)."""

    he: tuple[float, ...]
    max_c: tuple[float, ...]

    def as_text(self) -> str:
        return ",".join(f"{v:.6g}" for v in (*self.he, *self.max_c))


def default_reference() -> StainReference:
    return StainReference(TORCHSTAIN_HE, TORCHSTAIN_MAX_C)


def parse_reference(text: str) -> StainReference:
    """`stain-reference` as 8 comma-separated numbers; '' = torchstain's reference. ValueError says why."""
    if not text.strip():
        return default_reference()
    try:
        values = [float(v) for v in text.replace(";", ",").split(",")]
    except ValueError:
        raise ValueError(f"stain-reference must be 8 comma-separated numbers, got {text!r}") from None
    if len(values) != 8:
        raise ValueError(f"stain-reference needs 8 numbers (H&E matrix 3x2 row-major, then 2 max "
                         f"concentrations), got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError("stain-reference values must be finite")
    he, max_c = values[:6], values[6:]
    if min(he) < 0 or any(math.hypot(*he[c::2]) < 1e-3 for c in (0, 1)):
        raise ValueError("stain-reference H&E matrix entries must be >= 0 (optical densities) and each column "
                         "non-zero")
    if min(max_c) <= 0:
        raise ValueError("stain-reference max concentrations must be > 0")
    return StainReference(tuple(he), tuple(max_c))


def stain_problems(setting: str, reference: str) -> list[str]:
    """Run-config problems of `stain` / `stain-reference` (common.config validates with this)."""
    if setting not in STAIN_SETTINGS:
        return [f"stain {setting!r} is unknown; valid values: {', '.join(STAIN_SETTINGS)}"]
    try:
        parse_reference(reference)
    except ValueError as err:
        return [str(err)]
    return []


def describe_stain(config: Mapping[str, Any], test_fallbacks: int | None = None) -> str:
    """The report's line on stain handling, from a run's config (runs before the key: none)."""
    setting = str(config.get("stain", "none"))
    if setting == "none":
        return "none (images as the sites and the test set hold them)"
    parts = []
    if normalises(setting):
        reference = str(config.get("stain-reference", "")) or "torchstain's default"
        parts.append(f"Macenko normalisation (torchstain) to reference {reference}, at every site and on the "
                     "central test set")
        if test_fallbacks:
            parts[-1] += f" ({test_fallbacks} test images without a stain estimate kept as they were)"
    if augments(setting):
        parts.append(f"random stain-concentration augmentation per sample and step at the sites (scale ±"
                     f"{SIGMA_SCALE:g}, shift ±{SIGMA_SHIFT:g}; no privacy cost)")
    return f"{setting}: " + "; ".join(parts)
