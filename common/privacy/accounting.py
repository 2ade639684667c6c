"""Privacy accounting: the ε of a history, the noise multiplier for a job, whether a round fits.

Pure functions of (σ, q, steps) histories; storing a site's history is `common.privacy.ledger`'s
job. Every ε in fedpath (the ledger's spend, the noise calibration, `check_round`, the job grants,
the period allowance, the report, the harness) is `epsilon_of` of a site's *whole* history, so a
site that already spent part of its budget in an earlier run gets more noise now rather than
overspending. `epsilon_of` is the one accountant seam: the smaller of two valid upper bounds on the
ε of the composed Poisson-subsampled Gaussian mechanism, Opacus' RDP accountant and Opacus' PRV
accountant (numerical composition of privacy loss random variables, Gopi et al. 2021, with its
error bound added).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.analysis.prv import Domain

History = list[tuple[float, float, int]]
HistoryKey = tuple[tuple[float, float, int], ...]

# The RDP orders Opacus' RDPAccountant tries (the ledgers' ε before the PRV bound was added).
RDP_ORDERS: tuple[float, ...] = tuple(RDPAccountant.DEFAULT_ALPHAS)
# PRV discretisation: the returned bound is the PRV estimate at δ − δ_err plus ε_err (Opacus'
# `get_epsilon` returns the upper end of its error interval). ε_err = 0.01 keeps the bound within
# ~0.01-0.02 of the exact ε. The mesh is ∝ ε_err and the work ∝ entries × mesh points, so a history
# of many (σ, q) entries (about one per job at a site) gets a coarser ε_err, 0.004 per entry, at most
# 0.05: still an upper bound, at most 0.04 looser, and a job's calibration stays a few seconds
# (measured in docs/PRIVACY.md).
PRV_EPS_ERROR = 0.01
PRV_EPS_ERROR_PER_ENTRY = 0.004
PRV_EPS_ERROR_MAX = 0.05
PRV_DELTA_ERROR_SHARE = 1e-3  # δ_err = δ/1000, Opacus' default
# The PRV's work is ~ entries × mesh points; the domain's half-width is the composed RDP ε at
# δ_err/4, so huge spends (ε in the hundreds, e.g. σ = 0.3 at q = 1/2 over 1000 steps: minutes, then
# inf) or absurd step counts would need millions of points. Past this the RDP ε stands alone.
PRV_MAX_WORK = 5_000_000


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
    """ε of an accountant history at `delta` (0 for an empty history): min(RDP ε, PRV ε upper bound).

    Both numbers are valid upper bounds on the ε of the same mechanism, the Poisson-subsampled
    Gaussian composed over the history's (σ, q, steps) entries: Opacus' RDP accountant (the RDP of
    the sampled Gaussian composed additively, converted at the best order), and Opacus' PRV
    accountant given the same heterogeneous history, whose `get_epsilon` returns the upper end of its
    error interval (the discretised ε at δ − δ_err, plus ε_err), not the estimate. If ε₁ and ε₂ both
    satisfy "the mechanism is (εᵢ, δ)-DP", so does min(ε₁, ε₂): the minimum is a valid upper bound
    too, and never above the RDP ε. Where the PRV computation fails or returns a non-finite or
    non-positive number (extreme σ, tiny q, huge step counts, δ too small for its floating point),
    the RDP ε is returned: this never raises because of the PRV and never returns less than a valid
    bound. Pure and deterministic; memoised on the history's tuple (calibration asks the same
    histories again).
    """
    key = history_key(history)
    if not key:
        return 0.0
    return _epsilon_of(key, float(delta))


def history_key(history: History) -> HistoryKey:
    """The history as a hashable tuple of (σ, q, steps): entries without steps left out, and the steps of
    every (σ, q) that recurs added to its first entry. Composition does not depend on the order of the
    mechanisms (RDP adds up, the PRVs' densities convolve), so this changes no bound; it gives the PRV
    fewer entries (a site that returns to a job's σ and q) and the memo more hits."""
    merged: dict[tuple[float, float], int] = {}
    for s, q, n in history:
        if int(n) > 0:
            pair = (float(s), float(q))
            merged[pair] = merged.get(pair, 0) + int(n)
    return tuple((s, q, n) for (s, q), n in merged.items())


@lru_cache(maxsize=4096)
def _epsilon_of(key: HistoryKey, delta: float) -> float:
    rdp = rdp_epsilon(key, delta)
    prv = prv_epsilon_or_none(key, delta)
    return rdp if prv is None else min(rdp, prv)


def rdp_epsilon(history: History | HistoryKey, delta: float) -> float:
    """Opacus' RDP accountant's ε of the history (its orders, its conversion), from memoised per-step RDP."""
    key = history_key(history)
    if not key:
        return 0.0
    return rdp_epsilon_of_curve(RDP_ORDERS, history_rdp(key, RDP_ORDERS), delta)


def rdp_epsilon_of_curve(orders, rdp: np.ndarray, delta: float) -> float:
    """(ε, δ) from an RDP curve, Opacus' conversion (Balle et al. 2020, Thm. 21) at the best order."""
    with warnings.catch_warnings():
        # Opacus warns when the best RDP order is the largest or smallest it tries (tiny or huge
        # spends, e.g. while calibrating); the epsilon is then a valid but looser upper bound,
        # which is the safe side for a budget.
        warnings.filterwarnings("ignore", message="Optimal order is the", category=UserWarning)
        eps, _ = rdp_analysis.get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    return float(eps)


def history_rdp(history: History | HistoryKey, orders) -> np.ndarray:
    """Composed RDP of a history at `orders`: the sum over entries of steps × one step's RDP, in the
    history's order (as Opacus' RDPAccountant adds them up)."""
    orders = tuple(float(a) for a in orders)
    return sum([_step_rdp(float(q), float(s), orders) * int(n) for s, q, n in history if int(n) > 0],
               np.zeros(len(orders)))


@lru_cache(maxsize=4096)
def _step_rdp(q: float, sigma: float, orders: tuple[float, ...]) -> np.ndarray:
    """One step's RDP of the sampled Gaussian at each order (Opacus' `compute_rdp` with steps=1):
    the slow part of both accountants, and the same for every history that holds (σ, q)."""
    out = np.asarray(rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(orders)), dtype=float)
    out.setflags(write=False)
    return out


class _CachedPRVAccountant(PRVAccountant):
    """Opacus' PRVAccountant, with the discretisation domain computed from the memoised per-step RDP.

    `_get_domain` is Opacus' own (`compute_safe_domain_size`: the composed RDP ε at δ_err/4 and each
    entry's one-step RDP ε at δ_err/(8·steps), plus 3; the mesh from ε_err), only without recomputing
    the RDP of a (σ, q) it has seen: the bound it returns is bit for bit Opacus' (tests/privacy).
    """

    def _get_domain(self, prvs, num_self_compositions, eps_error, delta_error) -> Domain:
        total = sum(num_self_compositions)
        pairs = [(prv.noise_multiplier, prv.sample_rate) for prv in prvs]
        whole = rdp_epsilon_of_curve(RDP_ORDERS, history_rdp(
            [(s, q, n) for (s, q), n in zip(pairs, num_self_compositions)], RDP_ORDERS), delta_error / 4)
        one_step = [rdp_epsilon_of_curve(RDP_ORDERS, history_rdp([(s, q, 1)], RDP_ORDERS), delta_error / (8 * total))
                    for s, q in pairs]
        size = max(max([whole, *one_step]), eps_error) + 3
        mesh = eps_error / np.sqrt(total * np.log(12 / delta_error) / 2)
        if not math.isfinite(size) or len(prvs) * 2 * size / mesh > PRV_MAX_WORK:
            raise OverflowError(f"PRV domain of {2 * size / mesh:.3g} points x {len(prvs)} entries: too large")
        return Domain.create_aligned(-size, size, mesh)


def prv_epsilon(history: History | HistoryKey, delta: float) -> float:
    """The PRV accountant's ε upper bound for the history (raises where its numerics fail)."""
    accountant = _CachedPRVAccountant()
    accountant.history = list(history_key(history))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # overflow in the PRV's pdf far out in the tails: masked by np.where
        return float(accountant.get_epsilon(delta, eps_error=prv_eps_error(len(accountant.history)),
                                            delta_error=delta * PRV_DELTA_ERROR_SHARE))


def prv_eps_error(entries: int) -> float:
    """The PRV's ε_err for a history of `entries` (σ, q) entries (see PRV_EPS_ERROR).

    A function of the entry count only: a calibration's trial histories all have the same entries, so
    it compares like with like. A round that adds a new (σ, q) entry may coarsen it by 0.004; the ε
    stays a valid bound, and any real round adds far more ε than that."""
    return min(PRV_EPS_ERROR_MAX, max(PRV_EPS_ERROR, PRV_EPS_ERROR_PER_ENTRY * entries))


def prv_epsilon_or_none(history: History | HistoryKey, delta: float) -> float | None:
    """`prv_epsilon`, or None where it fails or gives a number that cannot be a meaningful bound."""
    try:
        eps = prv_epsilon(history, delta)
    except Exception:  # noqa: BLE001 - any numerical failure of the PRV: the RDP bound stands alone
        return None
    return eps if math.isfinite(eps) and eps > 0 else None


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
    bisection needs ~13 (each call composes the accountants over the site's whole history).
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
