"""Checks an update must pass before it is averaged into the global model.

A site's update is untrusted input: a bug, a corrupted transfer or a hostile site can
send NaNs, the wrong tensors, or a huge step. Clipped DP-SGD bounds how far one round can
move the weights (`dp_update_norm_bound`), so an update far beyond that bound cannot have
come from the training the site claims and is excluded rather than averaged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from common.privacy.accounting import MAX_USEFUL_NOISE_MULTIPLIER


@dataclass(frozen=True)
class TrainingBound:
    """What the server asked for, from which a DP round's largest possible step follows."""

    lr: float
    momentum: float
    max_grad_norm: float
    local_epochs: int
    batch_size: int
    safety: float = 2.0


def dp_update_norm_bound(
    bound: TrainingBound, num_examples: float, noise_multiplier: float, dim: int, expected_records: float | None = None
) -> float:
    """An upper bound on ||w_after - w_before|| for one round of clipped DP-SGD.

    Each step moves the weights by lr * v with ||v|| <= max_t ||g_t|| / (1 - momentum),
    and a step's gradient is (sum of <= b clipped per-sample gradients + noise) / E[b].
    With Poisson sampling b <= E[b] + 6 sqrt(E[b]) + 10 except with negligible
    probability, and the Gaussian noise's norm is <= sigma*C*(sqrt(d) + 10) likewise.
    The bound is multiplied by `safety`: legitimate updates are typically far smaller.

    At the patient unit a step clips and averages patients, not patches: `expected_records` (the
    reply's q x privacy-records, at least 1) replaces n / steps as E[b]. The number of steps never
    exceeds ceil(n / batch) per epoch in either unit.
    """
    n = max(1.0, float(num_examples))
    steps_per_epoch = math.ceil(n / bound.batch_size)
    expected_batch = n / steps_per_epoch if expected_records is None else max(1.0, float(expected_records))
    largest_batch = expected_batch + 6 * math.sqrt(expected_batch) + 10
    sigma = min(max(noise_multiplier, 0.0), MAX_USEFUL_NOISE_MULTIPLIER)
    grad = bound.max_grad_norm * (largest_batch + sigma * (math.sqrt(dim) + 10)) / expected_batch
    steps = steps_per_epoch * bound.local_epochs
    return bound.safety * steps * bound.lr * grad / (1 - bound.momentum)


class UpdateScreen:
    """Validates site updates against the expected trainable tensors and step size."""

    def __init__(
        self, reference: Mapping[str, np.ndarray], max_update_norm: float = 0.0, dp_bound: TrainingBound | None = None
    ) -> None:
        self.shapes = {name: tuple(np.shape(v)) for name, v in reference.items()}
        self.dim = int(sum(int(np.prod(s)) for s in self.shapes.values()))
        self.reference = {name: np.asarray(v, dtype=np.float32) for name, v in reference.items()}
        self.max_update_norm = max_update_norm
        self.dp_bound = dp_bound

    def set_reference(self, reference: Mapping[str, np.ndarray]) -> None:
        """The global weights sent this round, which updates are measured against."""
        self.reference = {name: np.asarray(v, dtype=np.float32) for name, v in reference.items()}

    def norm_limit(self, metrics: Mapping[str, float]) -> float:
        """The largest update norm accepted from a site that reports `metrics` (inf: none)."""
        if self.max_update_norm > 0:
            return self.max_update_norm
        if self.dp_bound is not None:
            expected = None
            if metrics.get("privacy-records") and metrics.get("sample-rate"):
                expected = float(metrics["sample-rate"]) * float(metrics["privacy-records"])
            return dp_update_norm_bound(
                self.dp_bound, float(metrics.get("num-examples", 1)), float(metrics.get("noise-multiplier", 0.0)),
                self.dim, expected,
            )
        return math.inf

    def check(self, update: Mapping[str, np.ndarray], metrics: Mapping[str, float]) -> str:
        """'' if the update may be averaged, otherwise why not."""
        missing = sorted(set(self.shapes) - set(update))
        extra = sorted(set(update) - set(self.shapes))
        if missing or extra:
            return f"tensors do not match the model: missing {missing[:3]}, extra {extra[:3]}"
        for name, value in update.items():
            value = np.asarray(value)
            if value.dtype != np.float32:
                return f"tensor {name} has dtype {value.dtype}, expected float32"
            if tuple(value.shape) != self.shapes[name]:
                return f"tensor {name} has shape {tuple(value.shape)}, expected {self.shapes[name]}"
            if not np.all(np.isfinite(value)):
                return f"tensor {name} contains NaN or Inf"
        examples = metrics.get("num-examples", 0)
        if isinstance(examples, bool) or not isinstance(examples, (int, float)) or not math.isfinite(examples) or examples <= 0:
            return f"num-examples must be a positive number, got {examples!r}"
        limit = self.norm_limit(metrics)
        if math.isfinite(limit):
            norm = math.sqrt(sum(
                float(np.sum((np.asarray(update[n], np.float64) - self.reference[n]) ** 2)) for n in self.shapes
            ))
            if norm > limit:
                return f"update norm {norm:.3g} is beyond what this round's clipped training can produce ({limit:.3g})"
        return ""
