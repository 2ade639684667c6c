"""A round's privacy plan at a site, decided before it trains: steps, the job's grant and σ, the budget check.

Everything here runs before training, under the site lock: the plan uses the steps training will
really take (`common.training.steps`); the round is charged to a job the site can verify
(`common.privacy.jobs`: the run's own, or a job in the ledger it resumes; one per run); on a job's
first round the site grants the job min(asked, per-job cap, what remains) and calibrates σ so that
all the job's remaining planned rounds fit that grant and the site's allowance per period (kept in
the ledger for its later rounds); and any round that would take the job past its grant, or the
trailing period past its allowance (`common.privacy.period`), is refused, the refusal recorded in
the ledger.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from client.identity import SiteIdentity, parse_budget_change
from client.round_state import RoundState
from client.round_types import RoundResult
from common.privacy.accounting import BudgetExhausted, calibrate_noise, check_round, epsilon_of, grant_job
from common.privacy.jobs import JobRecord, bind_run, choose_job, is_granted, recorded_grant, refusal_record
from common.privacy.ledger import LedgerError, PrivacyLedger
from common.privacy.new_ledger import new_ledger_problem
from common.privacy.period import PeriodAllowance, epsilon_in_period, rounds_in_period
from common.training.steps import round_steps

log = logging.getLogger("fedpath.site")


def spend_on_record(identity: SiteIdentity) -> tuple[float, float]:
    """(cumulative ε, ε of the trailing period or 0 without an allowance) the ledger records, read only."""
    data = PrivacyLedger.recorded(identity.state_dir, identity.accept_ledger_edit)
    if data is None:
        return 0.0, 0.0
    delta = float(data["delta"])
    spent = epsilon_of([(float(s), float(q), int(n)) for s, q, n in data["accountant"]["history"]], delta)
    if identity.epsilon_per_period <= 0:
        return spent, 0.0
    return spent, epsilon_in_period(data.get("rounds", []), identity.period_days, delta)


def open_site_ledger(state: RoundState) -> PrivacyLedger:
    """The site's ledger, verified (`common.privacy.integrity`); a new one only where the site may start at ε 0.

    A deployed site starts a ledger only with its operator's dated acknowledgement, a simulated one only in a
    directory without signs of an earlier ledger (`common.privacy.new_ledger`). What opening it changed (an
    acknowledged budget change, the adoption of a ledger from before the integrity chain, an accepted edit) is
    written at once, so the trail holds it even if the round then refuses.
    """
    identity = state.identity
    problem = new_ledger_problem(identity.state_dir, identity.site_id, identity.deployed, identity.accept_new_ledger)
    if problem:
        raise LedgerError(problem)
    how = (f"created (accept-new-ledger={identity.accept_new_ledger})" if identity.deployed
           else "created (a simulated site's first round)")
    ledger = PrivacyLedger.open(identity.state_dir, identity.site_id, state.delta, identity.epsilon_budget,
                                unit=state.unit, accept_budget_change=parse_budget_change(identity.accept_budget_change),
                                accept_edit=identity.accept_ledger_edit, created=how)
    if ledger.needs_save:
        ledger.save("opened by the site")
    return ledger


def planned_steps(state: RoundState, usable: int) -> tuple[int, float]:
    """Steps this round and q, exactly as training will take them, over the round's records (patients or patches)."""
    return round_steps(state.records, usable, state.config.batch_size, state.config.local_epochs,
                       state.config.min_records_per_step)


@dataclass(frozen=True)
class JobPlan:
    """What `plan_job` decided: the σ this round trains with, or the refusal (already in the ledger) that ends it."""

    sigma: float = 0.0
    refusal: RoundResult | None = None


def plan_job(state: RoundState, ledger: PrivacyLedger, sample_rate: float, steps: int) -> JobPlan:
    """σ for this round: the job's grant and noise are decided once, on the job's first round here.

    The job is the one the site can verify (`common.privacy.jobs.choose_job`), bound to the run
    in the ledger before anything is granted; a job id the coordinator names is only a claim.
    """
    identity, config, request = state.identity, state.config, state.request
    key = _charged_job(state, ledger)
    if _allowance(state).on:
        state.epsilon_in_period = epsilon_in_period(ledger.rounds, identity.period_days, state.delta)
    job = ledger.jobs.get(key)
    if job is not None and is_granted(job):
        state.grant, recorded_sigma = recorded_grant(job)
        return JobPlan(config.noise_multiplier if config.noise_multiplier > 0 else recorded_sigma)
    remaining_rounds = max(1, config.num_server_rounds - request.server_round + 1)
    try:
        state.grant = grant_job(config.epsilon, identity.job_cap, identity.epsilon_budget, ledger.epsilon())
        sigma = config.noise_multiplier if config.noise_multiplier > 0 else calibrate_noise(
            ledger.history, sample_rate, steps * remaining_rounds, state.grant.limit, state.delta)
    except BudgetExhausted as err:
        ledger.record_refusal(refusal_record(request.run_id, request.server_round, key, str(err)))
        return JobPlan(refusal=state.refuse("budget-exhausted", str(err)))
    if config.noise_multiplier <= 0 and _allowance(state).on:
        try:  # noise for the whole job within the period's allowance too (rounds leaving the window only add room)
            sigma = max(sigma, calibrate_noise(_in_period(state, ledger), sample_rate, steps * remaining_rounds,
                                               identity.epsilon_per_period, state.delta))
        except BudgetExhausted as err:
            return JobPlan(refusal=_refuse_period(
                state, ledger, f"the site's allowance per period leaves no room for this job: {err}"))
    ledger.jobs[key] = JobRecord(state.grant, sigma, sample_rate, steps, remaining_rounds, request.server_round,
                                 request.run_id, _allowance(state)).as_dict()
    ledger.save("job")
    log.info("site %s grants job %s epsilon %.3g (asked %g, per-job cap %g, lifetime %g, spent %.3f); noise "
             "multiplier %.3f for %d steps per round", identity.site_id, key, state.grant.granted, config.epsilon,
             identity.job_cap, identity.epsilon_budget, state.grant.spent_before, sigma, steps)
    return JobPlan(sigma)


def _charged_job(state: RoundState, ledger: PrivacyLedger) -> str:
    """The job this round is charged to, bound to its run in the ledger; an ignored job id goes to the site log."""
    request = state.request
    choice = choose_job(ledger, request.run_id, request.job_id)
    bind_run(ledger, request.run_id, choice.key)
    state.local["job"] = choice.key
    if choice.ignored:
        state.local["ignored_job_id"] = choice.ignored
        log.warning("site %s ignores the coordinator's job id: %s", state.identity.site_id, choice.ignored)
    return choice.key


def _allowance(state: RoundState) -> PeriodAllowance:
    return PeriodAllowance(state.identity.epsilon_per_period, state.identity.period_days)


def _in_period(state: RoundState, ledger: PrivacyLedger) -> list[tuple[float, float, int]]:
    return rounds_in_period(ledger.rounds, state.identity.period_days)


def _refuse_period(state: RoundState, ledger: PrivacyLedger, reason: str) -> RoundResult:
    request = state.request
    ledger.record_refusal(refusal_record(request.run_id, request.server_round, state.local.get("job"), reason,
                                         _allowance(state)))
    return state.refuse("period-allowance-exceeded", reason)


def round_over_budget(state: RoundState, ledger: PrivacyLedger, sigma: float, sample_rate: float,
                      steps: int) -> RoundResult | None:
    """The refusal (recorded in the ledger) when this round would take the job past its grant."""
    budget = check_round(ledger.history, sigma, sample_rate, steps, state.grant.limit, state.delta)
    if not budget.fits:
        reason = (f"this round would raise epsilon from {budget.epsilon_before:.3f} to {budget.epsilon_after:.3f}, "
                  f"beyond the site's budget for this job ({state.grant.limit:.3f}: granted {state.grant.granted:.3g} "
                  f"of lifetime {state.identity.epsilon_budget:g}; delta={state.delta:.3g})")
        ledger.record_refusal(refusal_record(state.request.run_id, state.request.server_round,
                                             state.local.get("job"), reason))
        return state.refuse("round-exceeds-budget", reason)
    return _period_refusal(state, ledger, sigma, sample_rate, steps)


def _period_refusal(state: RoundState, ledger: PrivacyLedger, sigma: float, sample_rate: float,
                    steps: int) -> RoundResult | None:
    """The refusal when the rounds of the trailing period plus this one would compose beyond the allowance."""
    allowance = _allowance(state)
    if not allowance.on:
        return None
    period = check_round(_in_period(state, ledger), sigma, sample_rate, steps, allowance.epsilon, state.delta)
    state.epsilon_in_period = period.epsilon_before
    if period.fits:
        return None
    return _refuse_period(state, ledger, (
        f"the rounds of the last {allowance.days:g} days compose to epsilon {period.epsilon_before:.3f}; with this "
        f"round {period.epsilon_after:.3f}, beyond the site's allowance of {allowance.epsilon:g} per {allowance.days:g} "
        f"days (delta={state.delta:.3g})"))
