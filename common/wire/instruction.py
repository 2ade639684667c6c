"""The server -> site train instruction: every key of a round's train config, its type and who sets it.

This is the one definition of the instruction, as `common.wire.reply` is of the reply. The server
builds its part with `build` (`server.app`), Flower's strategy adds its own keys (`server-round`;
FedProx's `proximal-mu`), and the site reads the whole with `parse` (`client.app`), which refuses
undeclared keys and missing ones: a coordinator cannot slip a new instruction past the site, and a
key renamed at one end fails loudly instead of being read as absent.

`parse` checks each value's type only. What a value may be is checked where it is used, before any
data is read: tensors and BatchNorm statistics by `client.server_input`, `proximal-mu` by the round
(its own refusal code, `invalid-proximal-mu`), the classes and the fingerprint against the site's
own data and model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SERVER_ROUND, CLASSES, FROZEN_FINGERPRINT, JOB_ID = "server-round", "classes", "frozen-fingerprint", "job-id"
BN_STATISTICS, PROXIMAL_MU, HEAD_INPUT_MEAN = "bn-statistics", "proximal-mu", "head-input-mean"
FLOWER, FLOWER_FEDPROX, SERVER = "Flower's strategy", "Flower's FedProx", "fedpath's server (server.app)"


@dataclass(frozen=True)
class InstructionField:
    key: str
    kind: type | None  # None: any type; the site checks the value itself (see the module doc)
    set_by: str
    required: bool
    meaning: str


FIELDS: tuple[InstructionField, ...] = (
    InstructionField(SERVER_ROUND, int, FLOWER, True,
                     "the job's round: Flower's round plus the rounds a resumed run had completed"),
    InstructionField(CLASSES, list, SERVER, True, "the run's class names, in label order"),
    InstructionField(FROZEN_FINGERPRINT, str, SERVER, True,
                     "SHA-256 of the frozen layers the site must build identically"),
    InstructionField(JOB_ID, int, SERVER, False,
                     "the run that started this job (a resumed run names its first run): a claim the site verifies"),
    InstructionField(BN_STATISTICS, bytes, SERVER, False,
                     "with bn-statistics = public: BatchNorm statistics estimated on the server's public share"),
    InstructionField(HEAD_INPUT_MEAN, bytes, SERVER, False,
                     "with center-head on (or auto from scratch): the mean of the head's input over server-held images (float32), "
                     "to train the head on centred features (common.model.head_centering)"),
    InstructionField(PROXIMAL_MU, None, FLOWER_FEDPROX, False,
                     "with strategy = fedprox: the weight μ of the proximal term"),
)
FIELD_BY_KEY = {f.key: f for f in FIELDS}


class InstructionError(ValueError):
    """A train instruction does not follow the schema (undeclared or missing key, wrong type)."""


@dataclass(frozen=True)
class TrainInstruction:
    """What the server's train config says, typed. Optional keys the server did not send are None."""

    server_round: int
    classes: list[str]
    frozen_fingerprint: str
    job_id: int | None = None
    bn_statistics: Any = None
    proximal_mu: Any = None
    head_input_mean: Any = None


def build(classes: list[str], frozen_fingerprint: str, job_id: int,
          bn_statistics: bytes | None = None, head_input_mean: bytes | None = None) -> dict[str, Any]:
    """The keys fedpath's server sets; Flower's strategy adds `server-round` (and FedProx `proximal-mu`)."""
    config: dict[str, Any] = {CLASSES: list(classes), FROZEN_FINGERPRINT: frozen_fingerprint, JOB_ID: int(job_id)}
    if bn_statistics is not None:
        config[BN_STATISTICS] = bn_statistics
    if head_input_mean is not None:
        config[HEAD_INPUT_MEAN] = head_input_mean
    return config


def parse(config: Mapping[str, Any]) -> TrainInstruction:
    """The instruction a site received, checked against `FIELDS` (raises InstructionError)."""
    undeclared = sorted(set(config) - set(FIELD_BY_KEY))
    if undeclared:
        raise InstructionError(f"undeclared keys {undeclared} in the server's train instruction")
    missing = sorted(f.key for f in FIELDS if f.required and f.key not in config)
    if missing:
        raise InstructionError(f"keys {missing} missing from the server's train instruction")
    values = {f.key: _typed(f, config[f.key]) for f in FIELDS if f.key in config}
    return TrainInstruction(
        server_round=values[SERVER_ROUND], classes=[str(c) for c in values[CLASSES]],
        frozen_fingerprint=values[FROZEN_FINGERPRINT], job_id=values.get(JOB_ID),
        bn_statistics=values.get(BN_STATISTICS), proximal_mu=values.get(PROXIMAL_MU),
        head_input_mean=values.get(HEAD_INPUT_MEAN),
    )


def _typed(f: InstructionField, value: Any) -> Any:
    if f.kind is None:
        return value
    if f.kind is int and not isinstance(value, bool) and isinstance(value, (int, float)) and float(value).is_integer():
        return int(value)
    if f.kind is list and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    if f.kind in (str, bytes) and isinstance(value, f.kind):
        return value
    raise InstructionError(f"{f.key} must be {_KIND_TEXT[f.kind]}, got {type(value).__name__}")


_KIND_TEXT = {int: "a whole number", list: "a list of text", str: "text", bytes: "bytes"}
