"""Conversions between fedpath's numpy weight dicts and Flower's ArrayRecord."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord


def to_array_record(state: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in state.items()})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def record_bytes(record: ArrayRecord) -> int:
    """Payload size of the tensors (what dominates the message on the wire)."""
    return int(sum(len(array.data) for array in record.values()))
