"""What the server sent, checked before the site reads a single record.

A malicious coordinator can craft the tensors it sends (weights so large that one patient's logits
overflow, NaN statistics) hoping the reply differs with one patient present. Training already gives
any record whose values are not finite a zero gradient (`common.training.dp_engine`); this module is the
first line: non-finite or absurd values are refused *before* the data is loaded, so the refusal
depends only on what the server sent and reveals nothing about the site's records.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from client.round_types import RoundRequest

# Far beyond any trained ResNet's weights (|w| < 10 in torchvision's checkpoints and after DP-SGD,
# whose steps are bounded by lr·(C + noise)), and small enough that one layer cannot overflow
# float32 on normalised images. A larger value can only come from a broken or malicious server.
MAX_ABS_WEIGHT = 1e6


class ServerInputError(ValueError):
    """The server's instruction holds values no honest server sends; refused before any data is read."""


def check_server_input(request: RoundRequest) -> None:
    """Refuse non-finite or out-of-range tensors and numbers in the server's train instruction."""
    _check_arrays(request.arrays)
    # proximal-mu is refused with its own code (`invalid-proximal-mu`) by the round, also before training.
    if request.bn_statistics is not None:
        _check_float_bytes(request.bn_statistics, "BatchNorm statistics")
    if request.head_input_mean is not None:
        values = _check_float_bytes(request.head_input_mean, "head input mean")
        head = request.arrays.get("fc.weight")
        if head is None or np.asarray(head).ndim != 2 or len(values) != np.asarray(head).shape[1]:
            raise ServerInputError(f"the server's head input mean has {len(values)} values, not one per input of "
                                   "the head it sent")


def _check_float_bytes(blob: object, what: str) -> np.ndarray:
    """float32 bytes, finite and within ±MAX_ABS_WEIGHT, or ServerInputError naming `what`."""
    if not isinstance(blob, bytes) or len(blob) % 4:
        raise ServerInputError(f"the server's {what} are not float32 bytes")
    values = np.frombuffer(blob, dtype="<f4")
    if not np.isfinite(values).all() or float(np.abs(values).max(initial=0.0)) > MAX_ABS_WEIGHT:
        raise ServerInputError(f"the server's {what} hold non-finite values or values beyond ±{MAX_ABS_WEIGHT:g}")
    return values


def _check_arrays(arrays: Mapping[str, np.ndarray]) -> None:
    for name, array in arrays.items():
        values = np.asarray(array)
        if not np.issubdtype(values.dtype, np.floating):
            raise ServerInputError(f"the server's tensor {name} is {values.dtype}, not floating point")
        if not np.isfinite(values).all():
            raise ServerInputError(f"the server's tensor {name} holds non-finite values (NaN or inf)")
        largest = float(np.abs(values).max(initial=0.0))
        if largest > MAX_ABS_WEIGHT:
            raise ServerInputError(f"the server's tensor {name} holds |value| {largest:.3g} > {MAX_ABS_WEIGHT:g}: "
                                   "no trained network has such weights")
