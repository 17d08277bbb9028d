"""How much worse than its base a tuned model may look before a no-regression gate fails.

A test split is a sample: on 10 rows one answer more or less moves a rate by 0.1, on 1,000 rows by
0.001. So the tolerance of a ``tolerance: auto`` gate grows with the noise of the split:

- rates (exact match, JSON validity, refusal rate): a one-sided two-proportion z-test; the tuned
  model fails when ``base - tuned > z * sqrt(p * (1 - p) * (1/n_base + 1/n_tuned))``, ``p`` the
  pooled rate;
- means of per-row scores (ROUGE-L, chrF) and of per-row losses (perplexity, compared in loss
  space): a one-sided bound of ``z * sqrt(sd_base^2/n_base + sd_tuned^2/n_tuned)``;

with ``z`` the normal quantile of the gate's confidence (``statistics.NormalDist``). Pure Python.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sample:
    """What the tolerance rule needs of one model's metric: its value, its rows, their spread.

    Attributes:
        value: The metric (a rate, a mean score, or a mean loss).
        n: The rows it was measured on.
        sd: The standard deviation of the per-row values (None for a rate: it follows from value).
        kind: "rate" or "mean".
    """

    value: float
    n: int
    sd: float | None = None
    kind: str = "rate"

    def to_dict(self) -> dict[str, Any]:
        """Returns the sample as report JSON."""
        return {"value": self.value, "n": self.n, "sd": self.sd, "kind": self.kind}

    @classmethod
    def of(cls, data: Mapping[str, Any] | None) -> Sample | None:
        """Reads a sample back from report JSON; None when there is none or it is incomplete."""
        if not isinstance(data, Mapping) or data.get("value") is None or not data.get("n"):
            return None
        return cls(float(data["value"]), int(data["n"]), data.get("sd"), str(data.get("kind")))


def rate_sample(flags: Sequence[bool]) -> Sample | None:
    """Returns the rate of true flags as a Sample, None without flags."""
    if not flags:
        return None
    return Sample(sum(map(bool, flags)) / len(flags), len(flags), None, "rate")


def mean_sample(values: Sequence[float]) -> Sample | None:
    """Returns the mean of per-row values as a Sample (sd 0 for one row), None without values."""
    if not values:
        return None
    from statistics import stdev  # here: the pre-flight compiles gates without it

    sd = stdev(values) if len(values) > 1 else 0.0
    return Sample(sum(values) / len(values), len(values), sd, "mean")


def z_value(confidence: float) -> float:
    """Returns the one-sided normal quantile of a confidence in (0, 1), e.g. 0.95 -> 1.645."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(confidence)


def tolerance(base: Sample, tuned: Sample, confidence: float) -> tuple[float, str]:
    """Returns the drop a tuned metric may show before it counts as worse, and the rule, in words.

    Args:
        base: The base model's metric.
        tuned: The tuned model's metric (on the same split).
        confidence: One-sided confidence, e.g. 0.95.

    Returns:
        (tolerance >= 0, the rule with its numbers, for eval_report.json).
    """
    z = z_value(confidence)
    if base.kind == "rate":
        pooled = (base.value * base.n + tuned.value * tuned.n) / (base.n + tuned.n)
        se = math.sqrt(pooled * (1 - pooled) * (1 / base.n + 1 / tuned.n))
        rule = (f"one-sided two-proportion z-test at {confidence:.0%}: worse when base - tuned > "
                f"z*sqrt(p(1-p)(1/n_base+1/n_tuned)) = {z:.3f}*{se:.4f} = {z * se:.4f} "
                f"(p={pooled:.3f}, n_base={base.n}, n_tuned={tuned.n})")
    else:
        sd_b, sd_t = base.sd or 0.0, tuned.sd or 0.0
        se = math.sqrt(sd_b**2 / base.n + sd_t**2 / tuned.n)
        rule = (f"one-sided standard-error bound at {confidence:.0%}: worse when the gap > "
                f"z*sqrt(sd_base^2/n_base+sd_tuned^2/n_tuned) = {z:.3f}*{se:.4f} = {z * se:.4f} "
                f"(sd_base={sd_b:.4f}, sd_tuned={sd_t:.4f}, n_base={base.n}, n_tuned={tuned.n})")
    return z * se, rule
