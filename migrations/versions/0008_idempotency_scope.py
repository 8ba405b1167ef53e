"""idempotency keys scoped per route, with the fingerprint of their first request

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 10:00:00

A key used to be global to its table: after ``stop-pipeline`` with key K, ``delete-pipeline``
with K answered with the stop and recorded no delete. Now the unique ``idempotency_key``
column holds ``'<route> <client key>'`` (e.g. ``'POST /dispatcher/stop-pipeline K'``) and the
new ``idempotency_fingerprint`` column the sha256 of the request the key was first used with
(see ``kiln.core.idempotency``). Keeping the one-column unique constraint, rather than a
``(scope, key)`` pair, is deliberate: SQLite cannot drop a table's inline UNIQUE constraint
without rebuilding the table, and rebuilding ``workflows`` inside this transaction, with
foreign keys on, would cascade-delete every task.

Existing keys get the route they were used on (they have no fingerprint, so any retry with
them still replays). Downgrade drops the fingerprints and leaves the keys scoped: a retry
after a downgrade creates afresh rather than replaying the wrong request.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

FINGERPRINT_COMMENT = (
    "sha256 of the first request with idempotency_key (route, path, body); the same key "
    "with another request is refused"
)
KEY_COMMENTS = {
    "workflows": (
        "a retried submission with the same key returns this run instead of a new one",
        "'<route> <client key>' (e.g. 'POST /workflows k1'): a retried submission with the "
        "same key returns this run instead of a new one",
    ),
    "operations": (
        "a retried request with the same key returns this operation",
        "'<route> <client key>' (e.g. 'POST /dispatcher/stop-pipeline k1'): a retried request "
        "with the same key returns this operation",
    ),
}
SCOPE_EXISTING = {
    "workflows": "'POST /workflows '",
    "operations": (
        "CASE WHEN operation = 'clone' THEN 'POST /dispatcher/clone-pipeline '"
        " WHEN pipeline_id IS NOT NULL THEN 'POST /dispatcher/' || operation || '-pipeline '"
        " ELSE 'POST /workflows/{workflow_id}/' || operation || ' ' END"
    ),
}


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table, (old, new) in KEY_COMMENTS.items():
        op.add_column(
            table,
            sa.Column(
                "idempotency_fingerprint", sa.Text(), nullable=True, comment=FINGERPRINT_COMMENT
            ),
        )
        op.execute(
            f"UPDATE {table} SET idempotency_key = {SCOPE_EXISTING[table]} || idempotency_key "
            "WHERE idempotency_key IS NOT NULL"
        )
        if postgres:  # SQLite keeps no comments (and altering a column rebuilds the table)
            op.alter_column(
                table, "idempotency_key", existing_type=sa.Text(), comment=new,
                existing_comment=old,
            )  # fmt: skip


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table, (old, new) in KEY_COMMENTS.items():
        if postgres:
            op.alter_column(
                table, "idempotency_key", existing_type=sa.Text(), comment=old,
                existing_comment=new,
            )  # fmt: skip
        op.drop_column(table, "idempotency_fingerprint")
