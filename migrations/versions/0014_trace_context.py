"""trace context: the W3C traceparent of the span that submitted a run

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 15:00:00

* ``workflows.trace_context``: with OpenTelemetry on (``kiln.app.tracing``), the traceparent of
  the submit span, written by the run's insert; the controller's dispatch spans and the
  worker's attempt spans of the run's tasks (the claim reads it) are its children, so one trace
  shows a run from the API request to its last attempt. NULL with tracing off.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

COMMENT = "W3C traceparent of the span that submitted the run (OpenTelemetry); NULL: not traced"


def upgrade() -> None:
    op.add_column("workflows", sa.Column("trace_context", sa.Text, comment=COMMENT))


def downgrade() -> None:
    op.drop_column("workflows", "trace_context")
