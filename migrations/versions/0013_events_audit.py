"""events: numeric entity ids, who changed a row and why; failure and per-handler views

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 15:00:00

* ``events.entity_id`` becomes a BIGINT, so ``WHERE entity_id IN (24, 158)`` works. An
  operation's key is a uuid hex (``operations.ic_id``), not a number: its events keep it in the
  new ``entity_key`` and leave ``entity_id`` NULL.
* ``events.actor`` and ``events.reason``: who made the change (``api``, ``api token
  <sha256 prefix>``, a worker's or controller's process id, ``recovery``, ``cli``) and why
  (``cancel requested``, ``lease expired``, ...). On PostgreSQL the triggers read them from the
  settings ``kiln.actor`` and ``kiln.reason``: the store names the actor on a pooled
  connection when it takes it, only if it changed (``kiln.store.postgres``), and a transaction
  that knows why sets ``kiln.reason`` with ``set_config(..., true)``, so the hot statements
  stay one round trip. SQLite has no session settings a trigger can read: there both stay
  NULL (docs/admin-sql.md says so).
* Views (PostgreSQL only, like 0004's): ``failed_runs`` (runs that failed in the last hour, with
  the errors of their failed tasks) and ``handler_stats`` (per handler over the last 24 hours:
  attempts, failure rate, p50/p95 duration).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"
ENTITY_ID_COMMENT = "the task's, run's or pipeline's id; NULL for an operation (see entity_key)"
ENTITY_KEY_COMMENT = "an operation's ic_id (operations have no numeric id)"
ACTOR_COMMENT = (
    "who made the change: api, api token <sha256 prefix>, a process id, recovery, cli; "
    "NULL when unknown (always on SQLite)"
)
REASON_COMMENT = "why, when the change says it (cancel requested, lease expired, ...)"

# The settings a transaction (or a pooled connection) names its actor and reason with; '' is
# what current_setting returns once a transaction-local value has ended.
PG_AUDIT = (
    "NULLIF(current_setting('kiln.actor', true), ''), "
    "NULLIF(current_setting('kiln.reason', true), '')"
)

PG_TASK_EVENTS = f"""
CREATE OR REPLACE FUNCTION kiln_record_task_events() RETURNS trigger AS $$
BEGIN
    INSERT INTO events (entity, entity_id, workflow_id, from_status, to_status, attempt, at,
                        actor, reason)
    SELECT 'task', n.id, n.workflow_id, o.status, n.status, n.attempts, clock_timestamp(),
           {PG_AUDIT}
    FROM kiln_new n JOIN kiln_old o ON o.id = n.id
    WHERE o.status IS DISTINCT FROM n.status
    ORDER BY n.id;
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""
PG_WORKFLOW_EVENTS = f"""
CREATE OR REPLACE FUNCTION kiln_record_workflow_events() RETURNS trigger AS $$
BEGIN
    INSERT INTO events (entity, entity_id, workflow_id, from_status, to_status, at,
                        actor, reason)
    SELECT 'workflow', n.id, n.id, o.status, n.status, clock_timestamp(), {PG_AUDIT}
    FROM kiln_new n JOIN kiln_old o ON o.id = n.id
    WHERE o.status IS DISTINCT FROM n.status
    ORDER BY n.id;
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""
# Pipelines (key id) and operations (key ic_id) share 0002's row trigger function.
PG_ENTITY_EVENT = f"""
CREATE OR REPLACE FUNCTION kiln_record_entity_event() RETURNS trigger AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO events (entity, entity_id, entity_key, workflow_id, from_status, to_status,
                            at, actor, reason)
        VALUES (
            TG_ARGV[0],
            CASE WHEN TG_ARGV[1] = 'id' THEN (to_jsonb(NEW) ->> 'id')::bigint END,
            CASE WHEN TG_ARGV[1] <> 'id' THEN to_jsonb(NEW) ->> TG_ARGV[1] END,
            (to_jsonb(NEW) ->> 'workflow_id')::bigint,
            OLD.status,
            NEW.status,
            clock_timestamp(),
            {PG_AUDIT}
        );
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""

# What 0002 and 0007 wrote, restored by downgrade.
PG_TASK_EVENTS_0007 = """
CREATE OR REPLACE FUNCTION kiln_record_task_events() RETURNS trigger AS $$
BEGIN
    INSERT INTO events (entity, entity_id, workflow_id, from_status, to_status, attempt, at)
    SELECT 'task', n.id::text, n.workflow_id, o.status, n.status, n.attempts, clock_timestamp()
    FROM kiln_new n JOIN kiln_old o ON o.id = n.id
    WHERE o.status IS DISTINCT FROM n.status
    ORDER BY n.id;
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""
PG_WORKFLOW_EVENTS_0007 = """
CREATE OR REPLACE FUNCTION kiln_record_workflow_events() RETURNS trigger AS $$
BEGIN
    INSERT INTO events (entity, entity_id, workflow_id, from_status, to_status, at)
    SELECT 'workflow', n.id::text, n.id, o.status, n.status, clock_timestamp()
    FROM kiln_new n JOIN kiln_old o ON o.id = n.id
    WHERE o.status IS DISTINCT FROM n.status
    ORDER BY n.id;
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""
PG_ENTITY_EVENT_0002 = """
CREATE OR REPLACE FUNCTION kiln_record_entity_event() RETURNS trigger AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO events (entity, entity_id, workflow_id, from_status, to_status, at)
        VALUES (
            TG_ARGV[0],
            to_jsonb(NEW) ->> TG_ARGV[1],
            (to_jsonb(NEW) ->> 'workflow_id')::bigint,
            OLD.status,
            NEW.status,
            clock_timestamp()
        );
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""

VIEWS: dict[str, tuple[str, str]] = {
    "failed_runs": (
        """
SELECT w.id AS workflow_id, w.name AS workflow_name, w.finished_at,
       now() - w.finished_at AS failed_ago, w.error AS run_error,
       t.id AS task_id, t.name AS task_name, t.handler, t.model_type, t.status AS task_status,
       t.attempts, t.error AS task_error
FROM workflows w
LEFT JOIN tasks t ON t.workflow_id = w.id AND t.status IN ('failed', 'upstream_failed')
WHERE w.status = 'failed' AND w.finished_at > now() - interval '1 hour'
""",
        "Runs that failed in the last hour, one row per failed task (or one row with NULL task "
        "columns when no task failed), with the run's and the task's error.",
    ),
    "handler_stats": (
        """
SELECT coalesce(t.handler, 'model_type:' || t.model_type) AS handler,
       count(*) AS attempts,
       count(*) FILTER (WHERE a.outcome = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE a.outcome IN ('failed', 'timed_out', 'lost')) AS failed,
       round(count(*) FILTER (WHERE a.outcome IN ('failed', 'timed_out', 'lost'))::numeric
             / count(*), 4) AS failure_rate,
       percentile_cont(0.5) WITHIN GROUP (
           ORDER BY extract(epoch FROM a.finished_at - a.started_at)) AS p50_s,
       percentile_cont(0.95) WITHIN GROUP (
           ORDER BY extract(epoch FROM a.finished_at - a.started_at)) AS p95_s,
       max(a.finished_at) AS last_finished_at
FROM task_attempts a
JOIN tasks t ON t.id = a.task_id
WHERE a.finished_at > now() - interval '24 hours' AND a.outcome <> 'stale'
GROUP BY 1
""",
        "Per handler (or model type), over attempts that finished in the last 24 hours: how "
        "many, how many failed (failed, timed_out, lost), the failure rate, and p50/p95 "
        "duration in seconds.",
    ),
}


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# --- SQLite: the triggers of 0001 and 0002, dropped around the table rebuild --------------

SQLITE_TRIGGERS = ("tasks", "workflows", "pipelines", "operations")


def _sqlite_triggers(*, keyed: bool) -> list[str]:
    """The four SQLite event triggers; ``keyed``: as of 0013 (operations in entity_key)."""
    task = (
        "CREATE TRIGGER tasks_record_event AFTER UPDATE OF status ON tasks "
        "WHEN OLD.status IS NOT NEW.status BEGIN "
        "INSERT INTO events (entity, entity_id, workflow_id, from_status, to_status, attempt, at) "
        f"VALUES ('task', NEW.id, NEW.workflow_id, OLD.status, NEW.status, NEW.attempts, {SQLITE_NOW}); "
        "END"
    )
    workflow = (
        "CREATE TRIGGER workflows_record_event AFTER UPDATE OF status ON workflows "
        "WHEN OLD.status IS NOT NEW.status BEGIN "
        "INSERT INTO events (entity, entity_id, workflow_id, from_status, to_status, at) "
        f"VALUES ('workflow', NEW.id, NEW.id, OLD.status, NEW.status, {SQLITE_NOW}); "
        "END"
    )
    pipeline = (
        "CREATE TRIGGER pipelines_record_event AFTER UPDATE OF status ON pipelines "
        "WHEN OLD.status IS NOT NEW.status BEGIN "
        "INSERT INTO events (entity, entity_id, workflow_id, from_status, to_status, at) "
        f"VALUES ('pipeline', NEW.id, NEW.workflow_id, OLD.status, NEW.status, {SQLITE_NOW}); "
        "END"
    )
    key_column = "entity_key" if keyed else "entity_id"
    operation = (
        "CREATE TRIGGER operations_record_event AFTER UPDATE OF status ON operations "
        "WHEN OLD.status IS NOT NEW.status BEGIN "
        f"INSERT INTO events (entity, {key_column}, workflow_id, from_status, to_status, at) "
        f"VALUES ('operation', NEW.ic_id, NEW.workflow_id, OLD.status, NEW.status, {SQLITE_NOW}); "
        "END"
    )
    return [task, workflow, pipeline, operation]


def _drop_sqlite_triggers() -> None:
    for table in SQLITE_TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_record_event")


def upgrade() -> None:
    op.add_column("events", sa.Column("entity_key", sa.Text(), comment=ENTITY_KEY_COMMENT))
    op.add_column("events", sa.Column("actor", sa.Text(), comment=ACTOR_COMMENT))
    op.add_column("events", sa.Column("reason", sa.Text(), comment=REASON_COMMENT))
    op.execute("UPDATE events SET entity_key = entity_id WHERE entity = 'operation'")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE events ALTER COLUMN entity_id DROP NOT NULL")
        op.execute(
            "ALTER TABLE events ALTER COLUMN entity_id TYPE bigint "
            "USING CASE WHEN entity = 'operation' THEN NULL ELSE entity_id::bigint END"
        )
        op.execute(f"COMMENT ON COLUMN events.entity_id IS {_quote(ENTITY_ID_COMMENT)}")
        op.execute(PG_TASK_EVENTS)
        op.execute(PG_WORKFLOW_EVENTS)
        op.execute(PG_ENTITY_EVENT)
        for name, (sql, comment) in VIEWS.items():
            op.execute(f"CREATE VIEW {name} AS {sql}")
            op.execute(f"COMMENT ON VIEW {name} IS {_quote(comment)}")
        return
    # SQLite rebuilds the table to change a column's type; its triggers name the table, so
    # they go first and come back writing operations' keys to entity_key.
    _drop_sqlite_triggers()
    op.execute("UPDATE events SET entity_id = NULL WHERE entity = 'operation'")
    with op.batch_alter_table("events") as batch:
        batch.alter_column(
            "entity_id",
            existing_type=sa.Text(),
            type_=sa.BigInteger(),
            nullable=True,
            comment=ENTITY_ID_COMMENT,
        )
    for trigger in _sqlite_triggers(keyed=True):
        op.execute(trigger)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in reversed(list(VIEWS)):
            op.execute(f"DROP VIEW IF EXISTS {name}")
        op.execute(
            "ALTER TABLE events ALTER COLUMN entity_id TYPE text "
            "USING coalesce(entity_key, entity_id::text)"
        )
        op.execute("ALTER TABLE events ALTER COLUMN entity_id SET NOT NULL")
        op.execute("COMMENT ON COLUMN events.entity_id IS NULL")
        op.execute(PG_ENTITY_EVENT_0002)
        op.execute(PG_TASK_EVENTS_0007)
        op.execute(PG_WORKFLOW_EVENTS_0007)
        for column in ("reason", "actor", "entity_key"):
            op.drop_column("events", column)
        return
    _drop_sqlite_triggers()
    with op.batch_alter_table("events") as batch:
        batch.alter_column("entity_id", existing_type=sa.BigInteger(), type_=sa.Text())
    op.execute("UPDATE events SET entity_id = entity_key WHERE entity = 'operation'")
    with op.batch_alter_table("events") as batch:
        batch.alter_column("entity_id", existing_type=sa.Text(), nullable=False, comment=None)
        for column in ("reason", "actor", "entity_key"):
            batch.drop_column(column)
    for trigger in _sqlite_triggers(keyed=False):
        op.execute(trigger)
