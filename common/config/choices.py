"""Names a run config may choose from, and defaults that code beyond the config uses, kept free of heavy imports.

`common.config` validates a run config with these; it must not import torch, torchvision or
Opacus to do so (a site's pre-flight check and the launchers read configs before anything
trains, and importing torch costs seconds). The modules that implement the choices
(`common.model`, `common.training`, ...) import the names and defaults from here and check that
they implement each one.
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
# Whether the sites train the head on centred features (common.model.head_centering.centring_applies):
# auto = from scratch only, on, off.
CENTER_HEAD_SETTINGS: Final[tuple[str, ...]] = ("auto", "on", "off")
# Which aggregated models the server keeps (`round-acceptance`, server.round_acceptance): `validation` keeps a
# round iff its validation accuracy (server-held data, never the test set) is >= the starting model's (round 0);
# `all` keeps every round. The first is the default.
ROUND_ACCEPTANCE_SETTINGS: Final[tuple[str, ...]] = ("validation", "all")
# round-acceptance = validation with public-fraction = 0: this share of the groups the server holds out for
# testing is its validation part instead (common.data.sources), group-disjoint from the test set that remains.
SERVER_VALIDATION_FRACTION: Final[float] = 0.25
# DP-SGD: the fewest records (patients, or patches) a step expects (`min-records-per-step`,
# common.training.steps.epoch_steps raises q to reach it). The noise per record in a step is σ/(q·N): at the patient
# unit a 64-patch batch of 16-patch patients holds 4 patients and the signal drowns (docs/BENCHMARKS.md,
# "patient-privacy"). 1 = plan from the batch size alone, as before issue 23.
DEFAULT_MIN_RECORDS_PER_STEP: Final[int] = 16
# Patient-level DP: at most this many of a sampled patient's patches per step (`max-patches-per-patient`).
# It bounds a step's work and keeps its expected patches near the batch size; the per-patient clipping,
# not the cap, bounds a patient's influence (common.training.patient_dp).
DEFAULT_MAX_PATCHES_PER_PATIENT: Final[int] = 16
