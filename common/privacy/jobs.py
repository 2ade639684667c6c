"""Which job a round is charged to: a job the site can verify, never a label the coordinator picks.

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
"""

from __future__ import annotations

from dataclasses import dataclass

from common.privacy.ledger import PrivacyLedger


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
    if "granted" in ledger.jobs.get(claim, {}):
        return JobChoice(claim)  # a resumed job this site granted before
    return JobChoice(run, f"job id {claim} is not a job this site's ledger holds; run {run} is charged as a new job")


def bind_run(ledger: PrivacyLedger, run_id: int, job: str) -> None:
    """Bind run `run_id` to `job`, before anything is granted or spent.

    Not saved here: every way on from the binding writes the ledger before the site spends or
    answers (a grant, a refusal, a committed round), all under the site lock; a round that fails
    before any of them spent nothing, so forgetting its binding opens nothing.
    """
    ledger.runs[str(run_id)] = job
