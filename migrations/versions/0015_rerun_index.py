"""reruns listed on the run they rerun: an index on workflows.rerun_of

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 17:40:00

* ``GET /workflows/<id>`` lists ``reruns`` (the runs whose ``rerun_of`` is this run) beside its
  ``children``, read in the same statement; the index keeps that lookup off a scan of every
  run.
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("workflows_rerun_of_idx"), "workflows", ["rerun_of"])


def downgrade() -> None:
    op.drop_index(op.f("workflows_rerun_of_idx"), table_name="workflows")
