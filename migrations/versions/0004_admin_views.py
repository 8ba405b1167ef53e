"""admin views: the dispatch queue, running and stuck tasks, instance load, prediction error,
live processes

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 12:00:00.000000

Views answer the questions an operator asks at 3 a.m. (docs/admin-sql.md shows them in use).
They are not in SQLAlchemy's metadata, so ``alembic check`` does not compare them; a test
queries each one on PostgreSQL. They are PostgreSQL-only (intervals, ``now()``,
``percentile_cont``, ``COMMENT ON VIEW``): the embedded SQLite database is for one person's
laptop, where ``kiln status`` and the API answer the same questions, so on SQLite this
revision changes nothing.

A "live" instance here is one whose reported status is ``running``: the controller marks an
instance ``lost`` once it misses heartbeats for ``KILN_INSTANCE_LOST_AFTER_S``, so the view
agrees with routing within one controller pass.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

LIVE_INSTANCE = "i.status = 'running'"

VIEWS: dict[str, tuple[str, str]] = {
    "dispatch_queue": (
        f"""
SELECT CASE WHEN q.eligible THEN row_number() OVER (
           PARTITION BY q.eligible ORDER BY q.priority DESC, q.ready_at, q.task_id) END
           AS position,
       q.*
FROM (
    SELECT t.id AS task_id, t.name AS task_name, t.workflow_id, w.name AS workflow_name,
           t.status, t.priority, t.handler, t.model_type, t.attempts, t.max_attempts,
           t.ready_at, now() - t.ready_at AS waiting_for, t.not_before, t.predicted_s,
           (t.not_before IS NULL OR t.not_before <= now())
           AND (t.handler IS NOT NULL OR EXISTS (
               SELECT 1 FROM instance_capabilities c JOIN instances i ON i.id = c.instance_id
               WHERE c.capability = t.model_type AND {LIVE_INSTANCE})) AS eligible,
           CASE
               WHEN t.not_before > now() THEN 'retry backoff until ' || t.not_before::text
               WHEN t.handler IS NULL AND NOT EXISTS (
                   SELECT 1 FROM instance_capabilities c JOIN instances i ON i.id = c.instance_id
                   WHERE c.capability = t.model_type AND {LIVE_INSTANCE})
                   THEN 'no live instance serves model_type ' || t.model_type
               ELSE t.waiting_reason
           END AS held_because,
           (SELECT s.policy FROM scheduler_state s WHERE s.id = 1) AS policy
    FROM tasks t
    JOIN workflows w ON w.id = t.workflow_id
    WHERE t.status IN ('ready', 'retrying') AND w.status IN ('pending', 'running')
) q
""",
        "Tasks waiting to be dispatched (ready or retrying, in runs that are not paused). "
        "position: the order the controller takes eligible tasks under FIFO (priority, then "
        "ready_at, then id); other policies re-rank eligible tasks (POST "
        "/scheduler/schedule-next shows their order). held_because: why an ineligible task "
        "waits.",
    ),
    "running_tasks": (
        """
SELECT t.id AS task_id, t.name AS task_name, t.workflow_id, w.name AS workflow_name,
       t.attempts AS attempt, t.max_attempts, t.lease_owner AS worker,
       p.hostname AS worker_host, p.pid AS worker_pid, t.model_type, t.instance_id,
       i.name AS instance_name, i.url AS instance_url, t.started_at,
       now() - t.started_at AS running_for, t.timeout_s, t.predicted_s, t.progress,
       t.progress_message, t.lease_expires_at, t.lease_expires_at < now() AS lease_expired
FROM tasks t
JOIN workflows w ON w.id = t.workflow_id
LEFT JOIN processes p ON p.id = t.lease_owner
LEFT JOIN instances i ON i.id = t.instance_id
WHERE t.status = 'running'
""",
        "Tasks running now: which worker (process, host, pid) and TaskInstance, since when, "
        "for how long, progress, and whether the lease has expired.",
    ),
    "stuck_tasks": (
        f"""
SELECT t.id AS task_id, t.name AS task_name, t.workflow_id, t.status,
       'lease_expired' AS reason,
       CASE t.status
           WHEN 'running' THEN 'worker ' || COALESCE(t.lease_owner, '?')
               || ' stopped extending its lease during attempt ' || t.attempts
           ELSE 'sent ' || t.dispatch_count || ' time(s) and not claimed by any worker'
       END AS detail,
       t.lease_expires_at AS since, now() - t.lease_expires_at AS stuck_for
FROM tasks t
WHERE t.status IN ('queued', 'running') AND t.lease_expires_at < now()
UNION ALL
SELECT t.id, t.name, t.workflow_id, t.status, 'no_instance',
       'no live instance serves model_type ' || t.model_type,
       t.ready_at, now() - t.ready_at
FROM tasks t
JOIN workflows w ON w.id = t.workflow_id AND w.status IN ('pending', 'running')
WHERE t.status IN ('ready', 'retrying') AND t.handler IS NULL AND t.model_type IS NOT NULL
  AND NOT EXISTS (
      SELECT 1 FROM instance_capabilities c JOIN instances i ON i.id = c.instance_id
      WHERE c.capability = t.model_type AND {LIVE_INSTANCE})
UNION ALL
SELECT t.id, t.name, t.workflow_id, t.status, 'failed_dependency',
       'depends on ' || d.name || ' (task ' || d.id || '), which is ' || d.status,
       COALESCE(d.finished_at, d.created_at), now() - COALESCE(d.finished_at, d.created_at)
FROM tasks t
JOIN task_dependencies e ON e.task_id = t.id
JOIN tasks d ON d.id = e.depends_on_id
WHERE t.status = 'pending' AND d.status IN ('failed', 'cancelled', 'upstream_failed')
""",
        "Tasks that are not moving, one row per reason: lease_expired (worker dead or hung, "
        "or message lost; the controller recovers these within seconds, so rows that stay "
        "mean no controller runs), no_instance (model_type nobody live serves), "
        "failed_dependency (pending on a dependency that can no longer succeed).",
    ),
    "prediction_error": (
        """
SELECT t.model_type, count(*) AS tasks,
       avg(t.predicted_s) AS mean_predicted_s, avg(t.actual_s) AS mean_actual_s,
       avg(t.actual_s - t.predicted_s) AS mean_error_s,
       avg(abs(t.actual_s - t.predicted_s)) AS mean_abs_error_s,
       avg(abs(t.actual_s - t.predicted_s) / NULLIF(t.actual_s, 0)) AS mean_abs_pct_error,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY abs(t.actual_s - t.predicted_s))
           AS p50_abs_error_s,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY abs(t.actual_s - t.predicted_s))
           AS p90_abs_error_s,
       max(t.finished_at) AS last_finished_at
FROM tasks t
WHERE t.model_type IS NOT NULL AND t.predicted_s IS NOT NULL AND t.actual_s IS NOT NULL
GROUP BY t.model_type
""",
        "Prediction error per model type over finished tasks with both predicted_s and "
        "actual_s: mean_error_s > 0 means tasks run slower than predicted; "
        "mean_abs_pct_error is relative to the actual time.",
    ),
    "live_processes": (
        """
SELECT p.kind, p.id, p.hostname, p.pid, p.concurrency, p.started_at, p.heartbeat_at,
       now() - p.heartbeat_at AS heartbeat_age,
       now() - p.heartbeat_at < interval '15 seconds' AS alive,
       (SELECT count(*) FROM tasks t WHERE t.status = 'running' AND t.lease_owner = p.id)
           AS running_tasks
FROM processes p
WHERE p.stopped_at IS NULL
""",
        "Kiln processes that did not stop cleanly: alive when they heartbeated within 15 s "
        "(workers every KILN_LEASE_S/3, controllers every 2 s); the others died.",
    ),
}

# 0003's instance_load with columns appended (CREATE OR REPLACE VIEW may only append).
INSTANCE_LOAD_V2 = """
CREATE OR REPLACE VIEW instance_load AS
SELECT i.id, i.name, i.model_type, i.hardware, i.status, i.slots, i.heartbeat_at,
       COUNT(t.id) AS kiln_tasks_in_flight,
       COALESCE(SUM(t.predicted_s), 0) AS predicted_work_s,
       i.speed_factor, i.active_tasks, i.queue_size,
       now() - i.heartbeat_at AS heartbeat_age,
       COUNT(t.id)::float8 / NULLIF(i.slots, 0) AS utilisation,
       COALESCE(SUM(t.predicted_s), 0) * i.speed_factor / GREATEST(i.slots, 1)
           AS predicted_backlog_s,
       (SELECT count(*) FROM tasks r
        WHERE r.status IN ('ready', 'retrying') AND r.model_type = i.model_type)
           AS ready_for_model_type
FROM instances i
LEFT JOIN tasks t ON t.instance_id = i.id AND t.status = 'running'
GROUP BY i.id, i.name, i.model_type, i.hardware, i.status, i.slots, i.heartbeat_at,
         i.speed_factor, i.active_tasks, i.queue_size
"""
# 0003's definition, restored on downgrade (a migration does not import another one).
INSTANCE_LOAD_V1 = """
CREATE VIEW instance_load AS
SELECT i.id, i.name, i.model_type, i.hardware, i.status, i.slots, i.heartbeat_at,
       COUNT(t.id) AS kiln_tasks_in_flight,
       COALESCE(SUM(t.predicted_s), 0) AS predicted_work_s,
       i.speed_factor, i.active_tasks, i.queue_size
FROM instances i
LEFT JOIN tasks t ON t.instance_id = i.id AND t.status = 'running'
GROUP BY i.id, i.name, i.model_type, i.hardware, i.status, i.slots, i.heartbeat_at,
         i.speed_factor, i.active_tasks, i.queue_size
"""
INSTANCE_LOAD_COMMENT = (
    "Per instance: Kiln tasks running on it against its slots (utilisation), their predicted "
    "work in seconds and the backlog that means on this instance (scaled by its speed "
    "factor, spread over its slots), heartbeat age, and ready tasks of its model type."
)
INSTANCE_LOAD_V1_COMMENT = (
    "Per instance: Kiln tasks running on it against its slots, and their predicted work in seconds."
)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # see the module docstring: the admin views are PostgreSQL-only
    for name, (sql, comment) in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {sql}")
        op.execute(f"COMMENT ON VIEW {name} IS {_quote(comment)}")
    op.execute(INSTANCE_LOAD_V2)
    op.execute(f"COMMENT ON VIEW instance_load IS {_quote(INSTANCE_LOAD_COMMENT)}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.execute("DROP VIEW IF EXISTS instance_load")
    op.execute(INSTANCE_LOAD_V1)
    op.execute(f"COMMENT ON VIEW instance_load IS {_quote(INSTANCE_LOAD_V1_COMMENT)}")
