"""Which job a round is charged to (a job the site can verify, never a label the coordinator picks),
and what the ledger records of a job and of a refused round.

A site grants each job at most its per-job cap (`common.privacy.accounting.grant_job`). If the job
were whatever id the coordinator's train config names, a coordinator could send a new id with
every request and open a new grant each time, until the lifetime budget stops it. So the site
decides, from its own ledger only:

* a run is bound to ONE job (`PrivacyLedger.runs`): once a request of run R has been charged to
  job J, every later request of R is charged to J, whatever job id it names;
* a coordinator-supplied job id is accepted only for a run not yet bound, and only if the
  site's ledger already holds a grant for it (a resumed job: its first run's id);
* otherwise the grant is keyed by the Flower run id (the run is a new job).

A resumed job adds nothing: its grant is a cumulative ε the site may reach
(`JobGrant.limit`, fixed when it was granted), so continuing an old job after later jobs spent
more gives no room, and naming it from many runs shares that one grant. What remains open is a
coordinator that starts many *runs*: each opens at most one new grant; the site's allowance per
period (`common.privacy.period`) and its lifetime budget bound those.

The records (`JobRecord`, `refusal_record`) are the ledger's: the site's planning
(`client.job_planning`) writes them, and a job's later rounds read its grant and σ back.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common.privacy.accounting import JobGrant
from common.privacy.ledger import PrivacyLedger
from common.privacy.period import PeriodAllowance


@dataclass(frozen=True)
class JobRecord:
    """A job's entry in the ledger (`PrivacyLedger.jobs[key]`), written on the job's first round at the site:
    its grant, and the noise calibrated so that all the job's planned rounds fit the grant (and the allowance)."""

    grant: JobGrant
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    planned_rounds: int
    from_round: int
    run_id: int
    allowance: PeriodAllowance
    time: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {**self.grant.as_dict(), "noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate,
                "steps_per_round": self.steps_per_round, "planned_rounds": self.planned_rounds,
                "from_round": self.from_round, "run_id": self.run_id, "time": self.time, **self.allowance.as_dict()}


def is_granted(record: Mapping[str, Any]) -> bool:
    """Whether a ledger job entry holds a grant (a run may be bound to a job before it is granted)."""
    return "granted" in record


def recorded_grant(record: Mapping[str, Any]) -> tuple[JobGrant, float]:
    """(the grant, σ) of a granted job's ledger entry (`is_granted`), as its first round recorded them."""
    grant = JobGrant(record["asked"], record["cap"], record["budget"], record["spent_before"], record["granted"])
    return grant, float(record["noise_multiplier"])


def refusal_record(run_id: int, server_round: int, job: str | None, reason: str,
                   allowance: PeriodAllowance | None = None) -> dict[str, Any]:
    """A refused round as the ledger keeps it (`PrivacyLedger.record_refusal`); with the allowance it broke, if any."""
    return {"run_id": run_id, "round": server_round, "job": job, "reason": reason,
            **(allowance.as_dict() if allowance is not None else {})}


@dataclass(frozen=True)
class JobChoice:
    """The job (a key of `PrivacyLedger.jobs`) a round is charged to, and why a claimed id was not used."""

    key: str
    ignored: str = ""  # why the coordinator's job id was ignored ('' when it was used or none was sent): site log only


def choose_job(ledger: PrivacyLedger, run_id: int, claimed: int | str | None) -> JobChoice:
    """The job of a request of Flower run `run_id` that names job id `claimed` (None: names none)."""
    run = str(run_id)
    claim = None if claimed is None else str(claimed)
    bound = ledger.runs.get(run) or (run if run in ledger.jobs else None)  # a run with its own grant is bound to it
    if bound is not None:
        if claim is not None and claim != bound:
            return JobChoice(bound, f"run {run} is bound to job {bound}; the job id {claim} it now names is ignored")
        return JobChoice(bound)
    if claim is None or claim == run:
        return JobChoice(run)
    if is_granted(ledger.jobs.get(claim, {})):
        return JobChoice(claim)  # a resumed job this site granted before
    return JobChoice(run, f"job id {claim} is not a job this site's ledger holds; run {run} is charged as a new job")


def bind_run(ledger: PrivacyLedger, run_id: int, job: str) -> None:
    """Bind run `run_id` to `job`, before anything is granted or spent.

    Not saved here: every way on from the binding writes the ledger before the site spends or
    answers (a grant, a refusal, a committed round), all under the site lock; a round that fails
    before any of them spent nothing, so forgetting its binding opens nothing.
    """
    ledger.runs[str(run_id)] = job
