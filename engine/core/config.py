"""Settings read from the environment, with the embedded defaults a newcomer needs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kiln.core.definitions import DEFAULT_MAX_TIMEOUT_S
from kiln.core.errors import InvalidSetting
from kiln.core.limits import (
    DEFAULT_MAX_CONTEXT_SHARDS,
    DEFAULT_MAX_JSON_DEPTH,
    DEFAULT_MAX_WORKFLOW_TASKS,
)
from kiln.core.mapping import DEFAULT_MAX_MAP_ITEMS

DEFAULT_SQLITE_PATH = Path("kiln.db")


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise InvalidSetting(f"{name} must be a number, got {raw!r}") from None


def _int(name: str, default: int) -> int:
    return int(_float(name, default))


def _optional_int(name: str, minimum: int) -> int | None:
    """A whole number of at least ``minimum``, or None when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < minimum:
        raise InvalidSetting(f"{name} must be a whole number of at least {minimum}, got {raw!r}")
    return int(raw)


def _days_by_name(name: str) -> tuple[tuple[str, float], ...]:
    """``nightly-report=7,adhoc=0.5``: a workflow name and a number of days, comma-separated."""
    pairs = []
    for item in _names(name):
        run, sep, days = item.rpartition("=")
        try:
            value = float(days)
        except ValueError:
            value = -1.0
        if not sep or not run.strip() or not value > 0:
            raise InvalidSetting(
                f"{name} must be NAME=DAYS pairs separated by commas (days above 0), got {item!r}"
            )
        pairs.append((run.strip(), value))
    return tuple(pairs)


def _choice(name: str, allowed: tuple[str, ...]) -> str:
    """One of ``allowed``, or "" when unset."""
    raw = os.environ.get(name, "").strip().lower()
    if raw and raw not in allowed:
        raise InvalidSetting(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


def _threshold(name: str) -> str:
    """A whole number of at least 0, "off", or "" when unset."""
    raw = os.environ.get(name, "").strip().lower()
    if raw and raw != "off" and not raw.isdigit():
        raise InvalidSetting(f"{name} must be a whole number of at least 0 or off, got {raw!r}")
    return raw


def _names(name: str) -> tuple[str, ...]:
    """A comma-separated list, blanks dropped."""
    return tuple(n.strip() for n in os.environ.get(name, "").split(",") if n.strip())


@dataclass(frozen=True)
class Settings:
    """Everything Kiln reads from ``KILN_*`` environment variables (see the README)."""

    database_url: str = field(default_factory=lambda: f"sqlite:///{DEFAULT_SQLITE_PATH}")
    broker_url: str = ""  # "" means the in-process broker
    lease_s: float = 15.0  # a running task's lease; heartbeated every lease_s / 3
    dispatch_timeout_s: float = 30.0  # queued but not started for this long: message re-sent
    dispatch_window: int = 2000  # at most this many tasks queued (sent, not started) at once
    max_batch: int = 64  # at most this many tasks in one broker message
    worker_poll_ms: int = 20  # idle Dramatiq consumer's longest sleep between broker polls
    controller_poll_s: float = 0.5  # controller wakes at least this often
    db_ping_after_s: float = 1.0  # ping a pooled connection idle longer than this; 0 = always
    # Connections (docs/scale.md has the budget). Pool size: None is the process's own default
    # (5; a worker 16); overflow: more opened under load and closed after, None = pool size.
    db_pool_size: int | None = None
    db_max_overflow: int | None = None
    # LISTEN needs a session: behind PgBouncer in transaction mode it goes direct. "" = the
    # database URL.
    listen_database_url: str = ""
    # "session" (direct, or a session pooler) or "transaction" (PgBouncer pool_mode=transaction:
    # no session state); "" = transaction when the listen URL differs from the database URL.
    db_pool_mode: str = ""
    # psycopg prepares a statement server-side after this many executions: a number, "off", or
    # "" = 5 in session mode and off in transaction mode (PgBouncer < 1.21 cannot route them).
    db_prepare_threshold: str = ""
    retry_base_s: float = 1.0  # first retry backoff; doubles per attempt, with jitter
    retry_max_s: float = 300.0
    queue_name: str = "kiln"
    api_token: str = ""  # plaintext, every scope (kept for single-token deployments)
    api_tokens: str = ""  # "<sha256 hex>:read,write;<sha256 hex>:admin" (kiln.core.access)
    metrics_token: str = ""  # plaintext; /metrics also accepts it
    proxy_hops: int = 0  # reverse proxies in front of the web app whose X-Forwarded-* count
    # Modules whose functions may run as handlers by import path (with their submodules),
    # besides @task-registered ones: KILN_IMPORTS plus KILN_HANDLER_MODULES.
    handler_modules: tuple[str, ...] = ()
    source_dirs: tuple[str, ...] = ()  # where a context's local `source` may be; none: refused
    source_max_bytes: int = 64 * 1024 * 1024  # a context source larger than this fails
    max_workflow_tasks: int = DEFAULT_MAX_WORKFLOW_TASKS  # more: 413 limit_exceeded
    max_context_shards: int = DEFAULT_MAX_CONTEXT_SHARDS  # more: 413 limit_exceeded
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH  # request bodies and definitions; deeper: 413
    max_timeout_s: float = DEFAULT_MAX_TIMEOUT_S  # a task's timeout_s; more: 422
    max_waiters: int = 2  # long polls (?wait=) at once per web process; more: 429
    retention_days: float | None = None  # finished runs older than this are pruned
    # per workflow name (KILN_RETENTION_DAYS_BY_NAME=name=days,...); a schedule's own wins
    retention_days_by_name: tuple[tuple[str, float], ...] = ()
    max_map_items: int = DEFAULT_MAX_MAP_ITEMS  # a map task over a longer list fails
    max_result_bytes: int = 1_000_000  # a task's result larger than this as JSON fails it

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            database_url=env.get("KILN_DATABASE_URL") or f"sqlite:///{DEFAULT_SQLITE_PATH}",
            broker_url=env.get("KILN_BROKER_URL", ""),
            lease_s=_float("KILN_LEASE_S", 15.0),
            dispatch_timeout_s=_float("KILN_DISPATCH_TIMEOUT_S", 30.0),
            dispatch_window=_int("KILN_DISPATCH_WINDOW", 2000),
            max_batch=_int("KILN_MAX_BATCH", 64),
            worker_poll_ms=_int("KILN_WORKER_POLL_MS", 20),
            controller_poll_s=_float("KILN_CONTROLLER_POLL_S", 0.5),
            db_ping_after_s=_float("KILN_DB_PING_AFTER_S", 1.0),
            db_pool_size=_optional_int("KILN_DB_POOL_SIZE", 1),
            db_max_overflow=_optional_int("KILN_DB_MAX_OVERFLOW", 0),
            listen_database_url=env.get("KILN_LISTEN_DATABASE_URL", ""),
            db_pool_mode=_choice("KILN_DB_POOL_MODE", ("session", "transaction")),
            db_prepare_threshold=_threshold("KILN_DB_PREPARE_THRESHOLD"),
            retry_base_s=_float("KILN_RETRY_BASE_S", 1.0),
            retry_max_s=_float("KILN_RETRY_MAX_S", 300.0),
            queue_name=env.get("KILN_QUEUE", "kiln"),
            api_token=env.get("KILN_API_TOKEN", ""),
            api_tokens=env.get("KILN_API_TOKENS", ""),
            metrics_token=env.get("KILN_METRICS_TOKEN", ""),
            proxy_hops=_int("KILN_PROXY_HOPS", 0),
            handler_modules=_names("KILN_IMPORTS") + _names("KILN_HANDLER_MODULES"),
            source_dirs=_names("KILN_SOURCE_DIRS"),
            source_max_bytes=_int("KILN_SOURCE_MAX_BYTES", 64 * 1024 * 1024),
            max_workflow_tasks=_int("KILN_MAX_WORKFLOW_TASKS", DEFAULT_MAX_WORKFLOW_TASKS),
            max_context_shards=_int("KILN_MAX_CONTEXT_SHARDS", DEFAULT_MAX_CONTEXT_SHARDS),
            max_json_depth=_int("KILN_MAX_JSON_DEPTH", DEFAULT_MAX_JSON_DEPTH),
            max_timeout_s=_float("KILN_MAX_TIMEOUT_S", DEFAULT_MAX_TIMEOUT_S),
            max_waiters=_int("KILN_MAX_WAITERS", 2),
            retention_days=_float("KILN_RETENTION_DAYS", 0.0) or None,
            retention_days_by_name=_days_by_name("KILN_RETENTION_DAYS_BY_NAME"),
            max_map_items=_int("KILN_MAX_MAP_ITEMS", DEFAULT_MAX_MAP_ITEMS),
            max_result_bytes=_int("KILN_MAX_RESULT_BYTES", 1_000_000),
        )

    @property
    def embedded_broker(self) -> bool:
        return not self.broker_url

    @property
    def listen_url(self) -> str:
        """Where a controller LISTENs: its own session, so never through a transaction pooler."""
        return self.listen_database_url or self.database_url

    @property
    def transaction_pooling(self) -> bool:
        """Connections go through a transaction pooler: no state may outlive a transaction."""
        if self.db_pool_mode:
            return self.db_pool_mode == "transaction"
        return self.listen_url != self.database_url

    @property
    def prepare_threshold(self) -> int | None:
        """psycopg's ``prepare_threshold``; None never prepares server-side."""
        if self.db_prepare_threshold == "":
            return None if self.transaction_pooling else 5
        return None if self.db_prepare_threshold == "off" else int(self.db_prepare_threshold)
