"""Names a run config may choose from, kept free of heavy imports.

`common.config` validates a run config with these; it must not import torch, torchvision or
Opacus to do so (a site's pre-flight check and the launchers read configs before anything
trains, and importing torch costs seconds). The modules that implement the choices
(`common.model`, ...) import the names from here and check that they implement each one.
"""

from __future__ import annotations

from typing import Final

ARCHITECTURE_NAMES: Final[tuple[str, ...]] = ("resnet18", "resnet34", "resnet50")
POLICIES: Final[tuple[str, ...]] = ("full", "last-block", "norm-head", "head")
# Policies that train convolutions: their per-sample norms use ghost clipping (hooks would be slow).
CONV_POLICIES: Final[tuple[str, ...]] = ("full", "last-block")
# Where the frozen BatchNorm statistics come from (common.model.bn_statistics): the backbone's own, or
# re-estimated by the server on the run's public share (target-domain data it holds) before round 1.
BN_STATISTICS_SETTINGS: Final[tuple[str, ...]] = ("backbone", "public")
