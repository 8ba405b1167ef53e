"""``kiln.control``: what Kiln's own processes need besides the workflow and noun APIs: the
controller's maintenance and its wake-up on ready work, the schema revision, and the database
errors a process waits out or reports."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from kiln.core.errors import DatabaseUnavailable
from kiln.store.maintenance import analyze_if_stale, vacuum_if_bloated
from kiln.store.revision import current_revision, head_revision

log = logging.getLogger("kiln.controller")
# What a process loop waits out and retries: the database is down or restarting (or, on
# SQLite, locked by another writer for longer than the driver waited).
OUTAGES: tuple[type[BaseException], ...] = (
    DatabaseUnavailable,
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
)
# Any error the database driver raised (``.orig`` is the driver's own exception).
DatabaseError = sa.exc.DBAPIError


class Control:
    """Maintenance and schema facts; each method is one transaction or one maintenance step."""

    def __init__(self, kiln: Any) -> None:  # the Kiln (not imported: it constructs this)
        self._kiln = kiln

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at (None before the first migration)."""
        return self._kiln.read(current_revision)

    def schema_is_current(self) -> bool:
        """The database is at the newest revision this release's migrations know (what
        ``kiln db upgrade`` brings it to). Imports nothing of Alembic: every worker and
        controller asks this at start-up."""
        return self.schema_revision() == head_revision()

    def vacuum_if_bloated(self) -> bool:
        """Vacuum the queue tables after a burst left them bloated (PostgreSQL only); a
        failure is logged, not raised: autovacuum still runs."""
        try:
            return vacuum_if_bloated(self._kiln.engine)
        except sa.exc.SQLAlchemyError:
            log.warning("could not vacuum the queue tables", exc_info=True)
            return False

    def analyze_if_stale(self) -> bool:
        """Refresh the planner's statistics of the queue tables once enough of ``tasks``
        changed (PostgreSQL only); a failure is logged, not raised."""
        try:
            return analyze_if_stale(self._kiln.engine)
        except sa.exc.SQLAlchemyError:
            log.warning("could not analyze the queue tables", exc_info=True)
            return False

    def ready_listener(self) -> Any:
        """A listener whose ``wait(timeout)`` returns when work becomes ready or at the
        timeout, where the database can wake it (PostgreSQL's LISTEN); None elsewhere."""
        return self._kiln.store.ready_listener()
