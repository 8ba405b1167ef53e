"""events triggers run once per statement, over its transition tables

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 15:05:00

0006's triggers run a PL/pgSQL function once per changed row, and each call inserts one
``events`` row. The hot statements change many rows at once (a dispatch leases up to 1,000
tasks, a claim or a finish up to 64), so here each table gets an ``AFTER UPDATE ... FOR EACH
STATEMENT`` trigger with ``REFERENCING OLD TABLE ... NEW TABLE``: one set-based ``INSERT ...
SELECT`` of the rows whose status changed, per statement. What is recorded is unchanged (one
row per status change, the same columns); rows of one statement share its ``clock_timestamp()``
up to microseconds. PostgreSQL does not allow transition tables with a column list, so the
triggers fire on every ``UPDATE`` of the table and find nothing to record when no status
changed. SQLite keeps its row triggers.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TASK_EVENTS = """
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

WORKFLOW_EVENTS = """
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

TABLES = (
    ("tasks", "kiln_record_task_events()", "kiln_record_task_event()"),
    ("workflows", "kiln_record_workflow_events()", "kiln_record_workflow_event()"),
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(TASK_EVENTS)
    op.execute(WORKFLOW_EVENTS)
    for table, function, _row_function in TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_record_event ON {table}")
        op.execute(
            f"CREATE TRIGGER {table}_record_event AFTER UPDATE ON {table} "
            "REFERENCING OLD TABLE AS kiln_old NEW TABLE AS kiln_new "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {function}"
        )


def downgrade() -> None:
    # 0006's row-level functions were left in place; point the triggers back at them.
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, function, row_function in TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_record_event ON {table}")
        op.execute(
            f"CREATE TRIGGER {table}_record_event AFTER UPDATE OF status ON {table} "
            "FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) "
            f"EXECUTE FUNCTION {row_function}"
        )
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
