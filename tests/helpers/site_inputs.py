"""A deployed site's inputs for round tests: an ImageFolder of synthetic patches, its node config,
the run config and the server's request."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from PIL import Image

from client.round_types import RoundRequest
from common.config.run_config import RunConfig
from common.data.synthetic import make_synthetic
from common.model.factory import initial_model
from common.model.network import frozen_fingerprint, get_trainable_state

CLASSES = ["benign", "tumour"]


def site_tree(root: Path, per_class: int = 30, classes: list[str] = CLASSES) -> Path:
    """An ImageFolder tree of synthetic 32 px patches (no groups.csv: the unit is the patch)."""
    images = make_synthetic(per_class * len(classes), 32, seed=3).images
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(images[c * per_class + i]).save(root / name / f"{i}.png")
    return root


def site_config(**extra: object) -> RunConfig:
    """A one-round run config for 32 px patches."""
    values = {"image-size": 32, "batch-size": 16, "num-server-rounds": 1, "seed": 3, "val-fraction": 0.2}
    values.update(extra)
    return RunConfig.from_mapping(values)


def new_site() -> dict[str, str]:
    """What a new deployed site over a tree without groups.csv says in its node config: patch-level DP, chosen
    explicitly, and today's acknowledgement that its ledger starts at epsilon 0 (common.privacy.new_ledger)."""
    return {"privacy-unit": "patch", "accept-new-ledger": dt.date.today().isoformat()}


def deployed_node(tmp_path: Path, data: Path, **node: object) -> dict[str, object]:
    """A new deployed site's node config over `data` (`new_site`), its state under `tmp_path / "state"`."""
    return {"data-path": str(data), "site-id": "hospital-a", "epsilon-budget": 8.0, "delta": 1e-4,
            "state-dir": str(tmp_path / "state"), **new_site(), **node}


def round_request(config: RunConfig, classes: list[str] = CLASSES) -> RoundRequest:
    """The server's round-1 request with the run's starting model."""
    model, _ = initial_model(config, len(classes))
    return RoundRequest(1, 1, get_trainable_state(model), classes, frozen_fingerprint(model))
