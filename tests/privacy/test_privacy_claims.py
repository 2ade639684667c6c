"""Five claims of docs/PRIVACY.md that no other test checked (issue 26), each written as the attack where
there is one: the coordinator chooses the run config (its seed, δ in simulation, `public-fraction`,
`stain`, `bn-statistics`), the run id and the round, and may run code beside the site's process.

1. δ ≤ 1/(10·n) counts the records of the site's unit: at patient level the patients.
2. A round's noise, sampling and augmentation come from the site's own `dp-seed` (or fresh OS
   randomness), never from the run config's seed or the process's global random state.
3. The public share is held out from every site.
4. `stain` and `bn-statistics` cannot change a site's σ, q, steps or ε.
5. The augmentation draws (flips, rotations, stain) come from the round's secret seed.

The dp-seeds are 64 hex characters (256 bits), valid under any rule asking for >= 128-bit keys.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from client.identity import site_identity
from client.round_types import RoundRequest, RoundResult
from client.site import run_round
from common.config.run_config import ConfigError, RunConfig
from common.data.folder import load_image_folder
from common.data.sources import (
    all_simulated_sites,
    central_test_set,
    load_pool,
    public_share,
    server_validation_set,
    simulated_site,
)
from common.data.stain_handling import stain_bases
from common.data.synthetic import make_synthetic
from common.model.factory import initial_model
from common.model.network import frozen_fingerprint, get_trainable_state
from common.privacy.ledger import LEDGER_FILE
from common.privacy.randomness import public_randomness
from common.training.local import train_local
from common.training.patient_dp import patient_counts
from common.training.settings import TrainSettings
from server.target_statistics import head_input_mean, public_batchnorm_statistics
from tests.conftest import tiny_run_config, write_image_tree
from tests.helpers.site_inputs import new_site

SECRET, OTHER_SECRET = "ab" * 32, "cd" * 32
CLASSES = ["benign", "tumour"]
PATCHES, PATIENTS = 40, 10  # the deployed site's data below: 2 classes x 20 patches, patients of 4 patches
SIZE = 16  # pixels: small images keep these rounds quick; nothing here depends on the size


def _patient_tree(root: Path) -> Path:
    """A deployed site's ImageFolder whose groups.csv names the patients (so its unit is the patient)."""
    per_class, per_patient = PATCHES // 2, PATCHES // PATIENTS
    write_image_tree(root, per_class, size=SIZE)
    rows = [f"{c}/{i}.png,{c}-patient-{i // per_patient}" for c in CLASSES for i in range(per_class)]
    (root / "groups.csv").write_text("path,group\n" + "\n".join(rows) + "\n")
    return root


def _node(state: Path, data: Path, **extra: object) -> dict[str, object]:
    """The site's own node config; val-fraction 0 keeps every patch in training (n and patients exact)."""
    return {"data-path": str(data), "site-id": "hospital-a", "epsilon-budget": 8.0, "delta": 1e-3,
            "state-dir": str(state), "val-fraction": 0, "accept-new-ledger": new_site()["accept-new-ledger"], **extra}


def _request(config: RunConfig, classes: list[str] = CLASSES, bn_statistics: bytes | None = None) -> RoundRequest:
    model, _ = initial_model(config, len(classes))
    return RoundRequest(1, 1, get_trainable_state(model), classes, frozen_fingerprint(model),
                        bn_statistics=bn_statistics)


def _update(result: RoundResult, request: RoundRequest) -> np.ndarray:
    assert result.status == "trained"
    return np.concatenate([(result.update[k] - request.arrays[k]).ravel() for k in sorted(request.arrays)])


# -- 1. delta at patient level ------------------------------------------------------------------------
def test_a_deployed_sites_delta_is_checked_against_its_patients_at_patient_level(tmp_path: Path) -> None:
    """A δ between 1/(10·patches) and 1/(10·patients) is fine per patient and refused per patch; one just above
    1/(10·patients) is refused per patient, before anything is trained or spent. Together they pin the count."""
    data = _patient_tree(tmp_path / "data")
    config = RunConfig.from_mapping({"image-size": SIZE, "batch-size": 16, "num-server-rounds": 1,
                                     "noise-multiplier": 3.0})  # σ given: no calibration, a quick round
    request = _request(config)
    between = 0.5 * (1 / (10 * PATCHES) + 1 / (10 * PATIENTS))
    trained = run_round(site_identity(_node(tmp_path / "a", data, delta=between), config, 1), config, request)
    assert trained.status == "trained" and trained.reply.privacy_unit == "patient"
    assert trained.metrics["privacy-records"] == PATIENTS and trained.metrics["delta"] == pytest.approx(between)
    patch_site = site_identity(_node(tmp_path / "b", data, delta=between, **{"privacy-unit": "patch"}), config, 1)
    with pytest.raises(ConfigError, match=rf"n={PATCHES} training records \(unit: patch\): delta must be at most"):
        run_round(patch_site, config, request)
    above = 1.01 / (10 * PATIENTS)
    with pytest.raises(ConfigError, match=rf"n={PATIENTS} training records \(unit: patient\): delta must be at most"):
        run_round(site_identity(_node(tmp_path / "c", data, delta=above), config, 1), config, request)
    assert not (tmp_path / "b" / LEDGER_FILE).exists() and not (tmp_path / "c" / LEDGER_FILE).exists()


def test_a_coordinators_delta_too_large_for_a_simulated_sites_patients_is_refused_there(tmp_path: Path) -> None:
    """In simulation δ is the run config's, so the coordinator's: the site refuses one above 1/(10·its patients)
    before it trains or spends, and δ = 0 gives exactly 1/(10·patients), not 1/(10·patches)."""
    base = tiny_run_config(**{"privacy-unit": "auto", "num-server-rounds": 1, "output-dir": str(tmp_path),
                              "image-size": SIZE, "synthetic-images": 120, "noise-multiplier": 3.0})
    auto = RunConfig.from_mapping({**base, "delta": 0.0})
    train = simulated_site(auto, 0, 2).train
    patients, _ = patient_counts(train.groups, auto.max_patches_per_patient)
    assert 1 < patients < len(train)
    request = _request(auto, list(train.classes))
    node = {"partition-id": 0, "num-partitions": 2}
    result = run_round(site_identity(node, auto, 1), auto, request)
    assert result.reply.privacy_unit == "patient" and result.metrics["privacy-records"] == patients
    assert result.metrics["delta"] == pytest.approx(1 / (10 * patients))
    too_large = RunConfig.from_mapping({**base, "delta": 1.01 / (10 * patients)})
    identity = site_identity(node, too_large, 2)  # another run: a fresh simulated site
    with pytest.raises(ConfigError, match=rf"n={patients} training records \(unit: patient\): delta must be at most"):
        run_round(identity, too_large, request)
    assert not (identity.state_dir / LEDGER_FILE).exists()


# -- 2. the round's randomness is the site's -------------------------------------------------------------
def _scramble_global_random_state(value: int) -> None:
    """What code beside the site could do to the process's global generators (and what a seed there would fix)."""
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)
    torch.rand(17), np.random.rand(5), random.random()


@pytest.mark.slow  # six site rounds
@pytest.mark.parametrize("unit", ["patch", "patient"])
def test_noise_sampling_and_augmentation_follow_the_sites_dp_seed_and_nothing_the_coordinator_sets(
        unit: str, tmp_path: Path, weights_file: Path) -> None:
    """Replay with everything the coordinator controls changed (run-config seed, run id, round, the global RNG
    state): the same site secret gives the same update bit for bit, so none of it entered the noise, the
    sampling or the augmentation (flips and stain, both on); another secret gives independent noise.

    The starting weights come from a file, so the run-config seed changes nothing else at a deployed site.
    Large noise and tiny clipping make the update almost all noise: two independent ones correlate by about
    1/sqrt(10,000 values) = 0.01, far below the 0.3 tested.
    """
    data = _patient_tree(tmp_path / "data")
    assert stain_bases(load_image_folder(data, SIZE, use_cache=False).images)[1].sum() >= PATCHES // 4  # stain draws
    settings = {"image-size": SIZE, "batch-size": 16, "num-server-rounds": 2, "weights": str(weights_file),
                "stain": "augment", "noise-multiplier": 2.0, "max-grad-norm": 0.01, "lr": 1.0, "momentum": 0.0}
    request = _request(RunConfig.from_mapping({**settings, "seed": 1}))

    def replay(state: str, seed: int, dp_seed: str, run_id: int = 1, server_round: int = 1) -> np.ndarray:
        config = RunConfig.from_mapping({**settings, "seed": seed})
        identity = site_identity(_node(tmp_path / state, data, **{"dp-seed": dp_seed, "privacy-unit": unit}),
                                 config, run_id)
        moved = RoundRequest(run_id, server_round, request.arrays, request.classes, request.frozen_fingerprint)
        result = run_round(identity, config, moved)
        assert result.reply.randomness == "site-seed" and result.reply.privacy_unit == unit
        return _update(result, request)

    first = replay("a", seed=1, dp_seed=SECRET)
    _scramble_global_random_state(987_654)
    again = replay("b", seed=2, dp_seed=SECRET, run_id=7, server_round=2)
    np.testing.assert_array_equal(first, again)
    other = replay("c", seed=1, dp_seed=OTHER_SECRET)
    assert np.abs(first).max() > 0 and abs(float(np.corrcoef(first, other)[0, 1])) < 0.3


# -- 3. the public share ------------------------------------------------------------------------------
@pytest.mark.parametrize("partitioning", ["iid", "dirichlet"])
def test_no_group_of_the_public_share_is_at_any_site_whatever_the_coordinator_chooses(partitioning: str) -> None:
    """The centre may use its public share without DP (pretraining, BatchNorm statistics), so no patient of a site
    may be in it: for every seed and public fraction tried, the public share, the test set and the sites are
    disjoint in groups (with the server's validation part), and together they are the whole pool (nothing is made disjoint by being dropped)."""
    for seed in range(4):
        for fraction in (0.1, 0.3, 0.5):
            config = RunConfig.from_mapping(tiny_run_config(
                **{"partitioning": partitioning, "public-fraction": fraction, "seed": seed, "dirichlet-alpha": 1.0}))
            public, test = set(public_share(config).groups), set(central_test_set(config).groups)
            validation = set(server_validation_set(config)[0].groups)  # round acceptance's, cut from the held-out
            sites = [set(s.train.groups) | set(s.val.groups) for s in all_simulated_sites(config, 3)]
            assert public and test and validation and all(sites)
            parts = [public, test, validation, *sites]
            assert sum(len(p) for p in parts) == len(set().union(*parts)), (seed, fraction)  # pairwise disjoint
            assert set().union(*parts) == set(load_pool(config)[0].groups)


# -- 4. stain and bn-statistics cannot change what a site spends ----------------------------------------
def _spend(result: RoundResult, state_dir: Path) -> tuple[dict[str, float], object]:
    keys = ("noise-multiplier", "sample-rate", "steps", "epsilon", "epsilon-granted", "delta", "privacy-records",
            "num-examples")
    ledger = json.loads((state_dir / LEDGER_FILE).read_text())
    return {k: result.metrics[k] for k in keys}, ledger["accountant"]["history"]


@pytest.mark.slow  # five site rounds, each calibrating sigma
def test_stain_and_bn_statistics_cannot_change_a_sites_sigma_q_steps_or_epsilon(tmp_path: Path) -> None:
    """Each `stain` value, each `bn-statistics` value and `center-head` on or off gives the site the same privacy
    plan and the same spend: the same σ, q, steps, ε, δ and records in the reply, and the same accountant history
    on its ledger."""
    base = tiny_run_config(**{"privacy-unit": "auto", "num-server-rounds": 2, "public-fraction": 0.2,
                              "output-dir": str(tmp_path / "runs"), "image-size": SIZE, "synthetic-images": 160})
    node = {"partition-id": 0, "num-partitions": 2}
    spends = {}
    for run_id, overrides in enumerate([{"stain": s} for s in ("none", "normalize", "augment", "normalize+augment")]
                                       + [{"bn-statistics": "public"}, {"center-head": "off"}], start=1):
        config = RunConfig.from_mapping({**base, **overrides})
        classes = list(load_pool(config)[0].classes)
        model, _ = initial_model(config, len(classes))
        blob, _ = public_batchnorm_statistics(config, model, tmp_path / "server" / str(run_id))  # None: backbone
        mean, _ = head_input_mean(config, model, server_validation_set(config)[0], False)  # None: center-head = off
        request = RoundRequest(1, 1, get_trainable_state(model), classes, frozen_fingerprint(model), bn_statistics=blob,
                               head_input_mean=mean)
        identity = site_identity(node, config, run_id)
        result = run_round(identity, config, request)
        assert result.status == "trained" and result.reply.privacy_unit == "patient"
        spends[str(overrides)] = _spend(result, identity.state_dir)
    first = next(iter(spends.values()))
    assert first[0]["epsilon"] > 0 and first[0]["noise-multiplier"] > 0
    assert all(spend == first for spend in spends.values()), spends


# -- 5. augmentation draws come from the round's secret ----------------------------------------------------
@pytest.mark.parametrize("unit", ["patch", "patient"])
def test_augmentation_draws_come_from_the_rounds_secret_seed(unit: str) -> None:
    """DP training with σ = 0 and q = 1 (every record in every step): nothing random is left but the
    augmentation. The same round seed gives the same update whatever the global random state; another seed
    changes it with flips alone and with stain augmentation alone, and changes nothing with both off (so the
    change is the augmentation's, not the sampling's or the noise's)."""
    data = make_synthetic(40, SIZE, seed=3)  # slides of several patches: the patients

    def update(key: str, flips: bool, stain: bool, global_state: int = 0) -> np.ndarray:
        torch.manual_seed(0)  # the same starting model every time
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, len(data.classes)))
        start = torch.cat([p.detach().flatten() for p in model.parameters()])
        _scramble_global_random_state(global_state)
        settings = TrainSettings(epochs=1, batch_size=len(data), lr=1.0, momentum=0.0, randomness=public_randomness(key),
                                 dp=True,
                                 noise_multiplier=0.0, max_grad_norm=1.0, privacy_unit=unit,
                                 max_patches_per_patient=len(data), augment=flips, stain_augment=stain)
        outcome = train_local(model, data, settings)
        assert (outcome.steps, outcome.sample_rate) == (1, 1.0)
        return (torch.cat([p.detach().flatten() for p in model.parameters()]) - start).numpy()

    seed, other = "round-key-a", "round-key-b"  # two 256-bit round keys
    for flips, stain in ((True, False), (False, True), (True, True)):
        first = update(seed, flips, stain)
        np.testing.assert_array_equal(first, update(seed, flips, stain, global_state=987_654))
        assert not np.array_equal(first, update(other, flips, stain)), (flips, stain)
    np.testing.assert_array_equal(update(seed, False, False), update(other, False, False))
