"""The starting model of a run, built the same way on the server and on every site."""

from __future__ import annotations

import copy
import functools

from torch import nn

from common.config.run_config import RunConfig
from common.model.network import apply_policy, build_resnet
from common.model.weights import WeightsSource, resolve_weights


@functools.lru_cache(maxsize=2)
def _base(
    arch: str, num_classes: int, weights: str, sha256: str, seed: int, download: bool
) -> tuple[nn.Module, WeightsSource]:
    source, state = resolve_weights(weights, arch, sha256, download=download)
    return build_resnet(arch, num_classes, state, seed), source


def initial_model(config: RunConfig, num_classes: int, download: bool = True) -> tuple[nn.Module, WeightsSource]:
    """A fresh copy of the run's starting model with its policy applied.

    Cached per process: a simulation actor plays many sites and rounds, and loading
    weights (or estimating scratch statistics) each time would dominate small rounds.
    """
    model, source = _base(config.arch, num_classes, config.weights, config.weights_sha256, config.seed, download)
    return apply_policy(copy.deepcopy(model), config.policy), source
