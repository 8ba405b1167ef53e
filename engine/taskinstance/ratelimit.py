"""Token buckets for requests-per-minute and tokens-per-minute limits, both ends of the wire.

The server enforces ``--rpm-limit``/``--tpm-limit`` with a :class:`RateLimiter`; the
:class:`~kiln.taskinstance.client.OpenAICompatClient` keeps its own buckets so a
well-behaved caller rarely sees a 429 at all. A bucket of capacity ``N`` per minute starts
full and refills continuously at ``N / 60`` per second.

Durations in the ``x-ratelimit-reset-*`` headers use OpenAI's Go-style notation:
``"20ms"``, ``"1.5s"``, ``"6m0s"``, ``"1h2m3s"``.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Decision", "RateLimiter", "TokenBucket", "format_duration", "parse_duration"]


class TokenBucket:
    """A continuously refilling bucket; not thread-safe on its own (callers hold a lock)."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.capacity = float(per_minute)
        self.rate = float(per_minute) / 60.0
        self._clock = clock
        self._level = self.capacity
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    @property
    def level(self) -> float:
        """Units available now."""
        self._refill()
        return self._level

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` units are available (0 if they are; inf if never)."""
        self._refill()
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self._level) / self.rate)

    def time_to_full(self) -> float:
        """Seconds until the bucket is back to capacity."""
        self._refill()
        return (self.capacity - self._level) / self.rate

    def take(self, amount: float) -> None:
        """Remove ``amount`` units; the level may go negative (debt paid back by refill)."""
        self._refill()
        self._level -= amount

    def drain_to(self, level: float) -> None:
        """Lower the level to ``level`` if it is higher (used to trust a server's count)."""
        self._refill()
        self._level = min(self._level, level)


@dataclass(frozen=True)
class Decision:
    """Outcome of one admission check, with everything the response headers need."""

    allowed: bool
    limited_by: str | None  # "requests" | "tokens" | None
    retry_after: float
    headers: dict[str, str]


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits checked and charged atomically."""

    def __init__(
        self,
        rpm_limit: int | None,
        tpm_limit: int | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self.requests = TokenBucket(rpm_limit, clock) if rpm_limit else None
        self.tokens = TokenBucket(tpm_limit, clock) if tpm_limit else None

    def admit(self, tokens: int) -> Decision:
        """Charge one request and ``tokens`` tokens if both fit; otherwise charge nothing."""
        with self._lock:
            limited_by = None
            retry_after = 0.0
            if self.requests is not None and self.requests.level < 1:
                limited_by = "requests"
                retry_after = self.requests.wait_time(1)
            elif self.tokens is not None and self.tokens.level < tokens:
                limited_by = "tokens"
                retry_after = self.tokens.wait_time(tokens)
            if limited_by is None:
                if self.requests is not None:
                    self.requests.take(1)
                if self.tokens is not None:
                    self.tokens.take(tokens)
            return Decision(limited_by is None, limited_by, retry_after, self._headers())

    def headers(self) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers describing the current state."""
        with self._lock:
            return self._headers()

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.requests is not None:
            headers["x-ratelimit-limit-requests"] = str(int(self.requests.capacity))
            headers["x-ratelimit-remaining-requests"] = str(max(0, int(self.requests.level)))
            headers["x-ratelimit-reset-requests"] = format_duration(self.requests.time_to_full())
        if self.tokens is not None:
            headers["x-ratelimit-limit-tokens"] = str(int(self.tokens.capacity))
            headers["x-ratelimit-remaining-tokens"] = str(max(0, int(self.tokens.level)))
            headers["x-ratelimit-reset-tokens"] = format_duration(self.tokens.time_to_full())
        return headers


def format_duration(seconds: float) -> str:
    """Go-style duration as OpenAI sends it: ``"0s"``, ``"20ms"``, ``"1.5s"``, ``"6m0s"``."""
    if not math.isfinite(seconds):
        return "0s"
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{math.ceil(seconds * 1000) / 1000:g}s"
    total = math.ceil(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{secs}s"


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str | None) -> float | None:
    """Seconds in a Go-style duration (``"1h2m3.5s"``, ``"20ms"``) or a bare number."""
    if not text:
        return None
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)
