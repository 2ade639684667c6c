"""What to do next about a run that did not end with a federated model: one sentence, from its replies.

A report of an unfinished run (crashed, stopped) can be continued with `resume-from`. A run in
which no site trained is finished (it has its end time and its report): resuming it is refused
(`server/resume.py`), and would not help anyway when the sites refused for their budgets, since a
resumed run is the same job and its grants stay used up. So the advice depends on why the sites
did not train, read from the fixed refusal codes of their replies, and never suggests a resume
that cannot help. The ServerApp's `NoSiteTrained` error and the report's warning both say it.
"""

from __future__ import annotations

from collections.abc import Iterable

from server.report.privacy_text import BUDGET_REFUSALS

RESUME = ("This report shows what was recorded. Continue the run with the same configuration and "
          "resume-from='{run_dir}' (it ends with its report), or re-make this page with "
          "python -m server.report {run_dir}.")
BUDGETS = ("Resuming cannot help: a resumed run is the same job, and the sites refused it for their budgets. A new "
           "run is a new job, which each site grants only from what remains of its own lifetime budget (see "
           "\"Sites and privacy\"); a site whose budget is used up trains again only after its operator raises "
           "epsilon-budget (accept-budget-change, docs/DEPLOYMENT.md).")
PERIOD = (" A site that refused for its allowance per period (epsilon-per-period) trains again once its older "
          "rounds leave its trailing period.")
FIX = ("fix what the reasons under \"Rounds without update\" say (each site's own log has the details), then "
       "start a new run (resume-from continues only a run that did not finish).")


def next_step(no_site_trained: bool, outcomes: Iterable[tuple[str, str]], run_dir: str) -> str:
    """The advice for a run without a federated model; `outcomes` are the replies' (status, refusal code)."""
    if not no_site_trained:
        return RESUME.format(run_dir=run_dir)
    missed = [(status, code) for status, code in outcomes if status != "trained"]
    budget = [code for status, code in missed if status == "refused" and code in BUDGET_REFUSALS]
    other = len(missed) - len(budget)
    parts = []
    if budget:
        parts.append(BUDGETS + (PERIOD if "period-allowance-exceeded" in budget else ""))
    if other or not missed:
        lead = "Where a site failed or refused for another reason, " if budget else \
            "Nothing was trained, so nothing is lost: "
        parts.append(lead + FIX)
    return " ".join(parts)
