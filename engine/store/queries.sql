-- PostgreSQL's hot-path statements, loaded once by kiln.store.postgres (one "-- name:" block
-- each). Each is a single round trip doing what SQLite's twin in kiln.store.sqlite does in two
-- to four, with the same guards; the allowed transitions are listed in kiln.core.states.
-- "{queue_is_idle}" inside a block stands for that block's text (a scalar subquery).

-- name: mark_queued
-- ready|retrying -> queued for :ids; their runs go pending -> running.
WITH q AS (
    UPDATE tasks AS t SET status = 'queued', queued_at = :now, lease_expires_at = :lease,
           dispatch_count = t.dispatch_count + 1, not_before = NULL, waiting_reason = NULL
    WHERE t.id = ANY(CAST(:ids AS bigint[])) AND t.status IN ('ready', 'retrying')
      AND t.map_over IS NULL  -- a map task is expanded (kiln.store.maps), never sent
    RETURNING t.id, t.attempts, t.workflow_id, t.model_type, t.queue
), run AS (
    UPDATE workflows AS w SET status = 'running', started_at = :now
    WHERE w.id IN (SELECT workflow_id FROM q) AND w.status = 'pending'
)
SELECT * FROM q

-- name: queue_is_idle
-- No dispatchable task (other than :excluding) waits for a controller, and fewer than :cap
-- tasks are sent but not yet claimed.
SELECT NOT EXISTS (
    SELECT 1 FROM tasks AS t
    WHERE t.status IN ('ready', 'retrying')
      AND (t.not_before IS NULL OR t.not_before <= :now)
      AND t.id <> ALL(CAST(:excluding AS bigint[]))
      AND EXISTS (SELECT 1 FROM workflows AS w
                  WHERE w.id = t.workflow_id AND w.status IN ('pending', 'running'))
) AND (SELECT count(*) FROM (SELECT 1 FROM tasks AS t WHERE t.status = 'queued' LIMIT :cap) q)
      < :cap

-- name: insert_run
-- A run, its tasks and its edges in one statement. The tasks come as one JSON array (so one
-- statement serves any number of them); the edges name their tasks, joined to the ids the
-- task insert returns. On an idempotency-key conflict nothing is inserted (two racing
-- submissions with one key make one run; the loser's caller reads the winner's row).
--
-- With :lease set and the queue idle, the run's "direct" tasks (handler tasks with no
-- dependencies) are leased in the same statement: written 'queued' with that lease, the run
-- 'running'. Otherwise, with :notify, "wake" says whether controllers must be woken.
--
-- EVENTS: the one place outside the migrations' triggers that writes the events table. The
-- triggers record status changes of UPDATEs; this statement inserts rows already 'queued' and
-- 'running', so it writes the "ready -> queued" and "pending -> running" events the two
-- UPDATEs it saves would have made the triggers write, naming :actor (set behind a
-- transaction pooler, where the statement is a transaction of its own) or else kiln.actor.
WITH lease AS (
    SELECT CAST(:lease AS timestamptz) AS until
    WHERE CAST(:lease AS timestamptz) IS NOT NULL AND ({queue_is_idle})
), w AS (
    INSERT INTO workflows (name, status, on_error, priority, definition, idempotency_key,
                           idempotency_fingerprint, created_at, started_at, trace_context)
    SELECT :name, CASE WHEN lease.until IS NULL THEN 'pending' ELSE 'running' END,
           :on_error, :priority, :definition, :idempotency_key, :idempotency_fingerprint, :now,
           CASE WHEN lease.until IS NOT NULL THEN CAST(:now AS timestamptz) END,
           CAST(:trace_context AS text)
    FROM (SELECT 1) AS one LEFT JOIN lease ON true
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, status
), t AS (
    INSERT INTO tasks (workflow_id, name, handler, model_type, params, status, priority,
                       max_attempts, timeout_s, retry, deps_remaining, created_at, ready_at,
                       queued_at, lease_expires_at, dispatch_count, queue, map_over)
    SELECT w.id, r.name, r.handler, r.model_type, r.params,
           CASE WHEN r.direct AND lease.until IS NOT NULL THEN 'queued' ELSE r.status END,
           r.priority, r.max_attempts, r.timeout_s, r.retry, r.deps_remaining, :now,
           CASE WHEN r.status = 'ready' THEN CAST(:now AS timestamptz) END,
           CASE WHEN r.direct AND lease.until IS NOT NULL THEN CAST(:now AS timestamptz) END,
           CASE WHEN r.direct THEN lease.until END,
           CASE WHEN r.direct AND lease.until IS NOT NULL THEN 1 ELSE 0 END, r.queue,
           r.map_over
    FROM w LEFT JOIN lease ON true, jsonb_to_recordset(:tasks) AS r(
        name text, handler text, model_type text, params jsonb, status text,
        priority integer, max_attempts integer, timeout_s double precision, retry jsonb,
        deps_remaining integer, direct boolean, queue text, map_over text)
    RETURNING id, name, workflow_id, status
), e AS (
    INSERT INTO task_dependencies (task_id, depends_on_id)
    SELECT a.id, b.id
    FROM jsonb_to_recordset(:edges) AS x(task text, dep text)
    JOIN t a ON a.name = x.task JOIN t b ON b.name = x.dep
), ev AS (
    INSERT INTO events (entity, entity_id, workflow_id, from_status, to_status, attempt, at,
                        actor)
    SELECT 'task', t.id, t.workflow_id, 'ready', 'queued', 0, clock_timestamp(),
           NULLIF(COALESCE(CAST(:actor AS text), current_setting('kiln.actor', true)), '')
    FROM t WHERE t.status = 'queued'
    UNION ALL
    SELECT 'workflow', w.id, w.id, 'pending', 'running', NULL, clock_timestamp(),
           NULLIF(COALESCE(CAST(:actor AS text), current_setting('kiln.actor', true)), '')
    FROM w WHERE w.status = 'running'
)
-- "wake": whether to wake the controllers once this has committed (PostgresStore._run)
SELECT t.workflow_id, t.id, t.name, t.status,
       :notify AND EXISTS (SELECT 1 FROM t WHERE t.status = 'ready') AS wake
FROM t

-- name: insert_runs
-- Many runs, their tasks and their edges in one statement (Kiln.submit_many): insert_run
-- without the lease, as a batch is what a scheduling policy should order. :runs is a JSON
-- array of the runs' rows, each with its place "i"; :tasks and :edges name their run by that
-- place. The runs' ids are drawn from the sequence first, so that the tasks can name their run
-- before it is inserted. A run whose idempotency key was used already (before, or earlier in
-- the batch) is not inserted, nor are its tasks: "created" is false for it.
WITH r AS MATERIALIZED (
    SELECT r.*, nextval(pg_get_serial_sequence('workflows', 'id')) AS id
    FROM jsonb_to_recordset(:runs) AS r(i integer, name text, on_error text, priority integer,
                                        definition jsonb, idempotency_key text,
                                        idempotency_fingerprint text, trace_context text)
), w AS (
    INSERT INTO workflows (id, name, status, on_error, priority, definition, idempotency_key,
                           idempotency_fingerprint, created_at, trace_context)
    SELECT id, name, 'pending', on_error, priority, definition, idempotency_key,
           idempotency_fingerprint, :now, trace_context
    FROM r ORDER BY i
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id
), t AS (
    INSERT INTO tasks (workflow_id, name, handler, model_type, params, status, priority,
                       max_attempts, timeout_s, retry, deps_remaining, created_at, ready_at,
                       queue, map_over)
    SELECT w.id, x.name, x.handler, x.model_type, x.params, x.status, x.priority,
           x.max_attempts, x.timeout_s, x.retry, x.deps_remaining, :now,
           CASE WHEN x.status = 'ready' THEN CAST(:now AS timestamptz) END, x.queue, x.map_over
    FROM jsonb_to_recordset(:tasks) AS x(
        run integer, name text, handler text, model_type text, params jsonb, status text,
        priority integer, max_attempts integer, timeout_s double precision, retry jsonb,
        deps_remaining integer, queue text, map_over text)
    JOIN r ON r.i = x.run JOIN w ON w.id = r.id
    RETURNING id, name, workflow_id, status
), e AS (
    INSERT INTO task_dependencies (task_id, depends_on_id)
    SELECT a.id, b.id
    FROM jsonb_to_recordset(:edges) AS x(run integer, task text, dep text)
    JOIN r ON r.i = x.run
    JOIN t a ON a.workflow_id = r.id AND a.name = x.task
    JOIN t b ON b.workflow_id = r.id AND b.name = x.dep
)
-- "wake": whether to wake the controllers once this has committed (PostgresStore._run)
SELECT r.i, r.id, r.id IN (SELECT id FROM w) AS created,
       :notify AND EXISTS (SELECT 1 FROM t WHERE t.status = 'ready') AS wake
FROM r ORDER BY r.i

-- name: claim
-- queued -> running for each (:ids, :prev attempts). A lease can commit just after its run was
-- paused (the pause looked for queued tasks before the lease committed), so the claim is the
-- guard: a task of a paused run does not start but goes back to ready, as the pause would have
-- put it. Both updates read the run's status from the same snapshot, so each task takes
-- exactly one of them.
WITH local AS (
    -- This transaction's settings (set_config(..., true): SET LOCAL), made before any row
    -- changes, since every update reads "want", which joins them.
    -- Commit the claim without waiting for its WAL flush. A claim lost in a crash re-runs the
    -- task, as at-least-once delivery allows; the finish commits synchronously and flushes
    -- the claim's WAL before its own, so nothing durable ever depends on a lost claim.
    -- :actor (set behind a transaction pooler, where the statement is a transaction of its
    -- own) names who claims for the events the triggers write at the end of the statement.
    SELECT set_config('synchronous_commit', 'off', true),
           CASE WHEN CAST(:actor AS text) IS NOT NULL
                THEN set_config('kiln.actor', :actor, true) END
), want AS (
    SELECT want.* FROM local,
         unnest(CAST(:ids AS bigint[]), CAST(:prev AS integer[])) AS want(id, prev)
), c AS (
    UPDATE tasks AS t SET status = 'running', attempts = t.attempts + 1,
           lease_owner = :worker, lease_expires_at = :lease, started_at = :now,
           progress = NULL, progress_message = NULL
    FROM want, workflows AS w
    WHERE t.id = want.id AND t.attempts = want.prev AND t.status = 'queued'
      AND w.id = t.workflow_id AND w.status <> 'paused'
    RETURNING t.id, t.attempts, t.workflow_id, t.name, t.handler, t.model_type, t.params,
              t.timeout_s, t.max_attempts, t.retry, t.resumes, t.state, w.trace_context
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

-- name: finish
-- Finish tasks in one statement: running -> succeeded fenced by attempt, their attempts
-- closed, and their dependents counted down, those reaching zero going pending -> ready.
-- The tasks come as parallel arrays (:ids, :attempts, :results, :started, :finished).
WITH v AS (
    SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS integer[]),
                         CAST(:results AS jsonb[]), CAST(:started AS timestamptz[]),
                         CAST(:finished AS timestamptz[]))
        AS v(id, attempt, result, started, finished)
), done AS (
    UPDATE tasks AS t SET status = 'succeeded', result = v.result,
           started_at = v.started, finished_at = v.finished, lease_owner = NULL,
           lease_expires_at = NULL, progress = 1.0, error = NULL
    FROM v
    WHERE t.id = v.id AND t.attempts = v.attempt AND t.status = 'running'
    RETURNING t.id, t.workflow_id, t.mapped_from, v.attempt, v.finished
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
SELECT 'done' AS kind, id, workflow_id, mapped_from FROM done
UNION ALL
SELECT 'readied', id, NULL, NULL FROM children WHERE children.status = 'ready'

-- name: wake
-- Wake controllers waiting on LISTEN: a transaction of its own, sent once the work it announces
-- has committed (PostgresStore._run). Not in that work's transaction: a transaction that
-- notifies holds PostgreSQL's one notify-queue lock through its commit, synchronous WAL flush
-- included, so notifying commits would each wait for the others' fsync. A transaction that
-- only notifies writes no WAL before its commit record, which PostgreSQL then does not flush:
-- it holds the lock for no fsync (a wake-up lost in a crash only leaves the controllers to
-- their next poll).
NOTIFY kiln_ready
