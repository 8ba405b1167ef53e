"""An online quantile model of execution time, learned from observed durations.

Observations are grouped by ``(model_type, hardware)`` and, inside that, by buckets of the size
features (e.g. input tokens) on a log scale. Each bucket keeps a sliding window of its most
recent durations, kept sorted, so quantiles are exact over the window, an update costs one
binary insertion, and the model follows drift.

Buckets form a hierarchy: no features, the first feature, the first two, ... A prediction
starts at the coarsest level and moves towards the finest bucket, shrinking each level's
quantiles towards its parent's in proportion to how few samples it holds, so a bucket with a
handful of samples barely moves the estimate and a full one dominates. A hardware never seen
for a model type falls back to the model type's observations on any hardware.

The model serialises to and from plain dicts; the service may instead persist raw
observations and rebuild with :meth:`OnlineQuantileModel.from_observations`.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from kiln.core.prediction.estimate import quantile_value
from kiln.core.prediction.types import DEFAULT_QUANTILES, Prediction

ANY_HARDWARE = "*"
CALIBRATED_QUANTILE = 0.9
CALIBRATION_STEP = 0.5
CALIBRATION_STEP_MIN = 0.01

Features = Mapping[str, float | str | None]
_NON_POSITIVE = -(2**31)  # the bucket of 0 and of negative values (and of NaN)
_INFINITE = 2**31
_BucketKey = tuple[str, str, tuple[int | str | None, ...]]


@dataclass(frozen=True)
class Observation:
    """One finished execution: what ran, where, how big it was, and how long it took (s)."""

    model_type: str
    hardware: str | None
    duration: float
    features: Mapping[str, float | str | None] = field(default_factory=dict)


class _Window:
    """The last ``size`` samples, in arrival order and sorted."""

    __slots__ = ("order", "sorted")

    def __init__(self, size: int) -> None:
        self.order: deque[float] = deque(maxlen=size)
        self.sorted: list[float] = []

    def add(self, value: float) -> None:
        if len(self.order) == self.order.maxlen:
            oldest = self.order[0]
            del self.sorted[bisect.bisect_left(self.sorted, oldest)]
        self.order.append(value)
        bisect.insort(self.sorted, value)

    def __len__(self) -> int:
        return len(self.sorted)

    def quantile(self, q: float) -> float:
        """The q-quantile at the Weibull position ``q·(n + 1)`` (Hyndman and Fan's type 6):
        a new draw falls under the k-th of n sorted samples with probability k / (n + 1), so
        a few samples give wider outer quantiles instead of over-confident ones."""
        data = self.sorted
        pos = min(max(q * (len(data) + 1) - 1, 0.0), len(data) - 1.0)
        lo = int(pos)
        hi = min(lo + 1, len(data) - 1)
        return data[lo] + (pos - lo) * (data[hi] - data[lo])


class OnlineQuantileModel:
    """Streaming per-bucket quantiles of duration, conditioned on size features.

    ``features`` names the size features (numbers, or strings for categories),
    coarsest-first in the bucket hierarchy (put the most informative one first).
    ``buckets_per_octave`` sets the bucket width on the log2 scale of the value (a ratio, so
    the resolution is the same whatever the unit: sizes of 0.01 s and of 100 s are told apart
    alike; zero and negative values share one bucket below every other);
    ``window`` is how many recent samples each bucket keeps; ``prior_samples`` is how many
    samples a bucket needs before it outweighs its parent.
    """

    def __init__(
        self,
        features: Sequence[str] = ("input_tokens",),
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        buckets_per_octave: float = 4.0,
        window: int = 512,
        prior_samples: int = 20,
    ) -> None:
        if window < 1 or prior_samples < 0 or buckets_per_octave <= 0:
            raise ValueError("window >= 1, prior_samples >= 0 and buckets_per_octave > 0 required")
        self.features = tuple(features)
        self.quantiles = tuple(quantiles)
        self.buckets_per_octave = float(buckets_per_octave)
        self.window = int(window)
        self.prior_samples = int(prior_samples)
        self._buckets: dict[_BucketKey, _Window] = {}
        # Per model type, how much the quantiles' distance from the median is stretched so
        # that the p90 covers 90 % of what actually happens (see ``_calibrate``).
        self._widen: dict[str, float] = {}
        self._checked: dict[str, int] = {}

    # -- learning ---------------------------------------------------------------------------

    def bucket_of(self, value: float | str | None) -> int | str | None:
        """A number's bucket on the log scale; a string (a category: model variant, tenant,
        adapter) is its own bucket."""
        if value is None:
            return None
        if isinstance(value, str):
            return value
        number = float(value)
        if not number > 0 or math.isinf(number):
            # log2(1 + value) here once made every value below ~0.1 one bucket, which threw
            # away a feature measured in small units (issue 17: seconds of a short job).
            return _NON_POSITIVE if not number > 0 else _INFINITE
        return math.floor(math.log2(number) * self.buckets_per_octave)

    def _path(self, features: Features | None) -> tuple[int | str | None, ...]:
        given = features or {}
        return tuple(self.bucket_of(given.get(name)) for name in self.features)

    def observe(
        self,
        model_type: str,
        hardware: str | None,
        duration: float,
        features: Features | None = None,
    ) -> None:
        """Learn one finished execution of ``duration`` seconds."""
        if duration < 0 or math.isnan(duration):
            raise ValueError(f"a duration must be a non-negative number, got {duration}")
        self._calibrate(model_type, hardware, duration, features)
        path = self._path(features)
        hardware_keys = {ANY_HARDWARE, hardware or ANY_HARDWARE}
        for hw in hardware_keys:
            for depth in range(len(path) + 1):
                key = (model_type, hw, path[:depth])
                bucket = self._buckets.get(key)
                if bucket is None:
                    bucket = self._buckets[key] = _Window(self.window)
                bucket.add(float(duration))

    def observe_all(self, observations: Iterable[Observation]) -> None:
        for obs in observations:
            self.observe(obs.model_type, obs.hardware, obs.duration, obs.features)

    def _calibrate(
        self, model_type: str, hardware: str | None, duration: float, features: Features | None
    ) -> None:
        """Adaptive conformal calibration of the p90 (Gibbs and Candès, *Adaptive Conformal
        Inference Under Distribution Shift*, NeurIPS 2021): before learning a duration, check
        it against what the model predicts for it; a miss widens the spread by a factor
        ``exp(step · 0.9)``, a hit narrows it by ``exp(step · 0.1)``, so the long-run share of
        durations under the p90 is 90 % whatever the drift. The step shrinks as
        ``CALIBRATION_STEP / √n`` down to ``CALIBRATION_STEP_MIN``: the first misses (a young,
        over-confident model) widen it quickly, later it settles."""
        prediction = self.predict(model_type, hardware, features)
        if prediction is None:
            return
        missed = duration > quantile_value(prediction, CALIBRATED_QUANTILE)
        checked = self._checked[model_type] = self._checked.get(model_type, 0) + 1
        # Big steps while the model is young, small ones once it has seen a few thousand
        # durations, so the factor settles instead of wandering.
        step = max(CALIBRATION_STEP / math.sqrt(checked), CALIBRATION_STEP_MIN)
        widen = self._widen.get(model_type, 1.0) * math.exp(
            step * (float(missed) - (1 - CALIBRATED_QUANTILE))
        )
        self._widen[model_type] = min(max(widen, 0.25), 16.0)

    # -- predicting -------------------------------------------------------------------------

    def sample_count(self, model_type: str, hardware: str | None = None) -> int:
        bucket = self._buckets.get((model_type, hardware or ANY_HARDWARE, ()))
        return len(bucket) if bucket else 0

    def predict(
        self,
        model_type: str,
        hardware: str | None = None,
        features: Features | None = None,
    ) -> Prediction | None:
        """Quantiles for one execution, or ``None`` if the model type was never observed."""
        hw = hardware if hardware and self.sample_count(model_type, hardware) else ANY_HARDWARE
        root = self._buckets.get((model_type, hw, ()))
        if not root:
            return None
        values = [root.quantile(q) for q in self.quantiles]
        support = len(root)
        path = self._path(features)
        for depth in range(1, len(path) + 1):
            bucket = self._buckets.get((model_type, hw, path[:depth]))
            if not bucket:
                break  # deeper buckets are nested in this one, so they are empty too
            n = len(bucket)
            w = n / (n + self.prior_samples) if self.prior_samples else 1.0
            values = [
                w * bucket.quantile(q) + (1 - w) * v
                for q, v in zip(self.quantiles, values, strict=True)
            ]
            support = n
        widen = self._widen.get(model_type, 1.0)
        if widen != 1.0:
            median = _interpolate(self.quantiles, values, 0.5)
            values = [max(median + widen * (v - median), 0.0) for v in values]
        confidence = support / (support + self.prior_samples) if self.prior_samples else 1.0
        return Prediction(
            quantiles=self.quantiles, values=tuple(values), method="learned", confidence=confidence
        )

    # -- persistence ------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Plain data (JSON-able) from which :meth:`from_dict` rebuilds an identical model."""
        return {
            "features": list(self.features),
            "quantiles": list(self.quantiles),
            "buckets_per_octave": self.buckets_per_octave,
            "window": self.window,
            "prior_samples": self.prior_samples,
            "widen": dict(self._widen),
            "checked": dict(self._checked),
            "buckets": [
                {"model_type": mt, "hardware": hw, "path": list(path), "samples": list(w.order)}
                for (mt, hw, path), w in self._buckets.items()
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> OnlineQuantileModel:
        model = cls(
            features=data["features"],
            quantiles=data["quantiles"],
            buckets_per_octave=data["buckets_per_octave"],
            window=data["window"],
            prior_samples=data["prior_samples"],
        )
        for row in data["buckets"]:
            window = _Window(model.window)
            for value in row["samples"]:
                window.add(float(value))
            model._buckets[(row["model_type"], row["hardware"], tuple(row["path"]))] = window
        model._widen = dict(data.get("widen", {}))
        model._checked = dict(data.get("checked", {}))
        return model

    @classmethod
    def from_observations(
        cls, observations: Iterable[Observation], **config
    ) -> OnlineQuantileModel:
        """Rebuild from persisted observations, oldest first."""
        model = cls(**config)
        model.observe_all(observations)
        return model


def _interpolate(qs: Sequence[float], vs: Sequence[float], q: float) -> float:
    """The value at probability ``q`` of sorted quantiles ``qs`` with values ``vs``."""
    i = bisect.bisect_left(qs, q)
    if i == 0:
        return vs[0]
    if i == len(qs):
        return vs[-1]
    frac = (q - qs[i - 1]) / (qs[i] - qs[i - 1])
    return vs[i - 1] + frac * (vs[i] - vs[i - 1])


def calibration(model: OnlineQuantileModel, held_out: Iterable[Observation]) -> dict[str, float]:
    """How often held-out durations fall under the predicted p50 and p90.

    A calibrated model gives about 0.5 and 0.9. Observations the model cannot predict (unknown
    model type) are counted in ``skipped``.
    """
    n = under_p50 = under_p90 = skipped = 0
    for obs in held_out:
        prediction = model.predict(obs.model_type, obs.hardware, obs.features)
        if prediction is None:
            skipped += 1
            continue
        n += 1
        under_p50 += obs.duration <= quantile_value(prediction, 0.5)
        under_p90 += obs.duration <= quantile_value(prediction, 0.9)
    return {
        "n": n,
        "skipped": skipped,
        "under_p50": under_p50 / n if n else math.nan,
        "under_p90": under_p90 / n if n else math.nan,
    }
