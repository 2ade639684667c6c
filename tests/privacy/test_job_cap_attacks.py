"""A malicious coordinator against the per-job cap and the allowance per period, attacks written first.

The job a round belongs to used to be whatever `job-id` the coordinator's train config named: a new
id per request, within one run, opened a new grant each time (a site with cap 1 went to ε 1.45 and
on until its lifetime budget). Here the coordinator (1) names a new job id with every request of a
run, (2) names old job ids still in the site's ledger, (3) starts many runs, (4) fixes a small noise
multiplier; the site must keep the run within one grant and the runs within its allowance per period.
Everything runs through `client.site.run_round`, Flower-free; the spend is accounting, independent
of the noise drawn, so every assertion here is deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from client.identity import SiteIdentity, site_identity
from client.round_types import RoundRequest
from client.site import SITE_LOG, run_round
from common.config.run_config import ConfigError, RunConfig
from common.data.sources import dataset_classes
from common.model.factory import initial_model
from common.model.network import frozen_fingerprint, get_trainable_state
from common.privacy.accounting import epsilon_of
from common.privacy.jobs import bind_run, choose_job
from common.privacy.ledger import LEDGER_FILE, LedgerError, PrivacyLedger
from common.privacy.period import SECONDS_PER_DAY, rounds_in_period
from common.wire import reply as wire
from tests.conftest import tiny_run_config

CAP = 1.0
TOLERANCE = 1e-9  # RoundBudget.fits' relative slack: the spend may reach the limit, never pass it


def _config(**extra: object) -> RunConfig:
    return RunConfig.from_mapping(tiny_run_config(**{"num-server-rounds": 1, "synthetic-images": 320, **extra}))


def _site(state_dir: Path, budget: float = 100.0, per_job: float = CAP, per_period: float = 0.0,
          unit: str = "patch") -> SiteIdentity:
    return SiteIdentity(site_id="site-0", deployed=False, state_dir=state_dir, epsilon_budget=budget, delta=1e-4,
                        partition_id=0, num_partitions=2, epsilon_per_job=per_job, epsilon_per_period=per_period,
                        privacy_unit=unit)


class _Coordinator:
    """Builds requests as a coordinator that controls run ids, rounds and the train config's job-id."""

    def __init__(self, config: RunConfig) -> None:
        model, _ = initial_model(config, len(dataset_classes(config)))
        self.arrays, self.fingerprint = get_trainable_state(model), frozen_fingerprint(model)
        self.classes = dataset_classes(config)

    def request(self, run_id: int, server_round: int = 1, job_id: int | None = None) -> RoundRequest:
        return RoundRequest(run_id, server_round, self.arrays, self.classes, self.fingerprint, job_id=job_id)


def _ledger(state: Path) -> dict:
    return json.loads((state / LEDGER_FILE).read_text())


def _site_log(state: Path) -> list[dict]:
    return [json.loads(line) for line in (state / SITE_LOG).read_text().splitlines()]


# -- 1. which job a request is charged to ---------------------------------------------------------

def test_a_job_id_is_a_claim_the_site_checks_against_its_own_ledger(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / LEDGER_FILE, "s", 1e-4, 8.0)
    ledger.jobs["5"] = {"granted": 1.0}
    assert choose_job(ledger, 9, None).key == "9"  # a run naming nothing is its own job
    assert choose_job(ledger, 9, 9) == choose_job(ledger, 9, None)  # a new run names itself: nothing ignored
    assert choose_job(ledger, 9, 5).key == "5"  # a resumed job the ledger holds
    unknown = choose_job(ledger, 9, 77)
    assert unknown.key == "9" and "77 is not a job this site's ledger holds" in unknown.ignored
    bind_run(ledger, 9, "5")
    assert ledger.runs == {"9": "5"}
    for other in (None, 9, 77, 5):  # once bound, no job id moves the run to another grant
        assert choose_job(ledger, 9, other).key == "5"
    assert "bound to job 5" in choose_job(ledger, 9, 77).ignored
    ledger.jobs["12"] = {"granted": 1.0}  # a ledger written before runs were bound: a run with a grant is bound to it
    assert choose_job(ledger, 12, 5).key == "12"


def test_new_job_ids_within_one_run_stay_within_the_cap(tmp_path: Path) -> None:
    """Attack: one run, a new job id with every request. Before the fix each opened a grant of its own."""
    config = _config()
    coordinator = _Coordinator(config)
    state = tmp_path / "site"
    first = run_round(_site(state), config, coordinator.request(7, 1))
    assert first.status == "trained" and first.metrics["epsilon"] == pytest.approx(CAP, rel=0.01)
    relabelled = [run_round(_site(state), config, coordinator.request(7, r, job_id=1000 + r)) for r in range(2, 6)]
    assert [r.reply.refusal for r in relabelled] == ["round-exceeds-budget"] * 4
    ledger = _ledger(state)
    assert list(ledger["jobs"]) == ["7"] and ledger["runs"] == {"7": "7"}
    assert epsilon_of([tuple(h) for h in ledger["accountant"]["history"]], 1e-4) <= CAP * (1 + TOLERANCE)
    ignored = [line["ignored_job_id"] for line in _site_log(state) if "ignored_job_id" in line]
    assert len(ignored) == 4 and all("bound to job 7" in text for text in ignored)
    assert not any("ignored" in json.dumps(wire.encode(r.reply)) for r in relabelled)  # logged locally, not sent


def test_old_job_ids_from_the_ledger_open_no_new_grant(tmp_path: Path) -> None:
    """Attack: cycle over job ids the ledger holds (earlier runs), then new ones, within one new run."""
    config = _config()
    coordinator = _Coordinator(config)
    state = tmp_path / "site"
    for run_id in (1, 2):  # two earlier runs, a grant each: ε reaches 2 caps
        assert run_round(_site(state), config, coordinator.request(run_id)).status == "trained"
    spent = _ledger(state)["epsilon_spent"]
    assert spent == pytest.approx(2 * CAP, rel=0.01)
    claims = [1, 2, 555, None]
    results = [run_round(_site(state), config, coordinator.request(3, r + 1, job_id=j)) for r, j in enumerate(claims)]
    assert [r.status for r in results] == ["refused"] * len(claims)
    ledger = _ledger(state)
    assert ledger["runs"]["3"] == "1" and sorted(ledger["jobs"]) == ["1", "2"]  # bound to its first claim, no grant
    assert ledger["epsilon_spent"] == spent


def test_a_resumed_job_continues_its_own_grant(tmp_path: Path) -> None:
    """What job ids are for: a resumed run (another Flower run) names its first run's job and shares its grant."""
    config = _config(**{"num-server-rounds": 2})
    coordinator = _Coordinator(config)
    state = tmp_path / "site"
    assert run_round(_site(state), config, coordinator.request(4, 1)).status == "trained"
    resumed = run_round(_site(state), config, coordinator.request(5, 2, job_id=4))
    assert resumed.status == "trained" and resumed.metrics["epsilon"] == pytest.approx(CAP, rel=0.01)
    ledger = _ledger(state)
    assert list(ledger["jobs"]) == ["4"] and ledger["runs"] == {"4": "4", "5": "4"}
    assert [r["job"] for r in ledger["rounds"]] == ["4", "4"]


@pytest.mark.parametrize("min_records", [1, 10**9])
def test_min_records_per_step_at_its_extremes_keeps_the_spend_within_the_grant(tmp_path: Path, min_records: int) -> None:
    """Attack: the coordinator sets `min-records-per-step` (which shapes q and the steps) to 1 (many small steps)
    or 10**9 (q = 1: every patient in every step). The site calibrates σ to the steps it really takes
    (`common.training.steps.epoch_steps`, one rule for the ledger and the sampler), so the spend on its
    ledger, recomputed here from the ledger's history, stays within the grant, and the ε it replies is that spend."""
    config = _config(**{"min-records-per-step": min_records, "privacy-unit": "patient"})
    state = tmp_path / "site"
    result = run_round(_site(state, unit="patient"), config, _Coordinator(config).request(11))
    assert result.status == "trained" and result.reply.privacy_unit == "patient"
    history = [tuple(h) for h in _ledger(state)["accountant"]["history"]]
    spent = epsilon_of(history, 1e-4)
    assert spent <= CAP * (1 + TOLERANCE)
    assert result.metrics["epsilon"] == pytest.approx(spent, rel=1e-6)
    ((_, rate, steps),) = history
    if min_records == 1:
        assert rate < 1.0 and steps > 1  # planned from the batch size alone: many steps of a few patients
    else:
        assert (rate, steps) == (1.0, 1)  # every patient in the one step of the epoch


# -- 2. the allowance per period --------------------------------------------------------------------

def test_a_coordinator_starting_many_runs_stays_within_the_allowance(tmp_path: Path) -> None:
    """Attack: a new run per request, each a new job with a fresh grant of the per-job cap; the lifetime
    budget (100) is far away. With an allowance the period's ε stays within it; a month later there is room again."""
    config = _config()
    coordinator = _Coordinator(config)
    allowance, state = 1.5, tmp_path / "site"
    site = _site(state, per_period=allowance)
    runs = [run_round(site, config, coordinator.request(run_id)) for run_id in range(1, 5)]
    assert [r.status for r in runs[:2]] == ["trained"] * 2  # the second gets what is left of the period
    assert [r.reply.refusal for r in runs[2:]] == ["period-allowance-exceeded"] * 2
    ledger = _ledger(state)
    second = ledger["jobs"]["2"]  # the cap alone would have let run 2 go to 2 caps, and every later run on
    assert second["granted"] == CAP and second["spent_before"] + second["granted"] > allowance
    window = rounds_in_period(ledger["rounds"], 30.0)
    assert epsilon_of(window, 1e-4) == pytest.approx(allowance, rel=0.01)
    assert epsilon_of(window, 1e-4) <= allowance * (1 + TOLERANCE)
    assert ledger["epsilon_spent"] <= allowance * (1 + TOLERANCE)  # all of it fell within one period here
    assert ledger["rounds"][-1]["epsilon_in_period"] == pytest.approx(epsilon_of(window, 1e-4))
    assert ledger["refusals"][0]["reason"].startswith("the site's allowance per period leaves no room")
    for reply in runs:  # the use is on the wire: the configured allowance and its accounting
        assert reply.metrics["epsilon-per-period"] == allowance and reply.metrics["period-days"] == 30.0
    assert runs[1].metrics["epsilon-in-period"] == pytest.approx(epsilon_of(window, 1e-4))
    assert runs[-1].metrics["epsilon-in-period"] == pytest.approx(epsilon_of(window, 1e-4))

    moved = PrivacyLedger.open(state, "site-0", 1e-4, site.epsilon_budget)
    for record in moved.rounds:  # the site's clock moves on a month: those rounds leave the window
        record["time"] -= 31 * SECONDS_PER_DAY
    moved.save("test: a month later")  # through the ledger (a hand edit of the file would fail its integrity check)
    later = run_round(site, config, coordinator.request(5))
    assert later.status == "trained" and later.metrics["epsilon-in-period"] <= allowance * (1 + TOLERANCE)
    assert later.metrics["epsilon"] > ledger["epsilon_spent"]


def test_a_small_fixed_noise_multiplier_cannot_pass_the_allowance(tmp_path: Path) -> None:
    """Attack: noise-multiplier fixed by the run config (no calibration to the allowance): refused per round."""
    config = _config(**{"noise-multiplier": 0.5, "epsilon": 100.0})
    coordinator = _Coordinator(config)
    result = run_round(_site(tmp_path / "site", per_job=100.0, per_period=1.0), config, coordinator.request(1))
    assert result.status == "refused" and result.reply.refusal == "period-allowance-exceeded"
    assert "beyond the site's allowance of 1 per 30 days" in result.reason
    assert PrivacyLedger.open(tmp_path / "site", "site-0", 1e-4, 100.0).history == []


def test_the_window_holds_the_rounds_of_the_trailing_period_and_any_recorded_later() -> None:
    now, day = 1.0e9, SECONDS_PER_DAY
    record = lambda when, sigma: {"time": when, "noise_multiplier": sigma, "sample_rate": 0.1, "steps": 5}  # noqa: E731
    rounds = [record(now - 31 * day, 1.0), record(now - 29 * day, 2.0), record(now + 2 * day, 3.0)]  # a clock set back
    assert rounds_in_period(rounds, 30.0, now=now) == [(2.0, 0.1, 5), (3.0, 0.1, 5)]
    with pytest.raises(LedgerError, match="lacks its time, noise multiplier, sample rate or steps"):
        rounds_in_period([{"time": now, "steps": 5}], 30.0, now=now)


def _composed(entries: list[tuple[float, float, int]], delta: float, cache: dict) -> float:
    """epsilon_of, with equal (σ, q) entries merged first (composition commutes; epsilon_of merges them too) and memoised: the same
    accountant, asked far fewer distinct questions."""
    merged: dict[tuple[float, float], int] = {}
    for sigma, rate, steps in entries:
        merged[(sigma, rate)] = merged.get((sigma, rate), 0) + steps
    key = tuple(sorted(merged.items()))
    if key not in cache:
        cache[key] = epsilon_of([(sigma, rate, steps) for (sigma, rate), steps in key], delta)
    return cache[key]


def test_every_window_of_a_period_composes_within_the_allowance() -> None:
    """The docs' claim, checked on the accounting alone: admitting a round only when it and its trailing
    window fit keeps the rounds of EVERY window of that length within the allowance, not just the ones checked."""
    rng = np.random.default_rng(0)
    allowance, days, delta, cache = 2.0, 30.0, 1e-5, {}
    rounds: list[dict] = []
    clock = 0.0
    for _ in range(40):
        clock += float(rng.exponential(4.0)) * SECONDS_PER_DAY
        proposed = (float(rng.choice([1.0, 1.5, 2.0])), 0.05, int(rng.choice([50, 200])))
        if _composed(rounds_in_period(rounds, days, now=clock) + [proposed], delta, cache) <= allowance:
            rounds.append({"time": clock, "noise_multiplier": proposed[0], "sample_rate": proposed[1],
                           "steps": proposed[2]})
    assert 5 < len(rounds) < 35  # some admitted, many refused: the test has power (12 of 40 with this seed)
    ends = [r["time"] for r in rounds] + list(rng.uniform(0, clock + days * SECONDS_PER_DAY, 100))
    for end in ends:
        inside = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in rounds
                  if end - days * SECONDS_PER_DAY < r["time"] <= end]
        assert _composed(inside, delta, cache) <= allowance * (1 + TOLERANCE)


def test_the_allowance_is_the_sites_own_setting() -> None:
    node = {"data-path": "/d", "site-id": "s", "epsilon-budget": 8.0, "delta": 1e-5, "state-dir": "/s"}
    hostile = RunConfig.from_mapping({"site-epsilon-per-period": 1000.0, "site-period-days": 0.001})
    assert site_identity(node, hostile, 1).epsilon_per_period == 0.0  # the run config cannot set a deployed site's
    mine = site_identity({**node, "epsilon-per-period": 2, "period-days": 7}, hostile, 1)
    assert (mine.epsilon_per_period, mine.period_days) == (2.0, 7.0)
    simulated = site_identity({"partition-id": 0, "num-partitions": 2}, hostile, 1)
    assert (simulated.epsilon_per_period, simulated.period_days) == (1000.0, 0.001)
    for bad, message in (({"epsilon-per-period": -1}, "epsilon-per-period must be a finite number >= 0"),
                         ({"epsilon-per-period": float("nan")}, "epsilon-per-period must be a finite number >= 0"),
                         ({"period-days": 0}, "period-days must be a finite number > 0")):
        with pytest.raises(ConfigError, match=message):
            site_identity({**node, **bad}, RunConfig(), 1)
    with pytest.raises(ConfigError, match="site-period-days must be a finite number > 0"):
        RunConfig.from_mapping({"site-period-days": -3.0})
