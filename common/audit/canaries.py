"""Audit canaries: made-up records that a simulated site trains on with probability ½ each.

Shared by the audit experiment (`simulations.harness.audit`) and a simulation run's report
(`audit-canaries = m`), so that both audit the same way. Flower-free and harness-free: the
ServerApp imports it.

A canary is its own record at either unit of privacy (at the patient unit, a made-up
patient of its own). The coin flips that decide which canaries are included come from the
run (or experiment) seed: in a simulation the experimenter plays every hospital, so the
*evaluation* may know them; the guessing (`server.privacy_audit`, `simulations.harness.audit`) never
uses them, it ranks the canaries by a score fixed before the run.

Deployed sites never hold canaries (`client.site` refuses such a round).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from common.data.imageset import ImageSet
from common.paths import AUDITED_PARTITION, AUDITED_SITE  # noqa: F401 - re-exported: the audit's names for them

CANARY_PREFIX = "canary-"
RUN_CANARY_STREAM = 1212  # separates a run's canary randomness from every other use of its seed


def make_canaries(source: ImageSet, m: int, rng: np.random.Generator) -> ImageSet:
    """m patches of `source`, spread over as many groups as possible, each given a random wrong label."""
    groups = [rng.permutation(np.flatnonzero(source.groups == g)).tolist() for g in rng.permutation(np.unique(source.groups))]
    picked: list[int] = []
    while len(picked) < m and any(groups):
        for members in groups:
            if members and len(picked) < m:
                picked.append(members.pop())
    if len(picked) < m:
        raise ValueError(f"only {len(picked)} records available for {m} canaries")
    chosen = source.subset(np.asarray(picked, dtype=np.int64))
    classes = len(source.classes)
    wrong = (chosen.labels + rng.integers(1, classes, len(chosen))) % classes
    return _as_canaries(chosen.images, wrong, source.classes, source.patient_groups)


def noise_canaries(m: int, image_size: int, classes: list[str], rng: np.random.Generator,
                   patient_groups: bool = True, block: int = 1) -> ImageSet:
    """m images of uniform noise, each with a random label.

    Out-of-distribution canaries: they hold no patient's data and need no data source (the
    server and the simulated site make the same ones from the run seed). How well a model
    memorises them, against mislabelled patches, is measured, not assumed: see the pilots in
    docs/results/audit-quick/pilots.md (neither is memorised by a `norm-head` model at 16 px).
    """
    if block > 1:  # coarse random colour blocks: each canary looks different to a CNN, unlike fine noise
        cells = -(-image_size // block)
        coarse = rng.integers(0, 256, (m, cells, cells, 3), dtype=np.uint8)
        images = np.ascontiguousarray(coarse.repeat(block, axis=1).repeat(block, axis=2)[:, :image_size, :image_size])
    else:
        images = rng.integers(0, 256, (m, image_size, image_size, 3), dtype=np.uint8)
    return _as_canaries(images, rng.integers(0, len(classes), m), classes, patient_groups)


def _as_canaries(images: np.ndarray, labels: np.ndarray, classes: list[str], patient_groups: bool) -> ImageSet:
    ids = np.array([f"{CANARY_PREFIX}{i:05d}" for i in range(len(images))], dtype=object)
    return ImageSet(images, np.asarray(labels, dtype=np.int64), ids, list(classes), patient_groups=patient_groups)


def coin_flips(m: int, rng: np.random.Generator) -> np.ndarray:
    """Which canaries are included: independent fair coins (the one-run audit's design)."""
    return rng.random(m) < 0.5


def concat(parts: list[ImageSet]) -> ImageSet:
    """One ImageSet of several (same classes); patient groups only if every part names patients."""
    return ImageSet(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                    np.concatenate([np.asarray(p.groups, dtype=object) for p in parts]), list(parts[0].classes),
                    patient_groups=all(p.patient_groups for p in parts))


def run_canaries(seed: int, m: int, image_size: int, classes: list[str]) -> tuple[ImageSet, np.ndarray]:
    """(the m canaries, their coin flips) of a simulation run with `audit-canaries = m`.

    A function of the run config alone (seed, size, classes), so the simulated site that
    holds them and the server that scores them make the same ones without exchanging them.
    """
    canaries = noise_canaries(m, image_size, classes, np.random.default_rng([seed, RUN_CANARY_STREAM, 0]))
    return canaries, run_coin_flips(seed, m)


def run_coin_flips(seed: int, m: int) -> np.ndarray:
    """The coin flips alone (their own stream): what the evaluation compares the guesses with."""
    return coin_flips(m, np.random.default_rng([seed, RUN_CANARY_STREAM, 1]))


def with_included(train: ImageSet, canaries: ImageSet, included: np.ndarray) -> ImageSet:
    """The site's training data plus the included canaries (each its own patient)."""
    added = canaries.subset(np.flatnonzero(included))
    groups = np.concatenate([np.asarray(train.groups, dtype=object), np.asarray(added.groups, dtype=object)])
    return ImageSet(np.concatenate([train.images, added.images]), np.concatenate([train.labels, added.labels]),
                    groups, list(train.classes), train.report, train.patient_groups)


def with_run_canaries(data: Any, config: Any) -> Any:
    """A simulated site's data (`SiteData`) with the run's included canaries added to its training
    split (none when `audit-canaries` is 0). Canaries are added after stain handling: they are
    not tissue, and the server scores them exactly as made."""
    if config.audit_canaries <= 0:
        return data
    canaries, included = run_canaries(config.seed, config.audit_canaries, config.image_size, data.train.classes)
    return dataclasses.replace(data, train=with_included(data.train, canaries, included))


def per_example_loss(model: Any, data: ImageSet, batch_size: int = 512) -> np.ndarray:
    """Cross-entropy of every record under `model` (eval mode)."""
    from common.training.local import predict

    probs, _ = predict(model, data, batch_size)
    return -np.log(np.clip(probs[np.arange(len(data)), data.labels], 1e-300, None))


def update_alignment(model: Any, data: ImageSet, sent: Mapping[str, np.ndarray], returned: Mapping[str, np.ndarray],
                     budget: float = 2e8) -> np.ndarray:
    """Per record: how far an update moved the model along the record's own descent direction,

        ⟨θ_returned − θ_sent, −∇ℓ(θ_sent)⟩ / ‖∇ℓ(θ_sent)‖   (over the trainable tensors but convolutions),

    i.e. the white-box view of a coordinator that holds both models. A record the site trained
    on pushed the update along its (clipped) gradient; one it did not, only by chance. It sees
    a record's push even when the push barely moves the record's loss. `budget` caps the
    per-sample gradient values held at once (memory), so a full ResNet-18 takes small chunks.
    """
    import torch
    from torch.func import functional_call, grad, vmap

    from common.model.inputs import normalise
    from common.model.network import set_trainable_state

    set_trainable_state(model, sent)
    model.cpu().eval()
    # Convolution kernels (4-D) are left out: per-sample gradients of 11 M values would cost minutes;
    # the head and the normalisation affines (all a `norm-head` model trains) carry the signal cheaply.
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad and p.ndim <= 2}
    delta = {n: torch.from_numpy(np.asarray(returned[n], dtype=np.float32)) - params[n] for n in params}

    def alignment(p: dict[str, Any], x: Any, y: Any) -> Any:
        def loss(q: dict[str, Any]) -> Any:
            return torch.nn.functional.cross_entropy(functional_call(model, q, (x[None],)), y[None])

        g = grad(loss)(p)
        dot = sum((g[n] * delta[n]).sum() for n in g)
        norm = torch.sqrt(sum((g[n] ** 2).sum() for n in g))
        return -dot / torch.clamp(norm, min=1e-12)

    per_sample = vmap(alignment, in_dims=(None, 0, 0))
    chunk = int(max(1, min(256, budget // max(1, sum(p.numel() for p in params.values())))))
    images = torch.from_numpy(np.ascontiguousarray(data.images)).permute(0, 3, 1, 2)
    labels = torch.from_numpy(data.labels)
    out = [per_sample(params, normalise(images[i:i + chunk]), labels[i:i + chunk]).detach().numpy()
           for i in range(0, len(data), chunk)]
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)

