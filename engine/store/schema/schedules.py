"""Cron schedules and the fires each has handled."""

from __future__ import annotations

import sqlalchemy as sa

from kiln.core.schedules import CatchUp, Overlap
from kiln.store.schema.columns import Id, Json, Timestamp, metadata, one_of

# --- cron schedules ----------------------------------------------------------------------

schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column(
        "cron",
        sa.Text,
        nullable=False,
        comment="5 fields (minute hour day month weekday), or 6 with seconds first",
    ),
    sa.Column(
        "timezone",
        sa.Text,
        nullable=False,
        server_default="UTC",
        comment="IANA zone the cron fields are read in",
    ),
    sa.Column("definition", Json, nullable=False, comment="the workflow each fire submits"),
    sa.Column("overlap", sa.Text, nullable=False, server_default="skip"),
    sa.Column("catch_up", sa.Text, nullable=False, server_default="none"),
    sa.Column(
        "grace_s",
        sa.Float,
        nullable=False,
        server_default="5",
        comment="a fire time later than this when a controller first sees it was missed",
    ),
    sa.Column(
        "retention_days",
        sa.Float,
        comment="finished runs of this schedule are pruned after this; NULL: KILN_RETENTION_DAYS",
    ),
    sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column(
        "next_fire_at",
        Timestamp,
        nullable=False,
        comment="the next fire time not yet handled; controllers fire it once due",
    ),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.CheckConstraint(one_of("overlap", tuple(o.value for o in Overlap)), name="overlap"),
    sa.CheckConstraint(one_of("catch_up", tuple(c.value for c in CatchUp)), name="catch_up"),
    sa.Index(None, "paused", "next_fire_at"),
    comment="Cron schedules: each fire time submits the schedule's workflow once.",
)

FIRE_OUTCOMES = ("started", "skipped")

schedule_fires = sa.Table(
    "schedule_fires",
    metadata,
    sa.Column(
        "schedule_id",
        sa.BigInteger,
        sa.ForeignKey("schedules.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("fire_time", Timestamp, primary_key=True, comment="the cron time, UTC"),
    sa.Column("fired_at", Timestamp, nullable=False, comment="when a controller handled it"),
    sa.Column(
        "outcome",
        sa.Text,
        nullable=False,
        comment="started, or skipped (overlap=skip and the previous run unfinished)",
    ),
    sa.Column("workflow_id", sa.BigInteger, comment="the run started (kept after pruning)"),
    sa.CheckConstraint(one_of("outcome", FIRE_OUTCOMES), name="outcome"),
    sa.Index(None, "workflow_id"),
    comment="One row per (schedule, fire time) handled: the key that fires each once.",
)
