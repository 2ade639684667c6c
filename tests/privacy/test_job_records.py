"""What the ledger records of a job and of a refused round (`common.privacy.jobs`), read back as written.

A job's later rounds (and a resumed job's new runs) take their grant and σ from the entry its first
round wrote; if writer and reader disagreed on a key, a site would re-grant or mis-state its grant.
"""

from __future__ import annotations

import json

from common.privacy.accounting import grant_job
from common.privacy.jobs import JobRecord, is_granted, recorded_grant, refusal_record
from common.privacy.period import PeriodAllowance


def test_a_job_record_reads_back_its_grant_and_sigma_through_json() -> None:
    grant = grant_job(asked=8.0, cap=4.0, budget=32.0, spent_before=3.0)
    record = JobRecord(grant, 1.7, 0.05, 40, 3, 2, 1234, PeriodAllowance(6.0, 30.0), time=100.0)
    stored = json.loads(json.dumps(record.as_dict()))  # what the ledger file holds
    assert is_granted(stored) and recorded_grant(stored) == (grant, 1.7)
    assert stored == {"asked": 8.0, "cap": 4.0, "budget": 32.0, "spent_before": 3.0, "granted": 4.0,
                      "remaining_before": 29.0, "noise_multiplier": 1.7, "sample_rate": 0.05, "steps_per_round": 40,
                      "planned_rounds": 3, "from_round": 2, "run_id": 1234, "time": 100.0,
                      "epsilon_per_period": 6.0, "period_days": 30.0}
    assert not is_granted({})  # a run bound to a job that has no grant yet


def test_a_refusal_record_names_the_allowance_only_when_one_was_broken() -> None:
    assert refusal_record(7, 3, "7", "no room") == {"run_id": 7, "round": 3, "job": "7", "reason": "no room"}
    assert refusal_record(7, 3, None, "period", PeriodAllowance(2.0, 7.0)) == {
        "run_id": 7, "round": 3, "job": None, "reason": "period", "epsilon_per_period": 2.0, "period_days": 7.0}
