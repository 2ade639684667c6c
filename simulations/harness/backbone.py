"""The experiments' backbone: ResNet-18 pretrained (non-private) on the public share of groups.

No ImageNet weights can be downloaded here; with them in the torch hub cache the transfer
experiment adds them. Every weights file carries its provenance in a JSON sidecar.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from common.config.stain_settings import normalises
from common.data.sources import public_share_as_trained
from common.model.weights import imagenet_file, resolve_weights
from common.paths import REPO
from server.pretrain import pretrain, write_weights
from simulations.harness.scenario import Scenario, base_scenario

log = logging.getLogger("fedpath.experiment")


def _weights_name(scenario: Scenario, epochs: int) -> str:
    stain = "-macenko" if normalises(scenario.stain) else ""
    return f"resnet18-lc25000-public-{scenario.image_size}px-s{scenario.seed}-e{epochs}{stain}.pth"


def pretrained_weights(scenario: Scenario, out: Path, epochs: int) -> Path:
    """Backbone pretrained on the public share of groups (made once, then reused); for a scenario
    that stain-normalises, on the share normalised as its sites' images will be."""
    path = out / "weights" / _weights_name(scenario, epochs)
    if path.exists():
        return path
    config = scenario.config()
    data = public_share_as_trained(config)
    reference = config.stain_reference or "torchstain's reference"
    init, state = resolve_weights("auto", "resnet18", download=False)
    log.info("pretraining on the public share: %d images, %d groups", len(data), len(set(data.groups.tolist())))
    started = time.time()
    net, stats = pretrain(data, "resnet18", epochs, 64, 0.05, scenario.seed, state)
    described = (f"public share (public-fraction={config.public_fraction}, seed={config.seed}, "
                 f"test-fraction={config.test_fraction}) of LC25000 lung: groups held out from every simulated "
                 "site and from the test set"
                 + (f", stain-normalised (Macenko, torchstain) to {reference}" if normalises(scenario.stain) else ""))
    write_weights(net, path, {
        "description": (f"resnet18 pretrained (non-private) by server.pretrain on {len(data)} images, "
                        f"{len(set(data.groups.tolist()))} groups of {described}; starting from "
                        f"{init.description}. Not ImageNet weights."),
        "arch": "resnet18", "classes": data.classes, "image_size": scenario.image_size, "epochs": epochs,
        "seed": scenario.seed, "data": described, "images": len(data), "seconds": round(time.time() - started, 1),
        **stats,
    })
    return path


def imagenet_available() -> bool:
    return imagenet_file("resnet18")[0].exists()


def weights_provenance(weights: Path) -> str:
    """The weights file's own description and SHA-256 (the copy used, wherever it lives)."""
    sidecar = weights.with_name(weights.name + ".json")
    if not sidecar.exists():
        return "provenance file not found"
    data = json.loads(sidecar.read_text())
    return f"{data['description']} SHA-256 {data.get('sha256', '?')[:16]}…"


def audit_weights(scenario: Scenario, out: Path, epochs: int) -> Path:
    """The experiments' public-share backbone; made in a git-ignored cache when the published
    copy is absent, so re-making it never rewrites the published provenance files."""
    published = out / "weights" / _weights_name(scenario, epochs)
    if published.exists():
        return published
    return pretrained_weights(scenario, REPO / ".cache" / "experiment", epochs)


def backbone_epochs(quick: bool) -> int:
    """How long the experiments' backbone is pretrained: 5 epochs at the quick size, 15 at full size."""
    return 5 if quick else 15


def experiments_backbone(quick: bool, data: Path, out: Path, stain: str = "none") -> Path:
    """The public-share backbone every experiment at this size starts from (made once); with a
    normalising `stain`, its twin pretrained on the Macenko-normalised share."""
    scenario = dataclasses.replace(base_scenario(quick, data), stain=stain)
    return pretrained_weights(scenario, out, backbone_epochs(quick))


def heterogeneity_base(quick: bool, data: Path, out: Path) -> Scenario:
    """The heterogeneity experiment's federation (quick: 5 sites, 3 rounds) on the experiments'
    backbone; the stain-strategy experiment re-runs its settings."""
    base = base_scenario(quick, data)
    if quick:
        base = dataclasses.replace(base, rounds=3, sites=5)
    return dataclasses.replace(base, weights=str(experiments_backbone(quick, data, out)))
