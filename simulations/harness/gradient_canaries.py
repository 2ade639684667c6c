"""Gradient-space (Dirac) canaries for the audit experiment: the worst case DP-SGD must cover.

A DP-SGD proof covers *any* record, including one whose gradient is the same coordinate
vector G·e_j at every step, whatever the model (Nasr et al., "Tight auditing of
differentially private machine learning", USENIX Security 2023; Steinke, Nasr & Jagielski,
NeurIPS 2023, gradient canaries). Such a record needs no input image the model may fail to
memorise: its whole effect lands on one coordinate, so it is the strongest canary an
auditor of DP-SGD can plant, and the sharpest test of the implementation (clipping, the
noise, the sampling rate the accountant assumes).

Here each of m canaries owns a distinct coordinate j_i of the trainable parameters. An
included canary is one more record of the audited site (at the patient unit: a patient of
its own): Poisson-sampled with the step's rate q, like the real records, and when sampled
its per-record gradient G·e_{j_i} joins the step's real per-record gradients *before
clipping* (`TrainSettings.extra_records`, `common.extra_records`), so the site's own
clipping cuts it to C·e_{j_i}, as it must cut any record. G is far above C (`AuditPlan.
canary_norm`, 10·C): clipping that does not clip lets the canary through tenfold and
the audit sees it. The accountant stays right: every record, canary or not, is in a step
with probability q, and the rate does not depend on how many records there are.

The canaries' sampling draws come from the audit's own generator (seeded by the
experiment): they are part of the audited mechanism played by the experimenter, not
something the coordinator knows; the coordinator's guess uses only the scores
(`score`: how far the site's updates moved each canary's coordinate against its gradient).
Simulation only: deployed sites never hold canaries.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from common.model.inputs import as_tensor_dataset, normalise


def trainable(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The trainable parameters in the order the site's optimizer holds them."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def choose_coordinates(model: nn.Module, ranked: list[object], m: int, rng: np.random.Generator) -> np.ndarray:
    """m distinct flat coordinates of the trainable parameters, where real records push least.

    Ranked by Σ_records |per-record gradient| of the loss at the starting model on the record sets of
    `ranked` in turn (the audited site's own records first: their push is the noise the canaries must beat;
    then records no site holds, for ties), each record in its 8 dihedral variants, as training's augmentation
    shows them. A coordinate no record's gradient reaches (e.g. the head's weights on a feature that is zero
    for every image) carries nothing but the canary and the noise, so the canaries' pushes are easiest to see
    and the real records' push on them (`simulations.harness.audit_power`'s D) is smallest. Remaining ties
    are broken at random from `rng`.
    """
    pushes = [record_push(model, records) for records in ranked]
    if m > len(pushes[0]):
        raise ValueError(f"{m} gradient canaries but only {len(pushes[0])} trainable coordinates")
    order = np.lexsort((rng.random(len(pushes[0])), *reversed(pushes)))  # the last key sorts first
    return np.sort(order[:m]).astype(np.int64)


def record_push(model: nn.Module, records: object, budget: float = 2e8) -> np.ndarray:
    """Per flat trainable coordinate, Σ over `records` and their dihedral variants of |per-record gradient|.

    `budget` caps the per-record gradient values held at once (memory)."""
    from torch.func import functional_call, grad, vmap

    params = {name: p.detach() for name, p in trainable(model)}
    model.eval()

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, p, (x[None],)), y[None])

    per_record = vmap(grad(loss), in_dims=(None, 0, 0))
    images, labels = as_tensor_dataset(records).tensors  # type: ignore[arg-type]
    images, labels = dihedral_variants(images), labels.repeat(8)
    size = sum(p.numel() for p in params.values())
    chunk = int(max(1, min(256, budget // max(1, size))))
    push = torch.zeros(size, dtype=torch.float64)
    for start in range(0, len(labels), chunk):
        grads = per_record(params, normalise(images[start:start + chunk]), labels[start:start + chunk])
        push += torch.cat([grads[name].flatten(1).abs() for name in params], dim=1).sum(dim=0).double()
    return push.numpy()


def dihedral_variants(images: torch.Tensor) -> torch.Tensor:
    """(8·N, C, H, W): every NCHW image in each of its 8 flips and 90-degree turns (`random_dihedral`'s range)."""
    variants = []
    for variant in range(8):
        y = images.flip(3) if variant & 1 else images
        y = y.flip(2) if variant & 2 else y
        variants.append(y.transpose(2, 3) if variant & 4 else y)
    return torch.cat(variants)


class DiracCanaries:
    """The canaries of one audited site: called by its training once per step (see the module doc)."""

    def __init__(self, coordinates: np.ndarray, included: np.ndarray, norm: float, rng: np.random.Generator) -> None:
        self.coordinates = np.asarray(coordinates, dtype=np.int64)
        self.included = np.asarray(included, dtype=bool)
        self.norm = float(norm)  # G: each canary's per-record gradient norm, before clipping
        self.rng = rng
        self.sampled = np.zeros(len(self.coordinates), dtype=np.int64)  # times each canary took part

    def __call__(self, params: list[torch.Tensor], sample_rate: float) -> list[torch.Tensor]:
        """The per-record gradients of the canaries Poisson sampling takes into this step: (k, *p.shape) each."""
        take = self.included & (self.rng.random(len(self.coordinates)) < sample_rate)
        self.sampled += take
        sizes = [p.numel() for p in params]
        chosen = torch.from_numpy(self.coordinates[take])
        rows = torch.zeros(len(chosen), sum(sizes), dtype=params[0].dtype)
        rows[torch.arange(len(chosen)), chosen] = self.norm
        return [chunk.reshape(len(chosen), *p.shape) for chunk, p in zip(torch.split(rows, sizes, dim=1), params)]


def score(received: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray], coordinates: np.ndarray) -> np.ndarray:
    """Per canary, how far one update moved its coordinate against its gradient: −(sent − received)[j].

    The coordinator's view: the global model it sent and the model the site sent back; summed
    over rounds by the caller. Higher = more likely included.
    """
    delta = np.concatenate([(np.asarray(sent[name]) - np.asarray(received[name])).ravel() for name in sent])
    return -delta[coordinates].astype(np.float64)
