"""A round's privacy plan at a site, decided before it trains: steps, the job's grant and σ, the budget check.

Everything here runs before training, under the site lock: the plan uses the steps training will
really take (`common.step_planning`); on a job's first round the site grants the job
min(asked, per-job cap, what remains) and calibrates σ so that all the job's remaining planned
rounds fit that grant (kept in the ledger for its later rounds); and any round that would take the
job past its grant is refused, the refusal recorded in the ledger.
"""

from __future__ import annotations

import logging
import time

from client.round_state import RoundState
from client.round_types import RoundResult
from common.patient_dp import PATIENT
from common.privacy.accounting import BudgetExhausted, JobGrant, calibrate_noise, check_round, grant_job
from common.privacy.ledger import PrivacyLedger
from common.step_planning import patient_steps_per_epoch, steps_per_epoch

log = logging.getLogger("fedpath.site")


def planned_steps(state: RoundState, usable: int) -> tuple[int, float]:
    """Steps this round and q, exactly as Opacus will take them, at the round's unit of privacy."""
    batch = state.config.batch_size
    if state.unit == PATIENT:
        steps, sample_rate = patient_steps_per_epoch(state.records, usable, batch)
    else:
        steps, sample_rate = steps_per_epoch(len(state.data.train), batch)
    return steps * state.config.local_epochs, sample_rate


def plan_job(state: RoundState, ledger: PrivacyLedger, sample_rate: float, steps: int) -> float | RoundResult:
    """σ for this round: the job's grant and noise are decided once, on the job's first round here."""
    identity, config, request = state.identity, state.config, state.request
    key = request.job
    job = ledger.jobs.get(key)
    if job is not None and "granted" in job:
        state.grant = JobGrant(job["asked"], job["cap"], job["budget"], job["spent_before"], job["granted"])
        return config.noise_multiplier if config.noise_multiplier > 0 else float(job["noise_multiplier"])
    try:
        state.grant = grant_job(config.epsilon, identity.job_cap, identity.epsilon_budget, ledger.epsilon())
        remaining_rounds = max(1, config.num_server_rounds - request.server_round + 1)
        sigma = config.noise_multiplier if config.noise_multiplier > 0 else calibrate_noise(
            ledger.history, sample_rate, steps * remaining_rounds, state.grant.limit, state.delta)
    except BudgetExhausted as err:
        ledger.record_refusal({"run_id": request.run_id, "round": request.server_round, "reason": str(err)})
        return state.refuse("budget-exhausted", str(err))
    ledger.jobs[key] = {
        **state.grant.as_dict(), "noise_multiplier": sigma, "sample_rate": sample_rate, "steps_per_round": steps,
        "planned_rounds": max(1, config.num_server_rounds - request.server_round + 1),
        "from_round": request.server_round, "time": time.time(),
    }
    ledger.save()
    log.info("site %s grants job %s epsilon %.3g (asked %g, per-job cap %g, lifetime %g, spent %.3f); noise "
             "multiplier %.3f for %d steps per round", identity.site_id, key, state.grant.granted, config.epsilon,
             identity.job_cap, identity.epsilon_budget, state.grant.spent_before, sigma, steps)
    return sigma


def round_over_budget(state: RoundState, ledger: PrivacyLedger, sigma: float, sample_rate: float,
                      steps: int) -> RoundResult | None:
    """The refusal (recorded in the ledger) when this round would take the job past its grant."""
    budget = check_round(ledger.history, sigma, sample_rate, steps, state.grant.limit, state.delta)
    if budget.fits:
        return None
    reason = (f"this round would raise epsilon from {budget.epsilon_before:.3f} to {budget.epsilon_after:.3f}, "
              f"beyond the site's budget for this job ({state.grant.limit:.3f}: granted {state.grant.granted:.3g} "
              f"of lifetime {state.identity.epsilon_budget:g}; delta={state.delta:.3g})")
    ledger.record_refusal({"run_id": state.request.run_id, "round": state.request.server_round, "reason": reason})
    return state.refuse("round-exceeds-budget", reason)
