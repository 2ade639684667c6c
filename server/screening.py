"""Checks an update must pass before it is averaged into the global model.

A site's update is untrusted input: a bug, a corrupted transfer or a hostile site can
send NaNs, the wrong tensors, or a huge step. Clipped DP-SGD bounds how far one round can
move the weights (at most lr * steps * (C + noise) per coordinate-norm, in practice far
less), so an update far beyond that bound is excluded rather than averaged.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


class UpdateScreen:
    """Validates site updates against the expected trainable tensors."""

    def __init__(self, reference: Mapping[str, np.ndarray], max_update_norm: float = 0.0) -> None:
        self.shapes = {name: tuple(np.shape(v)) for name, v in reference.items()}
        self.reference = {name: np.asarray(v, dtype=np.float32) for name, v in reference.items()}
        self.max_update_norm = max_update_norm

    def set_reference(self, reference: Mapping[str, np.ndarray]) -> None:
        """The global weights sent this round, which updates are measured against."""
        self.reference = {name: np.asarray(v, dtype=np.float32) for name, v in reference.items()}

    def check(self, update: Mapping[str, np.ndarray], metrics: Mapping[str, float]) -> str:
        """'' if the update may be averaged, otherwise why not."""
        missing = sorted(set(self.shapes) - set(update))
        extra = sorted(set(update) - set(self.shapes))
        if missing or extra:
            return f"tensors do not match the model: missing {missing[:3]}, extra {extra[:3]}"
        for name, value in update.items():
            value = np.asarray(value)
            if tuple(value.shape) != self.shapes[name]:
                return f"tensor {name} has shape {tuple(value.shape)}, expected {self.shapes[name]}"
            if value.dtype != np.float32:
                return f"tensor {name} has dtype {value.dtype}, expected float32"
            if not np.all(np.isfinite(value)):
                return f"tensor {name} contains NaN or Inf"
        examples = metrics.get("num-examples", 0)
        if not isinstance(examples, (int, float)) or not np.isfinite(examples) or examples <= 0:
            return f"num-examples must be a positive number, got {examples!r}"
        if self.max_update_norm > 0:
            norm = float(np.sqrt(sum(float(np.sum((np.asarray(update[n], np.float64) - self.reference[n]) ** 2))
                                     for n in self.shapes)))
            if norm > self.max_update_norm:
                return f"update norm {norm:.3g} exceeds max-update-norm {self.max_update_norm:.3g}"
        return ""
