"""Gradient-space (Dirac) canaries for the audit experiment: the worst case DP-SGD must cover.

A DP-SGD proof covers *any* record, including one whose clipped gradient is the same
coordinate vector C·e_j at every step, whatever the model (Nasr et al., "Tight auditing of
differentially private machine learning", USENIX Security 2023; Steinke, Nasr & Jagielski,
NeurIPS 2023, gradient canaries). Such a record needs no input image the model may fail to
memorise: its whole effect lands on one coordinate, so it is the strongest canary an
auditor of DP-SGD can plant, and the sharpest test of the implementation (clipping, the
noise, the sampling rate the accountant assumes).

Here each of m canaries owns a distinct coordinate j_i of the trainable parameters. An
included canary is one more record of the audited site (at the patient unit: a patient of
its own): Poisson-sampled with the step's rate q, like the real records, and when sampled
it adds C·e_{j_i} (norm exactly C, so clipping leaves it unchanged) to the summed clipped
gradients before the noise (`common.training.TrainSettings.audit_gradient_canaries`).
The accountant therefore stays right: every record, canary or not, is in a step with
probability q, and the rate does not depend on how many records there are.

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


def choose_coordinates(model: nn.Module, public: object, m: int, rng: np.random.Generator,
                       batch_size: int = 256) -> np.ndarray:
    """m distinct flat coordinates of the trainable parameters, where the real data pushes least.

    Ranked by |mean gradient| of the loss on `public` (records no site holds) at the starting
    model: the coordinates the real records move least leave the canaries' pushes easiest to
    see. Ties (e.g. exactly zero gradients) are broken at random from `rng`.
    """
    params = [p for _, p in trainable(model)]
    model.eval()
    model.zero_grad(set_to_none=True)
    images, labels = as_tensor_dataset(public).tensors  # type: ignore[arg-type]
    for start in range(0, len(labels), batch_size):
        loss = nn.functional.cross_entropy(model(normalise(images[start:start + batch_size])),
                                           labels[start:start + batch_size], reduction="sum") / len(labels)
        loss.backward()
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().abs() for p in params])
    model.zero_grad(set_to_none=True)
    if m > flat.numel():
        raise ValueError(f"{m} gradient canaries but only {flat.numel()} trainable coordinates")
    jitter = rng.random(flat.numel())
    order = np.lexsort((jitter, flat.detach().double().numpy()))
    return np.sort(order[:m]).astype(np.int64)


class DiracCanaries:
    """The canaries of one audited site: called by its training once per step (see the module doc)."""

    def __init__(self, coordinates: np.ndarray, included: np.ndarray, clip_norm: float,
                 rng: np.random.Generator) -> None:
        self.coordinates = np.asarray(coordinates, dtype=np.int64)
        self.included = np.asarray(included, dtype=bool)
        self.clip_norm = float(clip_norm)
        self.rng = rng
        self.sampled = np.zeros(len(self.coordinates), dtype=np.int64)  # times each canary took part

    def __call__(self, params: list[torch.Tensor], sample_rate: float) -> list[torch.Tensor]:
        take = self.included & (self.rng.random(len(self.coordinates)) < sample_rate)
        self.sampled += take
        sizes = [p.numel() for p in params]
        flat = torch.zeros(sum(sizes), dtype=params[0].dtype)
        flat[torch.from_numpy(self.coordinates[take])] = self.clip_norm
        return [chunk.view_as(p) for chunk, p in zip(torch.split(flat, sizes), params)]


def score(received: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray], coordinates: np.ndarray) -> np.ndarray:
    """Per canary, how far one update moved its coordinate against its gradient: −(sent − received)[j].

    The coordinator's view: the global model it sent and the model the site sent back; summed
    over rounds by the caller. Higher = more likely included.
    """
    delta = np.concatenate([(np.asarray(sent[name]) - np.asarray(received[name])).ravel() for name in sent])
    return -delta[coordinates].astype(np.float64)
