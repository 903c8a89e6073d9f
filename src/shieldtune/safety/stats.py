"""Confidence bounds for safety metrics, and the three-way decision they support.

Every safety number shieldtune acts on is an estimate from a finite sample, so
it carries an interval, and a state is judged by the interval, not the point:

* accuracies (clean, FGSM, PGD) are binomial proportions: k of n samples
  correct; their bounds are exact Clopper-Pearson bounds;
* membership-inference numbers are differences or ratios of such proportions
  on held-out halves (see :mod:`shieldtune.safety.privacy`), bounded from
  their parts.

A constraint ``m >= t`` is *certified satisfied* when the pessimistic end
(the lower bound) meets it, *certified broken* when the optimistic end (the
upper bound) misses it, and *undecided* otherwise; ``m <= t`` mirrors this.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from scipy.stats import beta


class Decision(IntEnum):
    """A state's verdict under the spec (stored as a float in step metrics)."""

    UNSAFE = -1
    UNDECIDED = 0
    SAFE = 1


@dataclass(frozen=True)
class Estimate:
    """A point estimate with the bounds a decision uses (each one-sided at its level)."""

    value: float
    low: float
    high: float
    #: Samples behind it (0: a quantity without sampling error, such as a task's own metric).
    n: int = 0


def clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """One-sided exact bounds for a binomial proportion, each holding with prob. >= 1 - alpha.

    ``low`` is the largest p with P(X >= k | p) <= alpha, ``high`` the smallest p with
    P(X <= k | p) <= alpha (Clopper and Pearson 1934, via the beta quantiles).
    """
    if n <= 0:
        return 0.0, 1.0
    low = 0.0 if k <= 0 else float(beta.ppf(alpha, k, n - k + 1))
    high = 1.0 if k >= n else float(beta.ppf(1 - alpha, k + 1, n - k))
    return low, high


def proportion(k: int, n: int, alpha: float) -> Estimate:
    low, high = clopper_pearson(k, n, alpha)
    return Estimate(k / n if n else math.nan, low, high, n)


def decide(op: str, threshold: float, estimate: Estimate) -> Decision:
    """Certified satisfied, certified broken, or undecided, for ``metric op threshold``."""
    if op == ">=":
        if estimate.low >= threshold:
            return Decision.SAFE
        if estimate.high < threshold:
            return Decision.UNSAFE
        return Decision.UNDECIDED
    if estimate.high <= threshold:
        return Decision.SAFE
    if estimate.low > threshold:
        return Decision.UNSAFE
    return Decision.UNDECIDED


def combine(decisions: list[Decision]) -> Decision:
    """A state is safe when every constraint is certified, unsafe when any is broken."""
    if any(d is Decision.UNSAFE for d in decisions):
        return Decision.UNSAFE
    if all(d is Decision.SAFE for d in decisions):
        return Decision.SAFE
    return Decision.UNDECIDED


def looks(first: int, cap: int) -> list[int]:
    """Cumulative sample counts of the sequential looks: first, 2 first, 4 first, ... cap."""
    sizes = [min(first, cap)]
    while sizes[-1] < cap:
        sizes.append(min(sizes[-1] * 2, cap))
    return sizes


def sequential_proportions(
    sizes: list[int],
    count: Callable[[int, int], dict[str, int]],
    constraints: list[tuple[str, str, float]],
    level: float,
    stop_on_miss: bool = False,
) -> tuple[dict[str, Estimate], int]:
    """Proportions measured on growing prefixes until every constraint on them is decided.

    ``count(start, stop)`` returns, per metric, how many of samples ``start..stop-1`` are
    hits; ``constraints`` are ``(metric, op, threshold)``. After each look every bound is
    one-sided at ``level`` (the caller divides its error budget by the number of looks, so
    stopping at the first decisive look keeps the overall error within the budget: a union
    bound over the looks). With ``stop_on_miss`` it also stops once a constraint's point
    estimate misses its threshold: more samples could still certify it, but rarely do, and
    stopping early can only turn a verdict "safe" into "undecided", never the reverse.
    Returns the estimates and the samples used.
    """
    hits: dict[str, int] = {}
    estimates: dict[str, Estimate] = {}
    done = 0
    for size in sizes:
        for name, k in count(done, size).items():
            hits[name] = hits.get(name, 0) + k
        done = size
        estimates = {name: proportion(k, done, level) for name, k in hits.items()}
        measured = [(m, op, t) for m, op, t in constraints if m in estimates]
        if all(decide(op, t, estimates[m]) is not Decision.UNDECIDED for m, op, t in measured):
            break
        if stop_on_miss and any(
            (estimates[m].value < t) if op == ">=" else (estimates[m].value > t)
            for m, op, t in measured
        ):
            break
    return estimates, done
