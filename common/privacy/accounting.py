"""Privacy accounting: the ε of a history, the noise multiplier for a job, whether a round fits.

Pure functions of (σ, q, steps) histories; storing a site's history is `common.privacy.ledger`'s
job. The budget questions are asked of the same Opacus RDP accountant that records the spend, fed
with the site's whole history, so a site that already spent part of its budget in an
earlier run gets more noise now rather than overspending.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from opacus.accountants import RDPAccountant

History = list[tuple[float, float, int]]


def noise_per_clip(sigma: float, sample_rate: float, records: int) -> float | None:
    """The std of the DP noise on a step's averaged gradient, per coordinate, in units of the clipping norm C:
    σ/(q·N), for noise multiplier σ, Poisson rate q and N records in the unit of privacy.

    A DP-SGD step adds N(0, σ²C²) to the sum of the clipped per-record gradients and divides by the expected
    records per step q·N (Opacus' `expected_batch_size`, `loss_reduction = "mean"`), so the noise on the average
    has std σ·C/(q·N), while the average itself has norm at most C (every record's clipped gradient pointing the
    same way). Smaller = more signal per step; comparable across sites, whatever their C. (One record's own
    share of the average is at most C/(q·N): against that, the noise is σ, whatever N.) None when a value is
    missing or not positive.
    """
    if not (sigma > 0 and 0 < sample_rate <= 1 and records > 0):
        return None
    return sigma / (sample_rate * records)


def epsilon_of(history: History, delta: float) -> float:
    """Epsilon of an accountant history at `delta` (0 for an empty history)."""
    if not history:
        return 0.0
    acc = RDPAccountant()
    acc.history = [tuple(h) for h in history]
    with warnings.catch_warnings():
        # Opacus warns when the best RDP order is the largest or smallest it tries (tiny or huge
        # spends, e.g. while calibrating); the epsilon is then a valid but looser upper bound,
        # which is the safe side for a budget.
        warnings.filterwarnings("ignore", message="Optimal order is the", category=UserWarning)
        return float(acc.get_epsilon(delta=delta))


# A round whose noise would need to exceed this is pure noise: refuse it instead.
MAX_USEFUL_NOISE_MULTIPLIER = 100.0
# Below this share of the budget left, a site counts as exhausted.
MIN_REMAINING_SHARE = 0.01


class BudgetExhausted(RuntimeError):
    """Training this round would take the site past its (epsilon, delta) budget."""


def with_steps(history: History, noise_multiplier: float, sample_rate: float, steps: int) -> History:
    """The history after `steps` more DP-SGD steps (merged as Opacus' accountant merges)."""
    out = [tuple(h) for h in history]
    if steps <= 0:
        return out  # type: ignore[return-value]
    if out and out[-1][0] == noise_multiplier and out[-1][1] == sample_rate:
        out[-1] = (noise_multiplier, sample_rate, out[-1][2] + steps)
    else:
        out.append((noise_multiplier, sample_rate, steps))
    return out  # type: ignore[return-value]


def calibrate_noise(
    history: History, sample_rate: float, steps: int, epsilon_budget: float, delta: float,
    low: float = 0.3, high: float = MAX_USEFUL_NOISE_MULTIPLIER, iterations: int = 60,
) -> float:
    """Smallest noise multiplier (within 0.1%) whose `steps` more steps stay within budget.

    Raises `BudgetExhausted` when less than 1% of the budget is left or when even `high`
    noise would overspend: a site then refuses rather than sending pure noise.
    """
    if steps <= 0:
        raise ValueError("steps must be positive")
    spent = epsilon_of(history, delta)
    if spent >= (1 - MIN_REMAINING_SHARE) * epsilon_budget:
        raise BudgetExhausted(_no_room(spent, steps, epsilon_budget, delta))
    excess = lambda sigma: epsilon_of(with_steps(history, sigma, sample_rate, steps), delta) - epsilon_budget  # noqa: E731
    bracket = _bracket(excess, low, high)
    if bracket is None:
        raise BudgetExhausted(_no_room(spent, steps, epsilon_budget, delta))
    lo, f_lo, hi, f_hi = bracket
    if f_lo <= 0:
        return low
    return math.exp(_smallest_root(excess, math.log(lo), f_lo, math.log(hi), f_hi, iterations))


def _no_room(spent: float, steps: int, epsilon_budget: float, delta: float) -> str:
    return (f"epsilon already spent {spent:.3f} leaves no room for {steps} more steps within the budget "
            f"epsilon={epsilon_budget} at delta={delta}")


def _bracket(excess, low: float, high: float) -> tuple[float, float, float, float] | None:
    """σ values a factor 2 apart (or the limits) with excess > 0 below and <= 0 above, starting
    from σ = 1; (low, excess(low), ...) with excess(low) <= 0 when `low` already fits, None when
    even `high` does not. Accountant calls at huge σ are the slowest, so they come last."""
    sigma = min(max(1.0, low), high)
    f_sigma = excess(sigma)
    if f_sigma <= 0:
        while sigma > low:
            below = max(sigma / 2, low)
            f_below = excess(below)
            if f_below > 0 or below == low:
                return below, f_below, sigma, f_sigma
            sigma, f_sigma = below, f_below
        return sigma, f_sigma, sigma, f_sigma
    while sigma < high:
        above = min(sigma * 2, high)
        f_above = excess(above)
        if f_above <= 0:
            return sigma, f_sigma, above, f_above
        sigma, f_sigma = above, f_above
    return None


def _smallest_root(excess, lo: float, f_lo: float, hi: float, f_hi: float, iterations: int) -> float:
    """log σ of the smallest σ (within 0.1%) with excess(σ) <= 0, for ε decreasing in σ.

    Illinois regula falsi on log σ: the bracket [lo, hi] always has excess > 0 at lo and <= 0 at
    hi, so the answer stays on the budget's safe side; it needs ~6 accountant calls where
    bisection needs ~13 (each call composes Opacus' RDP over the site's whole history).
    """
    side = 0
    for _ in range(iterations):
        if hi - lo < math.log(1.001):
            break
        x = hi - f_hi * (hi - lo) / (f_hi - f_lo)
        if not lo < x < hi:
            x = (lo + hi) / 2
        f_x = excess(math.exp(x))
        if f_x <= 0:
            hi, f_hi = x, f_x
            if side == -1:
                f_lo /= 2
            side = -1
        else:
            lo, f_lo = x, f_x
            if side == 1:
                f_hi /= 2
            side = 1
    return hi


@dataclass(frozen=True)
class RoundBudget:
    """What a round would spend, and whether it fits."""

    epsilon_before: float
    epsilon_after: float
    epsilon_budget: float

    @property
    def fits(self) -> bool:
        return self.epsilon_after <= self.epsilon_budget * (1 + 1e-9)


def check_round(
    history: History, noise_multiplier: float, sample_rate: float, steps: int, epsilon_budget: float, delta: float
) -> RoundBudget:
    return RoundBudget(
        epsilon_before=epsilon_of(history, delta),
        epsilon_after=epsilon_of(with_steps(history, noise_multiplier, sample_rate, steps), delta),
        epsilon_budget=epsilon_budget,
    )


@dataclass(frozen=True)
class JobGrant:
    """The ε a site grants one job: decided by the site alone, never by the coordinator.

    A job *asks* (run config `epsilon`); the site grants at most its own per-job cap and what
    remains of its lifetime budget. The job's noise is calibrated to the grant, so one job can
    never spend a site's whole lifetime budget unless the site's operator allows it.
    """

    asked: float
    cap: float
    budget: float
    spent_before: float
    granted: float

    @property
    def limit(self) -> float:
        """The cumulative ε this job may take the site to."""
        return min(self.budget, self.spent_before + self.granted)

    def as_dict(self) -> dict[str, float]:
        return {"asked": self.asked, "cap": self.cap, "budget": self.budget, "spent_before": self.spent_before,
                "granted": self.granted, "remaining_before": max(self.budget - self.spent_before, 0.0)}


def grant_job(asked: float, cap: float, budget: float, spent_before: float) -> JobGrant:
    """min(asked, cap, remaining); raises BudgetExhausted when the lifetime budget is (almost) spent."""
    remaining = budget - spent_before
    granted = max(0.0, min(asked, cap, remaining))
    if granted <= 0 or remaining <= MIN_REMAINING_SHARE * budget:
        raise BudgetExhausted(
            f"the site grants this job epsilon {granted:.3g} (asked {asked:g}, per-job cap {cap:g}, "
            f"{max(budget - spent_before, 0.0):.3g} of the lifetime budget {budget:g} left): too little to train"
        )
    return JobGrant(asked, cap, budget, spent_before, granted)
