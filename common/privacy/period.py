"""A site's ε allowance per period: how fast any number of runs may spend its lifetime budget.

The per-job cap bounds one run (`common.privacy.jobs`), but a coordinator may start as many runs
as it likes, each with a grant of its own; the lifetime budget stops them only when it is gone.
A site that sets `epsilon-per-period` (node config; simulation: `site-epsilon-per-period`) bounds
the spend of any trailing window of `period-days` days, whoever asks.

What "ε spent in a period" means, under composition: the ε (at the site's δ, by the same accountant
as the ledger, `accounting.epsilon_of`) of the composition of the DP rounds the ledger records with a time in
the trailing window (now − period, now] (a round recorded later than now, after a clock change,
counts too). Before a round trains, that composition *plus the round about to run* must stay
within the allowance, or the round is refused (`period-allowance-exceeded`). Since a round is
admitted only when it and every round of the window before it fit, the rounds of ANY window of
`period-days` compose to at most the allowance (of the rounds of such a window, the one admitted
last was checked together with all the others, which were all in its trailing window). It is a bound on the composition of those rounds alone; the
cumulative ε over the site's whole life (the ledger's ε) is what the lifetime budget bounds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from common.config.checks import DEFAULT_PERIOD_DAYS
from common.privacy.accounting import History, epsilon_of
from common.privacy.ledger import LedgerError

SECONDS_PER_DAY = 86400.0


class PeriodRecordError(LedgerError):
    """A ledger round lacks what the period's composition needs (its time, σ, q or steps)."""


@dataclass(frozen=True)
class PeriodAllowance:
    """At most `epsilon` per trailing window of `days` days; epsilon 0 = no allowance (off)."""

    epsilon: float = 0.0
    days: float = DEFAULT_PERIOD_DAYS

    @property
    def on(self) -> bool:
        return self.epsilon > 0

    def as_dict(self) -> dict[str, float]:
        return {"epsilon_per_period": self.epsilon, "period_days": self.days}


def rounds_in_period(rounds: Iterable[Mapping[str, Any]], days: float, now: float | None = None) -> History:
    """(σ, q, steps) of every ledger round whose time lies after now − `days` days, in order."""
    start = (time.time() if now is None else now) - days * SECONDS_PER_DAY
    window: History = []
    for record in rounds:
        try:
            when = float(record["time"])
            entry = (float(record["noise_multiplier"]), float(record["sample_rate"]), int(record["steps"]))
        except (KeyError, TypeError, ValueError) as err:
            raise PeriodRecordError(f"a ledger round lacks its time, noise multiplier, sample rate or steps ({err}): "
                                    "the spend of the site's period cannot be composed") from None
        if when > start and entry[2] > 0:
            window.append(entry)
    return window


def epsilon_in_period(rounds: Iterable[Mapping[str, Any]], days: float, delta: float,
                      now: float | None = None) -> float:
    """The ε of the composition of the ledger rounds in the trailing window of `days` days."""
    return epsilon_of(rounds_in_period(rounds, days, now), delta)
