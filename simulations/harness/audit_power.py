"""How likely a gradient-canary audit is to exceed (or stay within) a claimed ε: the odds, computed.

A test that says "the audit of a correct run stays below the claim" or "the audit of a broken run
exceeds it" must hold on every machine and for every draw of the noise, the sampling and the coin
flips, not only for the draw one machine made. This module bounds the probability that it does not,
from a model of the Dirac canaries' scores that follows from DP-SGD itself (SGD without momentum,
one learning rate; `simulations.harness.gradient_canaries`):

    s_i = I_i · c · K_i + τ · Z_i + D_i,

in units of one clipped canary push (C at the audited site's scale): I_i the canary's fair coin,
K_i ~ Binomial(T, q) the steps Poisson sampling put it in, c the push of one sampled canary (1 when
clipped to C, G/C when clipping is off), τ = σ_actual·√T the noise on its coordinate over T steps
(Z_i standard normal, independent: each canary owns its coordinate), and D_i the real records' push
on that coordinate, |D_i| ≤ d (`head_data_push` bounds it from the data for the `head` policy; the
bound takes the worst case for D, in whichever direction hurts the claim being tested).

The audit guesses the top r_in = r − r//2 scores "in" and the bottom r//2 "out" for each r of a fixed
grid (`common.audit.bound.audit_scores`). For a threshold t, if the top set holds ≥ a included
canaries then either ≥ a included canaries score ≥ t, or at most r_in − a excluded ones do (and the
mirror images for the bottom set and for "at most"). The counts above t are Binomial(m, ·), since
canaries are independent, so every event reduces to exact binomial tails, minimised over t. Union
bounds over the split of the right guesses between top and bottom and over the grid make the
results upper bounds on the failure probabilities.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import nn

from common.audit.bound import DEFAULT_GUESS_FRACTIONS, epsilon_lower_bound
from common.model.inputs import normalise
from simulations.harness.gradient_canaries import dihedral_variants

# Added to every integral: more than the trapezoid rule's error on 4001 points over ±13 standard deviations of
# a smooth peak, and than the weight left out beyond them (< 1e-40 of the peak), far below the 1e-6 tests need.
QUADRATURE_SLACK = 1e-12


@dataclass(frozen=True)
class CanaryScores:
    """The model of one audit's canary scores (see the module doc), in units of one clipped canary push."""

    canaries: int  # m
    steps: int  # T: steps of the audited site over all audited rounds
    rate: float  # q: the Poisson rate of a canary per step
    push: float = 1.0  # c: what one sampled canary adds (1: clipped to C; G/C: unclipped)
    noise: float = 0.0  # τ = σ_actual · √T (0: no noise)
    data_push: float = 0.0  # d: bound on |D_i|, the real records' push on a canary's coordinate
    # Canaries whose D_i is not bounded by d: each may score anything. Among the guesses it can take one
    # place of the others or give one right guess, so it moves the right guesses by at most one.
    unbounded: int = 0

    @classmethod
    def with_pushes(cls, steps: int, rate: float, push: float, noise: float, pushes: np.ndarray,
                    cutoff: float = 0.1) -> CanaryScores:
        """The model for canaries with per-canary bounds `pushes` on |D_i|: those above `cutoff` unbounded."""
        pushes = np.asarray(pushes, dtype=np.float64)
        bounded = pushes[pushes <= cutoff]
        return cls(len(pushes), steps, rate, push, noise, float(bounded.max(initial=0.0)),
                   int((pushes > cutoff).sum()))


def grid(m: int, fractions: Sequence[float] = DEFAULT_GUESS_FRACTIONS) -> list[int]:
    """The guess counts r the audit tries (as `common.audit.bound.audit_scores`)."""
    return sorted({max(1, min(m, int(round(f * m)))) for f in fractions})


def right_guesses_needed(m: int, r: int, claim: float, delta: float, level: float) -> int:
    """The fewest right guesses out of r whose bound exceeds `claim` (r + 1 when none does)."""
    low, high = 0, r + 1
    while low < high:  # the bound grows with the right guesses
        mid = (low + high) // 2
        if mid <= r and epsilon_lower_bound(m, r, mid, delta, level) > claim:
            high = mid
        else:
            low = mid + 1
    return low


def _thresholds(model: CanaryScores) -> np.ndarray:
    top = model.push * model.steps + model.data_push
    if model.noise == 0:  # scores sit on c·k ± d: thresholds between the support points
        support = np.concatenate([[-model.data_push, model.data_push],
                                  model.push * np.arange(model.steps + 1) + model.data_push,
                                  model.push * np.arange(model.steps + 1) - model.data_push])
        support = np.unique(support)
        return np.concatenate([support, (support[1:] + support[:-1]) / 2, [support[-1] + 1]])
    return np.linspace(-model.data_push - 8 * model.noise, top + 8 * model.noise, 801)


def _tails(model: CanaryScores, t: np.ndarray, shift_in: float, shift_out: float,
           upper: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per threshold, (P[included and s ≥ t], P[excluded and s ≥ t]) (upper) or the same with s ≤ t, for
    D = shift_in on included and shift_out on excluded canaries."""
    k = np.arange(model.steps + 1)
    pk = stats.binom.pmf(k, model.steps, model.rate)
    centre = model.push * k[None, :] + shift_in
    if model.noise == 0:
        inside = ((centre >= t[:, None]) if upper else (centre <= t[:, None])).astype(float) @ pk
        outside = ((shift_out >= t) if upper else (shift_out <= t)).astype(float)
    else:
        tail = stats.norm.sf if upper else stats.norm.cdf
        inside = tail((t[:, None] - centre) / model.noise) @ pk
        outside = tail((t - shift_out) / model.noise)
    return 0.5 * inside, 0.5 * outside


def _side_at_least(m: int, size: int, good: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Per a = 0..size+1: a bound on P[≥ a right guesses among `size`], from per-threshold (good, bad) rates."""
    a = np.arange(size + 2)[:, None]
    bound = stats.binom.sf(a - 1, m, good[None, :]) + stats.binom.cdf(size - a, m, bad[None, :])
    out = np.minimum(1.0, bound.min(axis=1))
    out[0], out[size + 1] = 1.0, 0.0
    return out


def _side_at_most(m: int, size: int, good: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Per a = 0..size+1: a bound on P[≤ a − 1 right guesses among `size`]."""
    a = np.arange(size + 2)[:, None]
    bound = stats.binom.sf(size - a, m, bad[None, :]) + stats.binom.cdf(a - 1, m, good[None, :])
    out = np.minimum(1.0, bound.min(axis=1))
    out[0], out[size + 1] = 0.0, 1.0
    return out


def _at(side: np.ndarray, a: int, below: float, above: float) -> float:
    """side[a], or the value for a count below 0 / above the side's size."""
    return below if a < 0 else above if a >= len(side) else float(side[a])


def _order_statistic_sides(model: CanaryScores, size: int, shift_in: float, shift_out: float,
                           top: bool) -> tuple[np.ndarray, np.ndarray]:
    """Exact (up to quadrature) P[≥ a] and P[≤ a − 1] right guesses in the top (bottom) `size`, a = 0..size+1.

    Scores are i.i.d. from the mixture; condition on the value x of the size-th most extreme one: of the
    other m − 1, size − 1 are beyond x, each right with probability π(x) independently, and the one at x is
    right with probability λ(x). Noisy scores only (τ > 0).
    """
    wide = np.linspace(-model.data_push - 10 * model.noise,
                       model.push * model.steps + model.data_push + 10 * model.noise, 2001)
    weight = _cut_terms(model, size, shift_in, shift_out, top, wide)[0]
    support = wide[weight >= weight.max() * 1e-40]
    step = wide[1] - wide[0]
    x = np.linspace(support[0] - step, support[-1] + step, 4001)  # where the cut lies, finely
    weight, pi, lam = _cut_terms(model, size, shift_in, shift_out, top, x)
    beyond = stats.binom.pmf(np.arange(size)[None, :], size - 1, pi[:, None])  # right guesses beyond the cut
    at_least_beyond = np.cumsum(beyond[:, ::-1], axis=1)[:, ::-1]  # P[≥ j], j = 0..size-1, summed from the tail
    at_most_beyond = np.cumsum(beyond, axis=1)  # P[≤ j]
    pad = np.zeros((len(x), 1))
    ge = np.concatenate([at_least_beyond, pad], axis=1)  # P[≥ j], j = 0..size
    le = np.concatenate([pad, at_most_beyond, np.ones((len(x), 1))], axis=1)  # P[≤ j − 1], j = 0..size+1 (shifted)
    a = np.arange(size + 2)
    ge_a, ge_a1 = ge[:, np.minimum(a, size)] * (a <= size), ge[:, np.clip(a - 1, 0, size)]
    le_a, le_a1 = le[:, a], le[:, np.maximum(a - 1, 0)] * (a >= 1)
    at_least = lam[:, None] * ge_a1 + (1 - lam[:, None]) * ge_a  # the cut canary right: a − 1 more needed
    at_most = lam[:, None] * le_a1 + (1 - lam[:, None]) * le_a
    integrate = lambda values: np.trapezoid(weight[:, None] * values, x, axis=0) + QUADRATURE_SLACK  # noqa: E731
    return np.clip(integrate(at_least), 0.0, 1.0), np.clip(integrate(at_most), 0.0, 1.0)


def _cut_terms(model: CanaryScores, size: int, shift_in: float, shift_out: float, top: bool,
               x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At each x: the density of the size-th most extreme score, π(x) and λ(x) (see `_order_statistic_sides`)."""
    k = np.arange(model.steps + 1)
    pk = stats.binom.pmf(k, model.steps, model.rate)
    z_in = (x[:, None] - model.push * k[None, :] - shift_in) / model.noise
    z_out = (x - shift_out) / model.noise
    f_in, f_out = (stats.norm.pdf(z_in) @ pk) / model.noise, stats.norm.pdf(z_out) / model.noise
    if top:
        beyond_in, beyond_out = stats.norm.sf(z_in) @ pk, stats.norm.sf(z_out)
    else:
        beyond_in, beyond_out = stats.norm.cdf(z_in) @ pk, stats.norm.cdf(z_out)
    # the right guesses: included canaries at the top, excluded ones at the bottom
    right_f, right_beyond = (f_in, beyond_in) if top else (f_out, beyond_out)
    f, beyond = 0.5 * (f_in + f_out), 0.5 * (beyond_in + beyond_out)
    regular = model.canaries - model.unbounded
    weight = regular * f * stats.binom.pmf(size - 1, regular - 1, np.clip(beyond, 0.0, 1.0))
    pi = np.divide(0.5 * right_beyond, beyond, out=np.zeros_like(beyond), where=beyond > 0)
    lam = np.divide(0.5 * right_f, f, out=np.zeros_like(f), where=f > 0)
    return weight, np.clip(pi, 0.0, 1.0), np.clip(lam, 0.0, 1.0)


def _sides(model: CanaryScores, r: int, shift_in: float, shift_out: float) -> dict[str, np.ndarray]:
    """Bounds on P[≥ a] and P[≤ a − 1] right guesses in the top r_in and the bottom r_out, a = 0..size+1."""
    r_in, r_out = r - r // 2, r // 2
    t = _thresholds(model)
    up_in, up_out = _tails(model, t, shift_in, shift_out, upper=True)
    down_in, down_out = _tails(model, t, shift_in, shift_out, upper=False)
    regular = model.canaries - model.unbounded
    sides = {"top_at_least": _side_at_least(regular, r_in, up_in, up_out),
             "top_at_most": _side_at_most(regular, r_in, up_in, up_out),
             "bottom_at_least": _side_at_least(regular, r_out, down_out, down_in),
             "bottom_at_most": _side_at_most(regular, r_out, down_out, down_in)}
    if model.noise > 0:
        for side, size in (("top", r_in), ("bottom", r_out)):
            if size == 0:
                continue
            at_least, at_most = _order_statistic_sides(model, size, shift_in, shift_out, side == "top")
            sides[f"{side}_at_least"][1:size + 1] = np.minimum(sides[f"{side}_at_least"], at_least)[1:size + 1]
            sides[f"{side}_at_most"][1:size + 1] = np.minimum(sides[f"{side}_at_most"], at_most)[1:size + 1]
    return sides


@functools.lru_cache(maxsize=256)
def _needed(m: int, claim: float, delta: float, confidence: float) -> tuple[tuple[int, int], ...]:
    counts = grid(m)
    level = 1.0 - (1.0 - confidence) / len(counts)
    return tuple((r, right_guesses_needed(m, r, claim, delta, level)) for r in counts)


def odds_bound_exceeds(model: CanaryScores, claim: float, delta: float, confidence: float = 0.95) -> float:
    """Upper bound on P[the audit's bound > claim] (what a correct run must make negligible)."""
    total = 0.0
    for r, needed in _needed(model.canaries, claim, delta, confidence):
        needed -= model.unbounded  # the unbounded canaries may all be guessed right
        if needed > r:
            continue
        # worst case for the claim: included canaries pushed up by d, excluded ones down
        sides = _sides(model, r, +model.data_push, -model.data_push)
        top, bottom = sides["top_at_least"], sides["bottom_at_least"]
        # v ≥ needed ⇒ top ≥ a or bottom ≥ needed + 1 − a, for any a
        total += min(top[a] + _at(bottom, needed + 1 - a, 1.0, 0.0) for a in range(len(top)))
    return min(1.0, total)


def odds_bound_within(model: CanaryScores, claim: float, delta: float, confidence: float = 0.95) -> float:
    """Upper bound on P[the audit's bound ≤ claim] (what a broken run must make negligible)."""
    best = 1.0
    for r, needed in _needed(model.canaries, claim, delta, confidence):
        needed += model.unbounded  # ... or all wrong
        if needed > r:
            continue
        # worst case for catching it: included canaries pushed down by d, excluded ones up
        sides = _sides(model, r, -model.data_push, +model.data_push)
        top, bottom = sides["top_at_most"], sides["bottom_at_most"]
        # v < needed ⇒ top ≤ a − 1 or bottom ≤ needed − a − 1, for any a
        best = min(best, min(top[a] + _at(bottom, needed - a, 0.0, 1.0) for a in range(len(top))))
    return best


def head_data_push(model: nn.Module, images: np.ndarray, coordinates: np.ndarray, clipped: bool) -> np.ndarray:
    """Per coordinate, a bound on the push of all `images` together, each once, in units of C
    (clipped per record to C) or of the raw gradient (not clipped); `head` policy only.

    With only the final Linear layer trainable, a record's gradient at weight (c, f) is (p_c − y_c)·h_f and at
    bias c is (p_c − y_c), h the frozen features; its norm is ‖p − y‖·‖(h, 1)‖. Since |p_c − y_c| ≤ ‖p − y‖
    and |p_c − y_c| ≤ 1, clipping to C leaves at most C·|h_f| / ‖(h, 1)‖ on the coordinate, and no clipping
    at most |h_f|, whatever the model: a bound from the data alone, for each record the largest over its 8
    dihedral variants (augmentation), summed over records. Times the number of passes over the records (every step, at worst, under Poisson sampling) it bounds
    |D_i| of `CanaryScores`.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    if len(trainable) != 2 or trainable[0] is not head.weight or trainable[1] is not head.bias:
        raise ValueError("head_data_push needs a model whose only trainable parameters are its last Linear layer")
    features = _dihedral_features(model, head, images)  # (8, records, F)
    with_bias = torch.cat([features, torch.ones(*features.shape[:2], 1)], dim=2)
    scale = with_bias.norm(dim=2, keepdim=True) if clipped else torch.ones(*features.shape[:2], 1)
    per_feature = (with_bias.abs() / scale).amax(dim=0).sum(dim=0).double().numpy()  # (F + 1,)
    classes, width = head.weight.shape
    flat = np.concatenate([np.tile(per_feature[:width], classes), np.repeat(per_feature[width], classes)])
    return flat[np.asarray(coordinates)]


@torch.no_grad()
def _dihedral_features(model: nn.Module, head: nn.Linear, images: np.ndarray) -> torch.Tensor:
    """(8, records, F): the head's input for every record in each of its 8 dihedral variants."""
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
    was_training = model.training
    model.eval()
    try:
        model(normalise(dihedral_variants(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))))
    finally:
        handle.remove()
        model.train(was_training)
    return captured[0].view(8, len(images), -1)
