"""Retry backoff: exponential with jitter, as a pure function."""

from __future__ import annotations

import random


def backoff_s(
    attempt: int, *, base_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retrying after failed attempt number ``attempt`` (1-based).

    The cap doubles per attempt (``base_s``, ``2*base_s``, ...) up to ``max_s``; the wait is
    drawn uniformly from the upper half of the cap ("equal jitter"), so retries of tasks that
    failed together spread out but never retry sooner than half the nominal backoff.
    """
    cap = min(max_s, base_s * 2 ** max(0, attempt - 1))
    return cap / 2 + (rng or random).uniform(0, cap / 2)
