"""Empirical lower bound on ε from one training run (Steinke, Nasr & Jagielski, NeurIPS 2023).

The audit: m canaries, each put into the training data independently with probability ½.
After training, an auditor guesses for r of them whether they were in (the rest it abstains
on) and gets v right. Under (ε, δ)-DP the number of correct guesses W satisfies (the paper's
main theorem for approximate DP)

    P[W ≥ v] ≤ f(v) + 2·m·δ · max_{i = 1..v} (f(v − i) − f(v)) / i,

    f(k) = P[Binomial(r, e^ε / (1 + e^ε)) ≥ k],

i.e. an ε-DP mechanism cannot guess better than ε-randomized response, up to a δ term that
grows with the number of canaries m (so δ must be well below 1/m for a useful bound). The
lower bound is the largest ε whose p-value is still below 1 − confidence: observing v
correct guesses would then be too unlikely were the training (ε, δ)-DP.

No maintained implementation fits fedpath's stack: `opake-auditing` (alpha; pulls in its own
DP engine) implements the later Xiang et al. (2025) analysis, and `jax-privacy`'s auditor
needs JAX. This module is the paper's formula, in log space (exact for r up to tens of
thousands), with no dependency beyond NumPy.

Choosing how many guesses to make after looking at the scores is a multiple test; use
`audit_scores`, which tries a fixed grid of guess counts and applies a Bonferroni correction,
so the reported bound keeps its confidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _log_binomial_pmf(r: int, epsilon: float) -> np.ndarray:
    """log P[Binomial(r, q) = k] for k = 0..r, q = e^ε / (1 + e^ε), stable for large ε."""
    log_q = -math.log1p(math.exp(-epsilon))  # log(e^ε / (1 + e^ε))
    log_1mq = -epsilon + log_q  # log(1 / (1 + e^ε))
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, r + 1, dtype=np.float64)))])
    k = np.arange(r + 1, dtype=np.float64)
    return log_fact[r] - log_fact[: r + 1] - log_fact[r::-1] + k * log_q + (r - k) * log_1mq


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Upper bound on P[≥ v of r guesses correct] for m canaries under (ε, δ)-DP."""
    _check_counts(m, r, v)
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and 0 <= delta <= 1, got epsilon={epsilon}, delta={delta}")
    if v == 0:
        return 1.0
    pmf = np.exp(_log_binomial_pmf(r, epsilon))
    tail = float(pmf[v:].sum())  # f(v)
    # f(v - i) - f(v) = P[v - i <= Binomial < v], for i = 1..v
    below = np.cumsum(pmf[v - 1::-1])
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(1.0, tail + 2.0 * m * delta * alpha)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95,
                        tolerance: float = 1e-6) -> float:
    """The largest ε at which v correct guesses out of r would have p-value < 1 − confidence.

    0 when even ε = 0 explains the result (e.g. v ≈ r/2).
    """
    _check_counts(m, r, v)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    level = 1.0 - confidence
    if p_value(m, r, v, 0.0, delta) >= level:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < level:  # p-value grows with ε towards 1
        low, high = high, 2 * high
        if high > 1e4:
            return math.inf  # only with delta = 0 and astronomically many perfect guesses
    while high - low > tolerance:
        mid = (low + high) / 2
        if p_value(m, r, v, mid, delta) < level:
            low = mid
        else:
            high = mid
    return low


def _check_counts(m: int, r: int, v: int) -> None:
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct guesses v <= guesses r <= canaries m, got v={v}, r={r}, m={m}")


def guess(scores: np.ndarray, guesses: int) -> np.ndarray:
    """+1 (in) for the guesses/2 highest scores, -1 (out) for the guesses/2 lowest, 0 otherwise.

    An odd count gives the extra guess to "in". Ties are broken by position (stable order),
    which does not depend on the truth.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if not 0 <= guesses <= len(scores):
        raise ValueError(f"guesses must be in 0..{len(scores)}, got {guesses}")
    order = np.argsort(-scores, kind="stable")
    out = np.zeros(len(scores), dtype=np.int64)
    k_in = guesses - guesses // 2
    out[order[:k_in]] = 1
    if guesses // 2:
        out[order[len(scores) - guesses // 2:]] = -1
    return out


@dataclass(frozen=True)
class CanaryAudit:
    """The outcome of a one-run canary audit."""

    epsilon_lower_bound: float
    canaries: int  # m
    included: int
    guesses: int  # r of the best grid point
    correct: int  # v of the best grid point
    confidence: float
    delta: float
    grid: tuple[tuple[int, int, float], ...]  # (r, v, bound at the Bonferroni-corrected level) per grid point
    ceiling: float = math.inf  # the largest bound this audit could give (`ceiling`)

    def as_dict(self) -> dict[str, object]:
        return {
            "epsilon_lower_bound": self.epsilon_lower_bound, "canaries": self.canaries, "included": self.included,
            "guesses": self.guesses, "correct": self.correct, "confidence": self.confidence, "delta": self.delta,
            "grid": [list(g) for g in self.grid], "ceiling": self.ceiling,
        }

    def verdict(self, claimed_epsilon: float) -> str:
        """`verdict` of this audit against a claimed ε."""
        return verdict(self.epsilon_lower_bound, self.ceiling, claimed_epsilon)


CONSISTENT, INCONSISTENT, INCONCLUSIVE = "consistent", "inconsistent", "inconclusive"


def verdict(bound: float, ceiling: float, claimed_epsilon: float) -> str:
    """What an audit says about a claimed ε: `inconsistent` when its bound exceeds the claim (the implementation
    or its accounting is broken); `inconclusive` when even every guess right could not exceed it (the audit
    cannot contradict the claim: ceiling ≤ claim); else `consistent` (it could have failed and did not)."""
    if bound > claimed_epsilon * (1 + 1e-9):
        return INCONSISTENT
    return CONSISTENT if ceiling > claimed_epsilon else INCONCLUSIVE


DEFAULT_GUESS_FRACTIONS = (0.05, 0.1, 0.2, 0.4, 1.0)


def ceiling(included: np.ndarray, delta: float, confidence: float = 0.95,
            guess_fractions: Sequence[float] = DEFAULT_GUESS_FRACTIONS) -> float:
    """The largest ε this audit can certify: every guess right, as far as the coin flips allow.

    A function of m, δ and the number of included canaries only (not of training), so it can be stated
    before the run: a claimed ε at or above it can never be contradicted by this audit, whatever the
    implementation does.
    """
    included = np.asarray(included, dtype=bool)
    return _bound(included.astype(np.float64), included, delta, confidence, guess_fractions)[0]


def audit_scores(scores: np.ndarray, included: np.ndarray, delta: float, confidence: float = 0.95,
                 guess_fractions: Sequence[float] = DEFAULT_GUESS_FRACTIONS) -> CanaryAudit:
    """ε lower bound from canary scores (higher = more likely included) and the true coin flips.

    Guesses the top/bottom k scores for each k = fraction·m in a grid fixed in advance; each
    grid point is tested at (1 − confidence)/len(grid) (Bonferroni), so the best of them is a
    valid lower bound at `confidence`. The audit's `ceiling` comes with it.
    """
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    if scores.shape != included.shape or scores.ndim != 1:
        raise ValueError("scores and included must be 1-D arrays of the same length")
    if not np.all(np.isfinite(scores)):
        raise ValueError("canary scores must be finite")
    bound, r, v, grid = _bound(scores, included, delta, confidence, guess_fractions)
    top = ceiling(included, delta, confidence, guess_fractions)
    return CanaryAudit(bound, len(scores), int(included.sum()), r, v, confidence, delta, grid, top)


def _bound(scores: np.ndarray, included: np.ndarray, delta: float, confidence: float,
           guess_fractions: Sequence[float]) -> tuple[float, int, int, tuple[tuple[int, int, float], ...]]:
    """(bound, r, v of the best grid point, the grid) of `audit_scores`."""
    m = len(scores)
    counts = sorted({max(1, min(m, int(round(f * m)))) for f in guess_fractions}) if m else []
    level = 1.0 - (1.0 - confidence) / max(1, len(counts))
    truth = np.where(included, 1, -1)
    grid = []
    for r in counts:
        guesses = guess(scores, r)
        v = int(np.sum(guesses == truth))
        grid.append((r, v, epsilon_lower_bound(m, r, v, delta, level)))
    best = max(grid, key=lambda g: g[2], default=(0, 0, 0.0))
    return best[2], best[0], best[1], tuple(grid)
