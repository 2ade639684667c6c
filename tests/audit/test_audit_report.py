"""A run's privacy audit (`audit-canaries = m`): who holds canaries, what the server scores, what the
report says. The real `flwr run` with canaries is the shared tiny simulation (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client.identity import site_identity
from client.site import load_site_data, run_round
from common.audit.canaries import AUDITED_SITE, run_canaries, run_coin_flips
from common.config.run_config import ConfigError, RunConfig
from common.privacy.ledger import LEDGER_FILE
from common.wire import reply as wire
from server.privacy_audit import summarise, view
from tests.conftest import tiny_run_config
from tests.helpers.site_inputs import deployed_node, round_request, site_config, site_tree


def test_canaries_are_a_function_of_the_run_config() -> None:
    a, flips = run_canaries(7, 50, 16, ["x", "y", "z"])
    b, again = run_canaries(7, 50, 16, ["x", "y", "z"])
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(flips, again)
    np.testing.assert_array_equal(flips, run_coin_flips(7, 50))  # the evaluation's flips, without images
    assert len(set(a.groups)) == 50 and a.patient_groups  # each canary its own patient
    assert not np.array_equal(flips, run_coin_flips(8, 50))
    with pytest.raises(ConfigError, match="audit-canaries"):
        RunConfig.from_mapping({"audit-canaries": -1})


def test_only_simulated_site_0_trains_with_the_included_canaries(tmp_path: Path) -> None:
    config = RunConfig.from_mapping(tiny_run_config(**{"audit-canaries": 30}))
    plain = RunConfig.from_mapping(tiny_run_config())
    node = {"partition-id": 0, "num-partitions": 2}
    site0 = load_site_data(site_identity(node, config, 1), config)
    without = load_site_data(site_identity(node, plain, 1), plain)
    included = run_coin_flips(config.seed, 30)
    assert len(site0.train) == len(without.train) + included.sum() and len(site0.val) == len(without.val)
    assert sum(str(g).startswith("canary-") for g in site0.train.groups) == included.sum()
    site1 = load_site_data(site_identity({**node, "partition-id": 1}, config, 1), config)
    assert not any(str(g).startswith("canary-") for g in site1.train.groups)


def test_a_deployed_site_refuses_canaries_before_anything_trains(tmp_path: Path) -> None:
    data = site_tree(tmp_path / "data")
    config = site_config(**{"audit-canaries": 10})
    result = run_round(site_identity(deployed_node(tmp_path, data), config, 1), config, round_request(config))
    assert result.status == "refused" and result.reply.refusal == "audit-canaries-not-allowed"
    assert result.update is None and not (tmp_path / "state" / LEDGER_FILE).exists()  # nothing spent
    assert wire.encode(result.reply)[wire.SITE]["refusal"] == "audit-canaries-not-allowed"


def _section(scores: np.ndarray, dp: bool, epsilon: float = 2.0) -> dict:
    audit = {"canaries": len(scores), "score": "gradient", "sites": {
        AUDITED_SITE: {"scores": scores.tolist(), "rounds": [1, 2]}, "site-1": {"scores": scores.tolist(), "rounds": [1]}}}
    sites = [{"site_id": AUDITED_SITE, "dp": dp, "epsilon": epsilon if dp else None, "delta": 1e-5}]
    return summarise(audit, sites, {"seed": 3, "delta": 1e-5})


def test_the_section_compares_the_bound_with_the_claim() -> None:
    flips = run_coin_flips(3, 400)
    leaky = flips + np.random.default_rng(0).normal(0, 0.1, 400)  # the updates give every canary away
    section = _section(leaky, dp=True, epsilon=2.0)
    [row] = section["sites"]  # only the site that held canaries is audited
    assert row["epsilon_lower_bound"] > 2.0 and not row["consistent"] and row["canary_auc"] > 0.95
    assert "broken" in section["reading"] and view(section)["broken"] == [AUDITED_SITE]
    quiet = _section(np.random.default_rng(1).normal(size=400), dp=True, epsilon=2.0)
    assert quiet["sites"][0]["consistent"] and quiet["sites"][0]["epsilon_lower_bound"] < 0.5
    assert "within the ε = 2.00 the site claims" in quiet["reading"] and not view(quiet)["broken"]
    nonprivate = _section(leaky, dp=False)
    assert nonprivate["sites"][0]["claimed_epsilon"] is None and "without DP" in nonprivate["reading"]
    assert row["verdict"] == "inconsistent" and quiet["sites"][0]["verdict"] == "consistent"


def test_a_claim_the_audit_cannot_contradict_is_reported_inconclusive() -> None:
    """400 canaries at δ = 1e-5 can prove at most ε ≈ 4.4 (every guess right): a site claiming ε = 8 whose
    updates give every canary away is not called broken, and the report says the audit checked nothing."""
    from common.audit.bound import ceiling

    flips = run_coin_flips(3, 400)
    leaky = flips + np.random.default_rng(0).normal(0, 0.1, 400)
    [row] = _section(leaky, dp=True, epsilon=8.0)["sites"]
    assert row["ceiling"] == ceiling(flips, 1e-5) < 8.0 and row["epsilon_lower_bound"] == pytest.approx(row["ceiling"])
    assert row["verdict"] == "inconclusive" and row["consistent"]
    section = _section(leaky, dp=True, epsilon=8.0)
    assert "cannot contradict the claim" in section["reading"] and view(section)["rows"][0]["verdict"] == "inconclusive"


def test_update_alignment_is_the_step_along_each_records_own_gradient() -> None:
    """An update of one SGD step on canary 0: its score is lr·‖∇ℓ₀‖; another's, lr·⟨∇ℓ₀, ∇ℓ₁⟩/‖∇ℓ₁‖."""
    import torch

    from common.audit.canaries import update_alignment
    from common.model.factory import initial_model
    from common.model.inputs import normalise
    from common.model.network import get_trainable_state

    config = RunConfig.from_mapping(tiny_run_config(**{"image-size": 16, "weights": "none", "policy": "head"}))
    model, _ = initial_model(config, 3)
    canaries, _ = run_canaries(1, 2, 16, ["a", "b", "c"])
    model.eval()
    grads = []
    for i in range(2):
        model.zero_grad()
        x = normalise(torch.from_numpy(canaries.images[i:i + 1]).permute(0, 3, 1, 2))
        torch.nn.functional.cross_entropy(model(x), torch.from_numpy(canaries.labels[i:i + 1])).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    sent = get_trainable_state(model)
    returned, offset = {}, 0
    for name, value in sent.items():
        returned[name] = value - 0.1 * grads[0][offset:offset + value.size].reshape(value.shape).numpy()
        offset += value.size
    scores = update_alignment(model, canaries, sent, returned)
    g0, g1 = grads[0].double(), grads[1].double()
    np.testing.assert_allclose(scores, [0.1 * g0.norm(), 0.1 * (g0 @ g1) / g1.norm()], rtol=1e-3)
