"""The hot path's statements on PostgreSQL, written once.

Each is a single round trip that does what the portable version in ``kiln.store.dispatch``,
``kiln.store.tasks`` or ``kiln.store.workflows`` does in two to four (SQLite runs those); the guards
are the same. The allowed transitions they carry out are listed in ``kiln.core.states``.
"""

from __future__ import annotations

import functools

import sqlalchemy as sa
from kiln.store.db import READY_CHANNEL
from kiln.store.schema import Json, Timestamp

MARK_QUEUED = sa.text(
    """
    WITH q AS (
        UPDATE tasks SET status = 'queued', queued_at = :now, lease_expires_at = :lease,
               dispatch_count = dispatch_count + 1, not_before = NULL, waiting_reason = NULL
        WHERE id = ANY(CAST(:ids AS bigint[])) AND status IN ('ready', 'retrying')
        RETURNING id, attempts, workflow_id, model_type
    ), w AS (
        UPDATE workflows SET status = 'running', started_at = :now
        WHERE id IN (SELECT workflow_id FROM q) AND status = 'pending'
    )
    SELECT * FROM q
    """
).bindparams(sa.bindparam("now", type_=Timestamp), sa.bindparam("lease", type_=Timestamp))

# The queue is idle when no dispatchable task (other than :excluding) waits for a controller
# and fewer than :cap tasks are sent but not yet claimed (kiln.store.dispatch.queue_is_idle_txn).
_IDLE = """
    NOT EXISTS (
        SELECT 1 FROM tasks t
        WHERE t.status IN ('ready', 'retrying')
          AND (t.not_before IS NULL OR t.not_before <= :now)
          AND t.id <> ALL(CAST(:excluding AS bigint[]))
          AND EXISTS (SELECT 1 FROM workflows w
                      WHERE w.id = t.workflow_id AND w.status IN ('pending', 'running'))
    ) AND (SELECT count(*) FROM (SELECT 1 FROM tasks WHERE status = 'queued' LIMIT :cap) q) < :cap
"""

QUEUE_IS_IDLE = sa.text(f"SELECT {_IDLE}").bindparams(sa.bindparam("now", type_=Timestamp))

# A run, its tasks and its edges in one statement. The tasks come as one JSON array (so one
# statement serves any number of them); the edges name their tasks, joined to the ids the task
# insert returns. On an idempotency-key conflict nothing is inserted.
#
# With :lease set and the queue idle, the run's ``direct`` tasks (handler tasks with no
# dependencies) are leased in the same statement: written ``queued`` with that lease, the run
# ``running``, and the ``ready -> queued`` and ``pending -> running`` events the triggers
# would have written for the two updates this saves are written here. Otherwise, with
# :notify, controllers are woken (``NOTIFY`` is delivered on commit).
INSERT_RUN = sa.text(
    f"""
    WITH lease AS (
        SELECT CAST(:lease AS timestamptz) AS until
        WHERE CAST(:lease AS timestamptz) IS NOT NULL AND {_IDLE}
    ), w AS (
        INSERT INTO workflows (name, status, on_error, priority, definition, idempotency_key,
                               created_at, started_at)
        SELECT :name, CASE WHEN lease.until IS NULL THEN 'pending' ELSE 'running' END,
               :on_error, :priority, :definition, :idempotency_key, :now,
               CASE WHEN lease.until IS NOT NULL THEN CAST(:now AS timestamptz) END
        FROM (SELECT 1) AS one LEFT JOIN lease ON true
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id, status
    ), t AS (
        INSERT INTO tasks (workflow_id, name, handler, model_type, params, status, priority,
                           max_attempts, timeout_s, deps_remaining, created_at, ready_at,
                           queued_at, lease_expires_at, dispatch_count)
        SELECT w.id, r.name, r.handler, r.model_type, r.params,
               CASE WHEN r.direct AND lease.until IS NOT NULL THEN 'queued' ELSE r.status END,
               r.priority, r.max_attempts, r.timeout_s, r.deps_remaining, :now,
               CASE WHEN r.status = 'ready' THEN CAST(:now AS timestamptz) END,
               CASE WHEN r.direct AND lease.until IS NOT NULL THEN CAST(:now AS timestamptz) END,
               CASE WHEN r.direct THEN lease.until END,
               CASE WHEN r.direct AND lease.until IS NOT NULL THEN 1 ELSE 0 END
        FROM w LEFT JOIN lease ON true, jsonb_to_recordset(:tasks) AS r(
            name text, handler text, model_type text, params jsonb, status text,
            priority integer, max_attempts integer, timeout_s double precision,
            deps_remaining integer, direct boolean)
        RETURNING id, name, workflow_id, status
    ), e AS (
        INSERT INTO task_dependencies (task_id, depends_on_id)
        SELECT a.id, b.id
        FROM jsonb_to_recordset(:edges) AS x(task text, dep text)
        JOIN t a ON a.name = x.task JOIN t b ON b.name = x.dep
    ), ev AS (
        INSERT INTO events (entity, entity_id, workflow_id, from_status, to_status, attempt, at)
        SELECT 'task', t.id::text, t.workflow_id, 'ready', 'queued', 0, clock_timestamp()
        FROM t WHERE t.status = 'queued'
        UNION ALL
        SELECT 'workflow', w.id::text, w.id, 'pending', 'running', NULL, clock_timestamp()
        FROM w WHERE w.status = 'running'
    ), n AS (
        SELECT pg_notify('{READY_CHANNEL}', '')
        WHERE :notify AND EXISTS (SELECT 1 FROM t WHERE t.status = 'ready')
    )
    -- a plain SELECT in WITH runs only if referenced: "notified" makes n run
    SELECT t.workflow_id, t.id, t.name, t.status, (SELECT count(*) FROM n) AS notified FROM t
    """
).bindparams(
    sa.bindparam("definition", type_=Json),
    sa.bindparam("tasks", type_=Json),
    sa.bindparam("edges", type_=Json),
    sa.bindparam("now", type_=Timestamp),
    sa.bindparam("lease", type_=Timestamp),
)

# A lease can commit just after its run was paused (the pause looked for queued tasks before
# the lease committed), so the claim is the guard: a task of a paused run does not start but
# goes back to ready, as the pause would have put it. Both updates read the run's status from
# the same snapshot, so each task takes exactly one of them.
CLAIM = sa.text(
    """
    WITH want AS (
        SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:prev AS integer[])) AS w(id, prev)
    ), c AS (
        UPDATE tasks AS t SET status = 'running', attempts = t.attempts + 1,
               lease_owner = :worker, lease_expires_at = :lease, started_at = :now,
               progress = NULL, progress_message = NULL
        FROM want, workflows AS w
        WHERE t.id = want.id AND t.attempts = want.prev AND t.status = 'queued'
          AND w.id = t.workflow_id AND w.status <> 'paused'
        RETURNING t.id, t.attempts, t.workflow_id, t.name, t.handler, t.model_type, t.params,
                  t.timeout_s, t.max_attempts
    ), back AS (
        UPDATE tasks AS t SET status = 'ready', lease_expires_at = NULL, queued_at = NULL,
               ready_at = :now
        FROM want, workflows AS w
        WHERE t.id = want.id AND t.attempts = want.prev AND t.status = 'queued'
          AND w.id = t.workflow_id AND w.status = 'paused'
    ), a AS (
        INSERT INTO task_attempts (task_id, attempt, worker, started_at)
        SELECT id, attempts, :worker, :now FROM c
    )
    SELECT * FROM c
    """
).bindparams(sa.bindparam("now", type_=Timestamp), sa.bindparam("lease", type_=Timestamp))


def outcome_bindparams(n: int) -> list[sa.BindParameter]:
    """The typed parameters of ``n`` finished tasks (result, started, finished) in the
    finishing statements (here and SQLite's in ``kiln.store.tasks``)."""
    params: list[sa.BindParameter] = []
    for k in range(n):
        params += [
            sa.bindparam(f"r{k}", type_=Json),
            sa.bindparam(f"s{k}", type_=Timestamp),
            sa.bindparam(f"f{k}", type_=Timestamp),
        ]
    return params


@functools.lru_cache(maxsize=128)
def finish_sql(n: int) -> sa.TextClause:
    """PostgreSQL: finish ``n`` tasks in one statement — running -> succeeded fenced by
    attempt, their attempts closed, and their dependents counted down, those reaching zero
    going pending -> ready (the portable version takes four statements)."""
    rows = ", ".join(
        f"(CAST(:i{k} AS BIGINT), CAST(:a{k} AS INTEGER), CAST(:r{k} AS JSONB), "
        f"CAST(:s{k} AS TIMESTAMPTZ), CAST(:f{k} AS TIMESTAMPTZ))"
        for k in range(n)
    )
    sql = sa.text(
        f"""
        WITH v AS (
            SELECT * FROM (VALUES {rows}) AS v(id, attempt, result, started, finished)
        ), done AS (
            UPDATE tasks AS t SET status = 'succeeded', result = v.result,
                   started_at = v.started, finished_at = v.finished, lease_owner = NULL,
                   lease_expires_at = NULL, progress = 1.0, error = NULL
            FROM v
            WHERE t.id = v.id AND t.attempts = v.attempt AND t.status = 'running'
            RETURNING t.id, t.workflow_id, v.attempt, v.finished
        ), closed AS (
            UPDATE task_attempts AS a SET outcome = 'succeeded', finished_at = done.finished
            FROM done
            WHERE a.task_id = done.id AND a.attempt = done.attempt AND a.outcome = 'running'
        ), counts AS (
            SELECT d.task_id, count(*) AS n
            FROM task_dependencies d JOIN done ON d.depends_on_id = done.id
            GROUP BY d.task_id
        ), children AS (
            UPDATE tasks AS c SET deps_remaining = c.deps_remaining - counts.n,
                   status = CASE WHEN c.deps_remaining - counts.n <= 0 THEN 'ready'
                                 ELSE c.status END,
                   ready_at = CASE WHEN c.deps_remaining - counts.n <= 0 THEN :now
                                   ELSE c.ready_at END
            FROM counts
            WHERE c.id = counts.task_id AND c.status = 'pending'
            RETURNING c.id, c.status
        )
        SELECT 'done' AS kind, id, workflow_id FROM done
        UNION ALL
        SELECT 'ready', id, NULL FROM children WHERE status = 'ready'
        """
    )
    return sql.bindparams(sa.bindparam("now", type_=Timestamp), *outcome_bindparams(n))
