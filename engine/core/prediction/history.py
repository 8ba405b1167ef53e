"""Per-group duration history, a prediction feature.

Tasks of one group (a workflow, a pipeline, a conversation) tend to resemble each other, so the
durations already observed in a task's group say something about its own. ``GroupHistory``
keeps, per group, an exponentially weighted mean of finished durations; its value is a feature
for :class:`~kiln.core.prediction.quantile_model.OnlineQuantileModel` (``None`` for a group with no
finished task, which the model treats as a bucket of its own).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping


class GroupHistory:
    """Exponentially weighted mean duration per group, for the ``max_groups`` most recently
    updated groups (older ones are forgotten, so memory stays bounded)."""

    def __init__(self, alpha: float = 0.5, max_groups: int = 100_000) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.max_groups = max_groups
        self._means: OrderedDict[str, float] = OrderedDict()

    def observe(self, group: str | None, duration: float) -> None:
        if group is None:
            return
        previous = self._means.pop(group, None)
        self._means[group] = (
            duration if previous is None else previous + self.alpha * (duration - previous)
        )
        while len(self._means) > self.max_groups:
            self._means.popitem(last=False)

    def feature(self, group: str | None) -> float | None:
        """The group's mean finished duration in seconds, or ``None`` if it has none yet."""
        return None if group is None else self._means.get(group)

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "max_groups": self.max_groups, "means": dict(self._means)}

    @classmethod
    def from_dict(cls, data: Mapping) -> GroupHistory:
        history = cls(alpha=data["alpha"], max_groups=data["max_groups"])
        history._means.update(data["means"])
        return history
