"""The Dramatiq broker: Redis in production, an in-process stub in the embedded default.

Kiln keeps retries, time limits and leases in the database, so the broker gets none of
Dramatiq's retry/time-limit middleware: a message is only a wake-up call carrying
``(task_id, attempt)`` pairs, and losing one loses nothing.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import ShutdownNotifications
from kiln.core.config import Settings

_broker: dramatiq.Broker | None = None


def build_broker(settings: Settings) -> dramatiq.Broker:
    middleware = [ShutdownNotifications()]
    if settings.embedded_broker:
        return StubBroker(middleware=middleware)
    from dramatiq.brokers.redis import RedisBroker

    return RedisBroker(url=settings.broker_url, middleware=middleware)


def get_broker() -> dramatiq.Broker:
    """The process-wide broker, built from the environment on first use."""
    global _broker
    if _broker is None:
        _broker = build_broker(Settings.from_env())
        dramatiq.set_broker(_broker)
    return _broker
