"""Chaos driver: Kiln's Procfile processes on a throwaway PostgreSQL and Redis, a steady stream
of workflows, and faults injected meanwhile; then invariants checked straight from the database.

    python -m tests.chaos.driver --seconds 600        # longer on demand
    python -m tests.chaos.driver --seconds 300 --worker-outage 60

Faults: SIGKILL a random worker, SIGKILL a controller, SIGKILL a TaskInstance, crash-restart
PostgreSQL, restart (empty) or flush Redis, and once per run a worker outage (every worker
stopped or SIGKILLed, started again after ``--worker-outage`` seconds). Every killed process is
started again after a short pause, as a supervisor would.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

from tests.chaos.services import ThrowawayPostgres, ThrowawayRedis, free_port

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = ("succeeded", "failed", "cancelled")
FAULTS = (
    "kill_worker",
    "kill_controller",
    "kill_instance",
    "restart_postgres",
    "restart_redis",
    "flush_redis",
    "worker_outage",
)
ONCE = ("worker_outage",)  # long: once per run leaves time for the others
MODEL_TYPE = "chaos-llm"


@dataclass
class Summary:
    seconds: float = 0.0
    workflows_submitted: int = 0
    submit_retries: int = 0
    faults: collections.Counter = field(default_factory=collections.Counter)
    recoveries: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    pipelines: int = 0
    operations: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    violations: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [
            f"chaos run: {self.seconds:.0f}s",
            f"  workflows submitted: {self.workflows_submitted} (HTTP retries during faults: {self.submit_retries})",
            f"  workflow outcomes:   {dict(sorted(self.outcomes.items()))}",
            f"  pipelines: {self.pipelines}; operations: {dict(sorted(self.operations.items()))}",
            "  faults injected:     "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items())),
            "  recoveries observed: "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.recoveries.items())),
            f"  tasks quarantined:   {self.quarantined}",
            f"  invariant violations: {len(self.violations)}",
        ]
        lines += [f"    - {v}" for v in self.violations]
        return "\n".join(lines)


class Proc:
    """One supervised process: started, SIGKILLed and started again."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name, self.args, self.env, self.logs = name, args, env, logs
        self.popen: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.logs / f"{self.name}.log", "ab")  # noqa: SIM115
        self.popen = subprocess.Popen(
            self.args, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def kill(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()

    def ensure_running(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            self.start()

    def exited(self) -> int | None:
        """The exit code if the process is not running (the driver restarts what it kills at
        once, so a process found exited here died on its own)."""
        return None if self.popen is None else self.popen.poll()

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def kiln_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "kiln.cli.main", *args]


def random_workflow(rng: random.Random, n: int) -> dict[str, Any]:
    """A small random DAG whose tasks all return values (so a missing result is visible)."""
    tasks: list[dict[str, Any]] = []
    for i in range(rng.randint(2, 7)):
        deps = sorted(rng.sample([t["name"] for t in tasks], k=min(len(tasks), rng.randint(0, 2))))
        kind = rng.random()
        if kind < 0.15:
            task = {
                "model_type": MODEL_TYPE,
                "params": {
                    "input_data": {"prompt": f"row {i}"},
                    "metadata": {
                        "input_tokens": rng.randint(50, 2000),
                        "output_tokens": rng.randint(5, 200),
                    },
                },
            }
        elif kind < 0.45:
            task = {
                "handler": "tests.handlers:sleep",
                "params": {"seconds": round(rng.uniform(0.05, 0.6), 2), "value": i},
            }
        elif kind < 0.6:
            task = {"handler": "tests.handlers:fail_until", "params": {"succeed_on": 2}}
        else:
            params: dict[str, Any] = {"i": i}
            if deps:
                params["upstream"] = {d: "{{" + d + ".result}}" for d in deps}
            task = {"handler": "tests.handlers:echo", "params": params}
        tasks.append({"name": f"t{i}", "depends_on": deps, "max_attempts": 10, **task})
    return {"name": f"chaos-{n}", "on_error": "continue", "tasks": tasks}


class Chaos:
    def __init__(
        self,
        seconds: float,
        seed: int,
        workdir: Path,
        fault_every: tuple[float, float] = (3.0, 7.0),
        worker_outage_s: float = 60.0,
        dispatch_timeout_s: float = 4.0,
    ):
        self.seconds, self.rng, self.workdir, self.fault_every = (
            seconds,
            random.Random(seed),
            workdir,
            fault_every,
        )
        self.worker_outage_s = worker_outage_s
        self.dispatch_timeout_s = dispatch_timeout_s
        self.summary = Summary()
        self.workflow_ids: list[int] = []
        self.pipeline_ids: list[int] = []
        self.operations: list[str] = []
        self.stop_submitting = threading.Event()
        self.procs: dict[str, list[Proc]] = {}

    # --- set-up ---------------------------------------------------------------------------

    def start_services(self) -> None:
        self.pg = ThrowawayPostgres()
        self.redis = ThrowawayRedis()
        self.db_url = self.pg.url
        self.web_port = free_port()
        self.env = {
            **os.environ,
            "KILN_DATABASE_URL": self.db_url,
            "KILN_BROKER_URL": self.redis.url,
            "KILN_IMPORTS": "tests.handlers",
            "KILN_LEASE_S": "3",
            "KILN_DISPATCH_TIMEOUT_S": str(self.dispatch_timeout_s),
            "KILN_RETRY_BASE_S": "0.1",
            "KILN_RETRY_MAX_S": "1",
            "KILN_CONTROLLER_POLL_S": "0.2",
            "KILN_LOG_LEVEL": "WARNING",
            "KILN_INSTANCE_LOST_AFTER_S": "3",
            "PYTHONPATH": str(ROOT),
        }
        subprocess.run(
            kiln_cmd("db", "upgrade"), env=self.env, cwd=ROOT, check=True, capture_output=True
        )
        logs = self.workdir
        web = [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers",
            "2",
            "--threads",
            "4",
            "--bind",
            f"127.0.0.1:{self.web_port}",
            "kiln.web.app:create_app()",
        ]
        self.procs = {
            "web": [Proc("web", web, self.env, logs)],
            "worker": [
                Proc(f"worker{i}", kiln_cmd("worker", "--threads", "4"), self.env, logs)
                for i in range(2)
            ],
            "controller": [
                Proc(f"controller{i}", kiln_cmd("controller"), self.env, logs) for i in range(2)
            ],
            "instance": [
                Proc(
                    f"instance{i}",
                    kiln_cmd(
                        "instance",
                        "--model-type",
                        MODEL_TYPE,
                        "--port",
                        str(free_port()),
                        "--kiln-url",
                        f"http://127.0.0.1:{self.web_port}",
                        "--speed",
                        "0.003",
                        "--max-concurrency",
                        "4",
                        "--heartbeat-interval",
                        "0.5",
                    ),
                    self.env,
                    logs,
                )
                for i in range(2)
            ],
        }
        for group in self.procs.values():
            for p in group:
                p.start()
        self.base = f"http://127.0.0.1:{self.web_port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(self.base + "/health", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("web did not come up:\n" + self.logs())
            time.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
            for p in sorted(self.workdir.glob("*.log"))
        )

    # --- load -----------------------------------------------------------------------------

    def submit(self, definition: dict[str, Any]) -> None:
        key = uuid.uuid4().hex
        for attempt in range(120):
            try:
                r = requests.post(
                    self.base + "/workflows",
                    json=definition,
                    headers={"Idempotency-Key": key},
                    timeout=5,
                )
                if r.status_code in (200, 201):
                    self.workflow_ids.append(r.json()["id"])
                    self.summary.workflows_submitted += 1
                    return
                if r.status_code < 500:
                    raise RuntimeError(f"submission refused: {r.status_code} {r.text}")
            except requests.RequestException:
                pass
            self.summary.submit_retries += 1
            time.sleep(min(1.0, 0.05 * (attempt + 1)))
        raise RuntimeError("could not submit a workflow for a minute")

    def submitter(self) -> None:
        n = 0
        next_pipeline = 0.0
        while not self.stop_submitting.is_set():
            self.submit(random_workflow(self.rng, n))
            n += 1
            if time.monotonic() >= next_pipeline:
                self.new_pipeline(n)
                next_pipeline = time.monotonic() + self.rng.uniform(5, 10)
            elif self.pipeline_ids and self.rng.random() < 0.15:
                self.operate(
                    self.rng.choice(self.pipeline_ids), self.rng.choice(("stop", "resume"))
                )
            self.stop_submitting.wait(self.rng.uniform(0.1, 0.4))

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """An API call retried through faults (5xx, connection errors) for up to a minute."""
        for attempt in range(120):
            try:
                r = requests.request(method, self.base + path, json=body, timeout=5)
                if r.status_code < 500:
                    r.raise_for_status()
                    return r.json()
            except requests.ConnectionError:
                pass
            except requests.Timeout:
                pass
            self.summary.submit_retries += 1
            time.sleep(min(1.0, 0.05 * (attempt + 1)))
        raise RuntimeError(f"{method} {path} kept failing for a minute")

    def new_pipeline(self, n: int) -> None:
        ctx = self.call(
            "POST",
            "/contexts",
            {"name": f"chaos-{n}", "rows": [f"r{i}" for i in range(24)], "num_shards": 12},
        )
        p = self.call(
            "POST",
            "/pipelines",
            {
                "context_id": ctx["id"],
                "pipeline_name": f"chaos-{n}",
                "pipeline_type": "python",
                "model_config": {"handler": "tests.handlers:tag_rows", "delay_s": 0.4},
            },
        )
        self.pipeline_ids.append(p["id"])

    def operate(self, pipeline_id: int, operation: str) -> str:
        op = self.call("POST", f"/dispatcher/{operation}-pipeline", {"pipeline_id": pipeline_id})
        self.operations.append(op["ic_id"])
        return op["ic_id"]

    def finish_pipelines(self, timeout: float) -> None:
        """Resume whatever the run left stopped, until every pipeline completed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = [
                p
                for p in (self.call("GET", f"/pipelines/{i}") for i in self.pipeline_ids)
                if p["status"] != "completed"
            ]
            if not pending:
                return
            for p in pending:
                if p["status"] == "stopped":
                    self.operate(p["id"], "resume")
            time.sleep(1.0)

    # --- faults ---------------------------------------------------------------------------

    def inject(self, kind: str) -> None:
        if kind == "kill_worker":
            victim = self.rng.choice(self.procs["worker"])
        elif kind == "kill_controller":
            victim = self.rng.choice(self.procs["controller"])
        elif kind == "kill_instance":
            victim = self.rng.choice(self.procs["instance"])
        elif kind == "worker_outage":
            self.worker_outage()
            victim = None
        elif kind == "restart_postgres":
            self.pg.restart()
            victim = None
        elif kind == "restart_redis":
            self.redis.restart()
            victim = None
        else:
            self.redis.flush()
            victim = None
        if victim is not None:
            victim.kill()
            time.sleep(self.rng.uniform(0.2, 1.5))
            victim.start()
        self.summary.faults[kind] += 1

    def worker_outage(self) -> None:
        """Every worker down for ``worker_outage_s`` while work keeps arriving: stopped
        cleanly (they deregister) or SIGKILLed (their heartbeats just stop), at random."""
        workers = self.procs["worker"]
        for p in workers:
            if self.rng.random() < 0.5:
                p.stop()
            else:
                p.kill()
        time.sleep(self.worker_outage_s)
        for p in workers:
            p.start()

    # --- the run --------------------------------------------------------------------------

    def run(self) -> Summary:
        started = time.monotonic()
        self.start_services()
        try:
            submitter = threading.Thread(target=self.submitter, daemon=True)
            submitter.start()
            kinds = list(FAULTS)
            self.rng.shuffle(kinds)
            i = 0
            while time.monotonic() - started < self.seconds:
                time.sleep(self.rng.uniform(*self.fault_every))
                self.revive_the_dead()
                again = [k for k in FAULTS if k not in ONCE]
                self.inject(kinds[i] if i < len(kinds) else self.rng.choice(again))
                i += 1
            self.stop_submitting.set()
            submitter.join(timeout=120)
            self.revive_the_dead()
            self.drain(timeout=180)
            self.finish_pipelines(timeout=120)
            self.check_invariants()
        finally:
            self.summary.seconds = time.monotonic() - started
            for group in self.procs.values():
                for p in group:
                    p.stop()
            self.redis.stop()
            self.pg.stop()
        return self.summary

    def engine(self) -> sa.Engine:
        return sa.create_engine(
            self.db_url.replace("postgresql://", "postgresql+psycopg://"), pool_pre_ping=True
        )

    def drain(self, timeout: float) -> None:
        eng = self.engine()
        deadline = time.monotonic() + timeout
        ids = list(self.workflow_ids)
        try:
            while time.monotonic() < deadline:
                with eng.connect() as c:
                    left = c.execute(
                        sa.text(
                            "SELECT count(*) FROM workflows WHERE id = ANY(:ids) AND status NOT IN :t"
                        ).bindparams(sa.bindparam("t", expanding=True)),
                        {"ids": ids, "t": list(TERMINAL)},
                    ).scalar()
                if left == 0:
                    return
                time.sleep(0.5)
        finally:
            eng.dispose()

    def revive_the_dead(self) -> None:
        """A Kiln process must survive every fault but its own SIGKILL: one found exited is a
        violation (then it is started again, so the run goes on)."""
        for group in self.procs.values():
            for p in group:
                rc = p.exited()
                if rc is not None:
                    self.summary.violations.append(
                        f"{p.name} exited on its own (exit code {rc}); see {p.name}.log"
                    )
                p.ensure_running()

    def check_invariants(self) -> None:
        eng = self.engine()
        v = self.summary.violations
        with eng.connect() as c:

            def q(sql: str, **params: Any) -> list[Any]:
                return c.execute(sa.text(sql), params).all()

            ids = list(self.workflow_ids)
            not_done = q(
                "SELECT id, status FROM workflows WHERE id = ANY(:ids) AND status NOT IN ('succeeded','failed','cancelled')",
                ids=ids,
            )
            for r in not_done:
                detail = q(
                    "SELECT name, status, attempts, dispatch_count, deps_remaining, lease_expires_at "
                    "FROM tasks WHERE workflow_id = :w ORDER BY id",
                    w=r.id,
                )
                v.append(
                    f"workflow {r.id} never finished (still {r.status}): {[tuple(d) for d in detail]}"
                )
            missing = set(ids) - {
                r.id for r in q("SELECT id FROM workflows WHERE id = ANY(:ids)", ids=ids)
            }
            v += [f"submitted workflow {i} is not in the database" for i in sorted(missing)]
            twice = q(
                "SELECT task_id, count(*) n FROM task_attempts WHERE outcome = 'succeeded' GROUP BY task_id HAVING count(*) > 1"
            )
            v += [f"task {r.task_id} has {r.n} successful attempts" for r in twice]
            no_result = q(
                "SELECT t.id FROM tasks t WHERE t.status = 'succeeded' AND (t.result IS NULL OR t.result = 'null'::jsonb "
                "OR NOT EXISTS (SELECT 1 FROM task_attempts a WHERE a.task_id = t.id AND a.attempt = t.attempts AND a.outcome = 'succeeded'))"
            )
            v += [f"succeeded task {r.id} has no recorded result/attempt" for r in no_result]
            # Quarantine is for messages no live worker can process; every chaos task is
            # processable, so a quarantined one means an outage or fault was counted as poison.
            quarantined = q("SELECT id, error FROM tasks WHERE error LIKE 'quarantined:%'")
            v += [f"task {r.id} was quarantined: {r.error}" for r in quarantined]
            self.summary.quarantined = len(quarantined)
            tables = {
                r[0] for r in q("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            }
            if "operations" in tables:
                stuck = q("SELECT ic_id FROM operations WHERE status = 'processing'")
                v += [f"operation {r.ic_id} stuck in processing" for r in stuck]
                # A stop or resume may be refused (the pipeline was already completed or not
                # stopped); failing for any other reason is a bug the faults uncovered.
                broken = q(
                    "SELECT ic_id, error FROM operations WHERE status = 'failed' "
                    "AND (error IS NULL OR error NOT LIKE 'cannot %')"
                )
                v += [f"operation {r.ic_id} failed, not refused: {r.error}" for r in broken]
            for pid in self.pipeline_ids:
                p = self.call("GET", f"/pipelines/{pid}")
                done = q(
                    "SELECT count(*) FROM tasks t JOIN pipelines p ON p.workflow_id = t.workflow_id "
                    "WHERE p.id = :p AND t.status = 'succeeded'",
                    p=pid,
                )[0][0]
                if p["shards_completed"] != done:
                    v.append(
                        f"pipeline {pid}: shards_completed {p['shards_completed']} but {done} shard tasks succeeded"
                    )
                if p["status"] != "completed":
                    v.append(
                        f"pipeline {pid} did not complete (still {p['status']}, {p['shards_completed']}/{p['num_shards']})"
                    )
            self.summary.pipelines = len(self.pipeline_ids)
            self.summary.operations = dict(
                q("SELECT operation || ':' || status, count(*) FROM operations GROUP BY 1")
            )
            self.summary.outcomes = dict(
                q(
                    "SELECT status, count(*) FROM workflows WHERE id = ANY(:ids) GROUP BY status",
                    ids=ids,
                )
            )
            self.summary.recoveries = {
                "lost attempts retried": q(
                    "SELECT count(*) FROM task_attempts WHERE outcome = 'lost'"
                )[0][0],
                "messages re-sent": q(
                    "SELECT coalesce(sum(dispatch_count - attempts), 0) FROM tasks WHERE dispatch_count > attempts"
                )[0][0],
                "stale results refused": q(
                    "SELECT count(*) FROM task_attempts WHERE outcome = 'stale'"
                )[0][0],
            }
        eng.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", "--duration", type=float, default=180)
    ap.add_argument(
        "--worker-outage", type=float, default=60, help="seconds every worker is down, once"
    )
    ap.add_argument(
        "--dispatch-timeout",
        type=float,
        default=4,
        help="KILN_DISPATCH_TIMEOUT_S; an outage past 20 of them quarantined work before",
    )
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--workdir", type=Path, default=None)
    opts = ap.parse_args()
    workdir = opts.workdir or Path(f"/tmp/kiln-chaos-{os.getpid()}")
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"seed {opts.seed}; logs in {workdir}", flush=True)
    summary = Chaos(
        opts.seconds,
        opts.seed,
        workdir,
        worker_outage_s=opts.worker_outage,
        dispatch_timeout_s=opts.dispatch_timeout,
    ).run()
    print(summary.render())
    print(
        json.dumps(
            {
                "violations": len(summary.violations),
                "quarantined": summary.quarantined,
                "faults": dict(summary.faults),
            }
        )
    )
    raise SystemExit(1 if summary.violations else 0)


if __name__ == "__main__":
    main()
