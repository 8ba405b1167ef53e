"""Expected execution time and spread from a quantile prediction.

Placement and the ``ShortestPredicted`` policy reason about a single expected time plus a
spread; this module is the one place that turns quantiles into those two numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kiln.core.prediction.types import Prediction

# For a normal distribution the inter-quartile range is 1.349 standard deviations.
_IQR_PER_SIGMA = 1.349


@dataclass(frozen=True)
class Estimate:
    """An expected duration and its spread (a standard deviation), both in seconds."""

    expected: float
    spread: float = 0.0

    @property
    def variance(self) -> float:
        return self.spread * self.spread


def quantile_value(prediction: Prediction, q: float) -> float:
    """The predicted duration at probability ``q``, linearly interpolated between the given
    quantiles and clamped to the outermost ones (no extrapolation past the data)."""
    qs, vs = prediction.quantiles, prediction.values
    if q <= qs[0]:
        return vs[0]
    if q >= qs[-1]:
        return vs[-1]
    for i in range(1, len(qs)):
        if q <= qs[i]:
            lo_q, hi_q = qs[i - 1], qs[i]
            frac = (q - lo_q) / (hi_q - lo_q)
            return vs[i - 1] + frac * (vs[i] - vs[i - 1])
    return vs[-1]  # unreachable: q < qs[-1] was checked above


def estimate(prediction: Prediction) -> Estimate:
    """Expected ≈ 0.7·q50 + 0.15·q25 + 0.15·q75; spread = IQR / 1.349.

    Missing quartiles are interpolated from the quantiles present; a single-quantile
    prediction has zero spread.
    """
    q25 = quantile_value(prediction, 0.25)
    q50 = quantile_value(prediction, 0.5)
    q75 = quantile_value(prediction, 0.75)
    expected = 0.7 * q50 + 0.15 * q25 + 0.15 * q75
    return Estimate(expected=expected, spread=max(q75 - q25, 0.0) / _IQR_PER_SIGMA)


def combine(estimates: list[Estimate]) -> Estimate:
    """Total of independent durations: expected times add, spreads add in quadrature."""
    return Estimate(
        expected=sum(e.expected for e in estimates),
        spread=math.sqrt(sum(e.variance for e in estimates)),
    )
