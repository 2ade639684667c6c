"""Patient-level DP at a site: the unit follows the data, is recorded, and cannot be chosen by the coordinator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from client.identity import SiteIdentity, site_identity
from client.privacy_unit import UnitUndecided
from client.round_types import RoundRequest
from client.site import failure_code, run_round
from common.config.run_config import ConfigError, RunConfig
from common.data.sources import dataset_classes, simulated_site
from common.model.factory import initial_model
from common.model.network import frozen_fingerprint, get_trainable_state
from common.paths import SITE_LOG
from common.privacy.accounting import epsilon_of
from common.privacy.ledger import LEDGER_FILE
from common.training.patient_dp import patient_counts
from common.training.steps import epoch_steps
from tests.conftest import tiny_run_config, write_image_tree
from tests.helpers.site_inputs import new_site


def _request(config: RunConfig) -> RoundRequest:
    model, _ = initial_model(config, len(dataset_classes(config)))
    return RoundRequest(1, 1, get_trainable_state(model), dataset_classes(config), frozen_fingerprint(model))


@pytest.mark.slow  # site rounds, sigma calibrated
def test_groups_known_means_patient_level_by_default_and_the_ledger_says_so(tmp_path: Path) -> None:
    config = RunConfig.from_mapping(tiny_run_config(**{"num-server-rounds": 1, "privacy-unit": "auto"}))
    identity = SiteIdentity("site-0", False, tmp_path, 32.0, 1e-4, partition_id=0, num_partitions=2)
    result = run_round(identity, config, _request(config))
    assert result.status == "trained" and result.reply.privacy_unit == "patient"
    train = simulated_site(config, 0, 2).train
    patients, usable = patient_counts(train.groups, config.max_patches_per_patient)
    steps, rate = epoch_steps(patients, usable, config.batch_size)
    assert result.metrics["privacy-records"] == patients < len(train) == result.metrics["num-examples"]
    assert (result.metrics["steps"], result.metrics["sample-rate"]) == (steps, rate)  # q over patients
    ledger = json.loads((tmp_path / LEDGER_FILE).read_text())
    assert ledger["unit"] == "patient" and ledger["accountant"]["history"] == [[pytest.approx(
        result.metrics["noise-multiplier"]), rate, steps]]
    # the per-patient epsilon is recomputable from the ledger's (sigma, q, steps) history
    assert epsilon_of([tuple(h) for h in ledger["accountant"]["history"]], 1e-4) == pytest.approx(
        result.metrics["epsilon"])
    # ... and by Opacus' stock accountants: the site reports the smaller of their two upper bounds
    # (tests/privacy/test_accountant_seam.py checks that against an independent PLD accountant)
    prv, rdp = PRVAccountant(), RDPAccountant()
    prv.history = rdp.history = [tuple(h) for h in ledger["accountant"]["history"]]
    assert result.metrics["epsilon"] == pytest.approx(
        min(prv.get_epsilon(delta=1e-4, eps_error=0.01, delta_error=1e-7), rdp.get_epsilon(delta=1e-4)))
    # the same site cannot later be run at another unit
    patch = RunConfig.from_mapping(tiny_run_config(**{"num-server-rounds": 1, "privacy-unit": "patch"}))
    identity = site_identity({"partition-id": 0, "num-partitions": 2}, patch, 1)
    with pytest.raises(Exception, match="privacy unit 'patient'"):
        run_round(SiteIdentity("site-0", False, tmp_path, 32.0, 1e-4, partition_id=0, num_partitions=2,
                               privacy_unit=identity.privacy_unit), patch, _request(patch))


@pytest.mark.slow  # a site round, sigma calibrated
def test_without_patient_ids_a_site_trains_at_patch_level_only_when_its_node_config_says_so(tmp_path: Path) -> None:
    """The defect: a site whose data lost its groups.csv trained at patch level without a word (issue 24)."""
    write_image_tree(tmp_path / "data", per_class=20)
    node = {"data-path": str(tmp_path / "data"), "site-id": "h", "epsilon-budget": 8.0, "delta": 1e-5,
            "state-dir": str(tmp_path / "state"), "accept-new-ledger": new_site()["accept-new-ledger"]}
    config = RunConfig.from_mapping({"image-size": 32, "batch-size": 16, "num-server-rounds": 1})
    model, _ = initial_model(config, 2)
    request = RoundRequest(1, 1, get_trainable_state(model), ["benign", "tumour"], frozen_fingerprint(model))
    with pytest.raises(ConfigError, match="groups.csv"):
        run_round(site_identity({**node, "privacy-unit": "patient"}, config, 1), config, request)
    # auto (the default) without patient ids: refused before anything trains, with the fix, under its own code
    with pytest.raises(UnitUndecided, match='never falls back to the patch.*privacy-unit="patch" in its node config'
                       ) as refused:
        run_round(site_identity(node, config, 1), config, request)
    assert failure_code(refused.value) == "privacy-unit" and not (tmp_path / "state" / LEDGER_FILE).exists()
    log = [json.loads(line) for line in (tmp_path / "state" / SITE_LOG).read_text().splitlines()]
    assert log[-1]["status"] == "failed" and log[-1]["code"] == "privacy-unit"  # the full reason stays here
    assert "never falls back" in log[-1]["error"]
    # said explicitly in the node config: patch level, and the reply says so
    result = run_round(site_identity({**node, "privacy-unit": "patch"}, config, 1), config, request)
    assert result.status == "trained" and result.reply.privacy_unit == "patch"
    assert json.loads((tmp_path / "state" / LEDGER_FILE).read_text())["unit"] == "patch"
