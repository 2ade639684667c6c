"""Gradient canaries in a tiny real federation: an extra record is clipped with the real ones, the audit has power
without DP, stays below a claim it could exceed, and fails DP broken on purpose (noise off, clipping off), each
outcome with failure odds computed for any draw of noise, sampling and coin flips (`simulations.harness.audit_power`)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.helpers.audit_runs import AUDIT_DP_SEED, FAILURE_ODDS

# -- gradient-space (Dirac) canaries ------------------------------------------------------------
ONE_STEP_CASES = [(False, "patch", "hooks", 1.0), *[(True, unit, mode, clip) for unit in ("patch", "patient")
                                                    for mode in ("hooks", "ghost") for clip in (1.0, 1e6)]]


@pytest.mark.parametrize("dp,unit,mode,clip", ONE_STEP_CASES)
def test_an_extra_record_is_clipped_with_the_real_ones(dp: bool, unit: str, mode: str, clip: float) -> None:
    """One step over all records (q = 1), no noise, no momentum: an extra record whose gradient is G·e_j, G = 10,
    moves coordinate j by exactly −lr·min(G, C) / (records per step) more than the same seeded step without it:
    under DP clipped to C like the real records (hooks: by Opacus' own clipping, patient level after the
    grouping; ghost: by its rule), and whole when the bound C = 10^6 does not clip; without DP, whole, as one
    more record of the batch. Every other coordinate moves as without it."""
    import torch
    from torch import nn

    from common.data.imageset import ImageSet
    from common.privacy.randomness import public_randomness
    from common.training.local import train_local
    from common.training.settings import TrainSettings

    rng = np.random.default_rng(0)
    data = ImageSet(rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8), rng.integers(0, 3, 6),
                    np.array(["a", "a", "b", "b", "c", "c"], dtype=object), ["x", "y", "z"], patient_groups=True)
    j, lr, norm, rates = 7, 0.5, 10.0, []

    def one_record(params: list, rate: float) -> list:
        rates.append(rate)
        row = torch.zeros(1, sum(p.numel() for p in params))
        row[0, j] = norm
        return [c.reshape(1, *p.shape) for c, p in zip(torch.split(row, [p.numel() for p in params], dim=1), params)]

    def step(extra: object) -> tuple[np.ndarray, object]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
        settings = TrainSettings(epochs=1, batch_size=6, lr=lr, momentum=0.0, randomness=public_randomness("5"), dp=dp, noise_multiplier=0.0,
                                 max_grad_norm=clip, privacy_unit=unit, grad_sample_mode=mode, extra_records=extra)
        outcome = train_local(model, data, settings)
        return torch.cat([p.detach().flatten() for p in model.parameters()]).numpy(), outcome

    without, outcome = step(None)
    with_extra, _ = step(one_record)
    per_step = 3 if dp and unit == "patient" else 6
    assert outcome.steps == 1 and rates == [outcome.sample_rate] == [1.0]
    diff = with_extra - without
    pushed = min(norm, clip * norm / (norm + 1e-6)) if dp else norm  # Opacus' factor min(1, C / (‖g‖ + 1e-6))
    assert diff[j] == pytest.approx(-lr * pushed / per_step, rel=1e-5)
    assert np.abs(np.delete(diff, j)).max() < 1e-6 * max(1.0, np.abs(without).max())


GRADIENT_CLAIM = 3.0  # the DP rows' claimed ε: below what 400 canaries can certify (ceiling ≈ 3.8), see below


@pytest.fixture(scope="module")
def tiny_gradient_audit() -> dict:
    """The tiny federation with 400 gradient canaries (per-record norm 10·C under DP, clipped with the real
    records; C without DP), SGD
    without momentum (so that every step moves a canary's coordinate alike: `simulations.harness.audit_power`'s
    model), 30 local epochs: non-private; DP at ε = 3; and DP at ε = 3 broken on purpose, noise off and clipping
    off, while the sites claim ε = 3. DP noise and sampling from the sites' dp-seed."""
    from simulations.harness import audit
    from simulations.harness.audit_data import prepare
    from simulations.harness.audit_sites import FAULTS

    plan = audit.AuditPlan(sites=2, rounds=1, local_epochs=30, per_group=1, site_records=12, canaries=400,
                           canary_kind="gradient", mia_bootstrap=20)
    config = audit.audit_config("synthetic", 16, "none", 42, policy="head", lr=0.5, batch_size=8,
                                public_fraction=0.0, run_config="synthetic-images=240 momentum=0")
    rows = audit.settings_rows(config, plan, seed=7, epsilons=(GRADIENT_CLAIM,), dp_seed=AUDIT_DP_SEED,
                               faults=tuple((GRADIENT_CLAIM, fault) for fault in FAULTS))
    by_fault = {row.get("fault") if row["dp"] else "non-private": row for row in rows}
    return {"rows": by_fault, "config": config, "plan": plan, "data": prepare(config, plan, 7), "seed": 7}


def _score_model(run: dict, row: dict) -> object:
    """The model of this row's canary scores (`audit_power.CanaryScores`), in units of C (one clipped canary
    push), with the real records' push bounded from the site's own data (`head_data_push`), at worst in every
    step. A canary's gradient is G = 10·C before clipping (C without DP)."""
    from common.data.sources import dataset_classes
    from common.model.factory import initial_model
    from simulations.harness.audit import canary_coordinates
    from simulations.harness.audit_power import CanaryScores, head_data_push
    from simulations.harness.audit_sites import CLIPPING_OFF, NOISE_OFF

    config, data, plan = run["config"], run["data"], run["plan"]
    base, _ = initial_model(config, len(dataset_classes(config)))
    coordinates = canary_coordinates(base, data, run["seed"])
    site, clip = data.sites[0], config.max_grad_norm
    norm = row["canary_norm"] * clip  # 10·C under DP, C without (nothing to clip)
    assert len(set(site.groups)) == len(site)  # one patch per patient: a patient's clipping is its patch's
    steps, rate = row["site_steps"], row["site_sample_rate"]
    assert steps == plan.local_epochs * round(1 / rate)  # every step of the round, at the rate the accountant has
    clipped = row["dp"] and row["fault"] != CLIPPING_OFF
    per_pass = head_data_push(base, site.images, coordinates, clipped=clipped) / (1 if clipped else clip)
    if not row["dp"]:  # one record of the step's mean each: a canary G / batch, a record its raw gradient / (its
        # batch's size), once per epoch, at worst in the smallest batch; in units of the canary's push
        smallest = len(site) - config.batch_size * (math.ceil(len(site) / config.batch_size) - 1)
        pushes = plan.local_epochs * per_pass * clip * config.batch_size / smallest / norm
        return CanaryScores.with_pushes(steps, rate, 1.0, 0.0, pushes)
    noise = 0.0 if row["fault"] == NOISE_OFF else row["noise_multiplier"] * math.sqrt(steps)  # σ·C per step
    push = norm / clip if row["fault"] == CLIPPING_OFF else norm / (norm + 1e-6)  # Opacus' clip factor
    return CanaryScores.with_pushes(steps, rate, push, noise, steps * per_pass)


@pytest.mark.slow  # tiny federations train in the fixture
def test_gradient_canaries_give_the_nonprivate_audit_power(tiny_gradient_audit: dict) -> None:
    """Without DP the Dirac canaries give the audit a bound above the DP rows' claim; the odds that any draw of
    sampling and coin flips does not are computed from the canaries' score model, not taken from one run."""
    from simulations.harness.audit_power import odds_bound_within

    nonprivate = tiny_gradient_audit["rows"]["non-private"]
    assert nonprivate["canary_kind"] == "gradient" and nonprivate["canary"]["canaries"] == 400
    assert nonprivate["site_train_examples"] == nonprivate["site_records"] + nonprivate["canary"]["included"]
    model = _score_model(tiny_gradient_audit, nonprivate)
    assert odds_bound_within(model, GRADIENT_CLAIM, nonprivate["delta"]) < FAILURE_ODDS
    assert nonprivate["canary"]["epsilon_lower_bound"] > GRADIENT_CLAIM


@pytest.mark.slow  # tiny federations train in the fixture
def test_the_dp_audit_stays_below_a_claim_it_could_exceed(tiny_gradient_audit: dict) -> None:
    """DP at ε = 3: the audit could certify more than 3 (its ceiling, from m, δ and the coin flips alone), the
    broken runs below show it does when the implementation is wrong, and the correct run's bound stays at or
    below 3 — with odds < 1e-6 of doing otherwise for any draw, from the score model at the run's σ."""
    from common.audit.bound import CONSISTENT, ceiling, verdict
    from simulations.harness.audit_power import odds_bound_exceeds

    run = tiny_gradient_audit
    dp = run["rows"][None]
    assert dp["privacy_unit"] == "patient" and dp["site_epsilon_spent"] <= GRADIENT_CLAIM * (1 + 1e-6)
    assert dp["canary"]["ceiling"] == ceiling(run["data"].included, dp["delta"]) > GRADIENT_CLAIM  # it could fail
    assert odds_bound_exceeds(_score_model(run, dp), GRADIENT_CLAIM, dp["delta"]) < FAILURE_ODDS
    canary = dp["canary"]
    assert verdict(canary["epsilon_lower_bound"], canary["ceiling"], dp["claimed_epsilon"]) == CONSISTENT


@pytest.mark.slow  # tiny federations train in the fixture
@pytest.mark.parametrize("fault", ["noise-off", "clipping-off"])
def test_the_audit_fails_an_implementation_broken_on_purpose(tiny_gradient_audit: dict, fault: str) -> None:
    """DP at ε = 3 with no noise (σ_actual = 0), or no clipping (bound 10^6·C, noise σ·C), while the ledger claims
    the calibrated σ and C, so the site reports ε = 3: the audit's bound exceeds 3 — with odds < 1e-6 of not
    doing so for any draw — and the run is reported inconsistent. Without the clipping-off canaries' norm
    above C (gradients added after clipping) the second case would pass unseen."""
    from common.audit.bound import INCONSISTENT, verdict
    from simulations.harness.audit_experiment import targets
    from simulations.harness.audit_power import odds_bound_within

    run = tiny_gradient_audit
    broken = run["rows"][fault]
    assert broken["site_epsilon_spent"] == pytest.approx(run["rows"][None]["site_epsilon_spent"])  # claims as much
    assert broken["noise_multiplier"] == run["rows"][None]["noise_multiplier"]
    assert odds_bound_within(_score_model(run, broken), GRADIENT_CLAIM, broken["delta"]) < FAILURE_ODDS
    canary = broken["canary"]
    assert verdict(canary["epsilon_lower_bound"], canary["ceiling"], broken["claimed_epsilon"]) == INCONSISTENT
    rows = list(run["rows"].values())
    assert targets(rows)["broken_runs_caught"] is True and targets(rows)["bound_below_claimed_epsilon"] is True


def test_only_the_simulation_harness_sets_extra_records() -> None:
    """The injection point stays the harness's: no code a site or the coordinator runs sets `extra_records` (as a
    keyword or a key), so no run config or server message can plant records in a site's step."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    setting = re.compile(r"""\bextra_records\s*=(?!=)|["']extra_records["']""")
    shipped = [p for folder in ("client", "server", "common", "deploy") for p in (repo / folder).rglob("*.py")]
    assert len(shipped) > 40  # the tree was found
    assert setting.search("TrainSettings(dp=True, extra_records=canaries)")  # the pattern finds a setter
    assert [str(p.relative_to(repo)) for p in shipped if setting.search(p.read_text())] == []
