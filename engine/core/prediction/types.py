"""The value every predictor returns: execution-time quantiles, in seconds."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_QUANTILES: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)

#: Where a prediction came from, best first.
METHODS = ("learned", "lookup", "external", "default")


@dataclass(frozen=True)
class Prediction:
    """Predicted execution time as quantiles.

    ``quantiles`` are strictly increasing probabilities in (0, 1); ``values`` are the matching
    durations in seconds (non-decreasing). ``confidence`` in [0, 1] says how much the source
    trusts itself (e.g. grows with the number of observations behind a learned estimate).
    """

    quantiles: tuple[float, ...]
    values: tuple[float, ...]
    method: str = "default"
    confidence: float = 0.0

    def __post_init__(self) -> None:
        qs = tuple(float(q) for q in self.quantiles)
        vs = tuple(float(v) for v in self.values)
        if not qs or len(qs) != len(vs):
            raise ValueError("a prediction needs as many values as quantiles, at least one")
        if any(not 0.0 < q < 1.0 for q in qs) or any(
            b <= a for a, b in zip(qs, qs[1:], strict=False)
        ):
            raise ValueError(f"quantiles must be strictly increasing in (0, 1), got {qs}")
        if self.method not in METHODS:
            raise ValueError(
                f"unknown prediction method {self.method!r}; expected one of {METHODS}"
            )
        # Quantile crossing can come from any source (lookup rows, external services); sorting
        # the values is the standard repair and keeps every consumer's interpolation monotone.
        object.__setattr__(self, "quantiles", qs)
        object.__setattr__(self, "values", tuple(sorted(max(v, 0.0) for v in vs)))
        object.__setattr__(self, "confidence", min(max(float(self.confidence), 0.0), 1.0))

    def to_dict(self) -> dict:
        return {
            "quantiles": list(self.quantiles),
            "values": list(self.values),
            "method": self.method,
            "confidence": self.confidence,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Prediction:
        return cls(
            quantiles=tuple(data["quantiles"]),
            values=tuple(data["values"]),
            method=data.get("method", "default"),
            confidence=data.get("confidence", 0.0),
        )
