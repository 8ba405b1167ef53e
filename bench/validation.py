"""What one large submission costs the web process (a benchmark, not a test).

Two requests that used to take a gunicorn worker to 2.3 GB, because validating a chain of
tasks kept every task's set of ancestors:

* **chain**: ``POST /workflows`` with 10,000 tasks, each depending on the one before, every
  other one referencing its grandparent's result (~850 KB of JSON, under the 1 MiB limit);
* **pipeline**: ``POST /contexts {"rows": [1], "num_shards": 10000}``, then ``POST
  /pipelines`` on it (a backing workflow of 10,000 chained shard tasks).

Each runs against a fresh gunicorn (one worker, the Procfile's command) on a fresh PostgreSQL
database, after one small warm-up request of the same kind, and prints the wall time of the
submission as the client sees it, the worker's CPU time for it, and how far it raised the
worker's peak resident memory (``VmHWM`` minus ``VmRSS`` before the request, from ``/proc``). Targets: under 1 s and under
100 MB each.

    python bench/validation.py [--tasks 10000] [--shards 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import fresh_database  # noqa: E402

DB = "kiln_bench_validation"
HANDLER = "kiln.workers.bench_handlers:noop"


def chain(n: int) -> dict[str, Any]:
    tasks = []
    for i in range(n):
        task: dict[str, Any] = {"name": f"t{i}", "handler": HANDLER}
        if i:
            task["depends_on"] = [f"t{i - 1}"]
        if i >= 2 and i % 2:
            task["params"] = {"x": f"{{{{t{i - 2}.result}}}}"}
        tasks.append(task)
    return {"name": f"chain of {n}", "tasks": tasks}


def memory_kb(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {
        line.split(":")[0]: int(line.split()[1])
        for line in status
        if line.startswith(("VmRSS", "VmHWM"))
    }


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (less disturbed by a busy machine than
    wall time; PostgreSQL's own work is not in it)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """gunicorn with one worker on a free port; ``worker`` is the worker's pid."""

    def __init__(self, database_url: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {
            **os.environ,
            "KILN_DATABASE_URL": database_url,
            "KILN_IMPORTS": "kiln.workers.bench_handlers",
            "KILN_API_TOKEN": "",
            "KILN_LOG_LEVEL": "ERROR",
        }
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "--workers=1",
                "--threads=4",
                f"--bind=127.0.0.1:{self.port}",
                "--timeout=120",
                "kiln.web.app:create_app()",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.request("GET", "/health")
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("gunicorn did not start") from None
                time.sleep(0.1)
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        self.worker = int(children.split()[0])

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def measure(server: Server, steps: list[tuple[str, str, Any]]) -> tuple[float, float, float]:
    """Run ``steps`` (each must succeed); return (seconds, the worker's CPU seconds, MB added
    to the worker's peak)."""
    before = memory_kb(server.worker)["VmRSS"]
    cpu = cpu_s(server.worker)
    started = time.perf_counter()
    for method, path, body in steps:
        status, answer = server.request(method, path, body)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: {status} {answer}")
    seconds = time.perf_counter() - started
    cpu = cpu_s(server.worker) - cpu
    return seconds, cpu, (memory_kb(server.worker)["VmHWM"] - before) / 1024


def bench_chain(url: str, n: int) -> tuple[float, float, float, int]:
    server = Server(url)
    try:
        server.request("POST", "/workflows", chain(3))  # warm-up: imports, pool, JIT caches
        body = chain(n)
        size = len(json.dumps(body, separators=(",", ":")))
        return (*measure(server, [("POST", "/workflows", body)]), size)
    finally:
        server.close()


def bench_pipeline(url: str, shards: int) -> tuple[float, float, float, float]:
    server = Server(url)
    try:

        def pipeline_on(num_shards: int) -> tuple[dict[str, Any], float]:
            started = time.perf_counter()
            status, context = server.request(
                "POST", "/contexts", {"name": "amp", "rows": [1], "num_shards": num_shards}
            )
            assert status == 201, context
            return {
                "context_id": context["id"],
                "pipeline_name": "amp",
                "pipeline_type": "vllm",
                "model_config": {"model": "m"},
            }, time.perf_counter() - started

        pipeline_on(2)  # warm-up
        body, _ = pipeline_on(2)
        server.request("POST", "/pipelines", body)
        body, context_s = pipeline_on(shards)
        return (*measure(server, [("POST", "/pipelines", body)]), context_s)
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--shards", type=int, default=10_000)
    args = parser.parse_args()

    url = fresh_database(DB)
    seconds, cpu, mb, size = bench_chain(url, args.tasks)
    print(
        f"chain of {args.tasks} tasks ({size / 1024:.0f} KB): POST /workflows "
        f"{seconds:.3f} s (worker CPU {cpu:.2f} s), worker peak +{mb:.1f} MB"
    )
    seconds, cpu, mb, context_s = bench_pipeline(url, args.shards)
    print(
        f"pipeline of {args.shards} shards: POST /contexts {context_s:.3f} s, POST /pipelines "
        f"{seconds:.3f} s (worker CPU {cpu:.2f} s), worker peak +{mb:.1f} MB"
    )
    print("targets: under 1 s and under 100 MB each")


if __name__ == "__main__":
    main()
