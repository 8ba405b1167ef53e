"""The sample workflow ``kiln demo`` runs: fan-out, fan-in, result references, progress, a
task that fails once and succeeds when retried, a map over a result whose length is known
only at run time, a child run its parent task waits for without holding a worker, a short
durable sleep, and a signal (``kiln demo`` sends it itself, before the task is reached)."""

from __future__ import annotations

import time

from kiln.core.builder import Workflow, index, item
from kiln.core.handlers import task
from kiln.core.task_context import current_task


@task(name="demo.generate")
def generate(count: int) -> dict:
    numbers = list(range(1, count + 1))
    # Chunks of 4: how many is known only now, when this result exists.
    return {"numbers": numbers, "chunks": [numbers[i : i + 4] for i in range(0, count, 4)]}


@task(name="demo.chunk_sum")
def chunk_sum(chunk: list[int], index: int) -> dict:
    return {"chunk": index, "sum": sum(chunk)}


@task(name="demo.check")
def check(expected: int, got: int) -> dict:
    return {"expected": expected, "got": got, "ok": expected == got}


def audit_workflow(total: int) -> Workflow:
    """The child run ``demo.audit`` starts: recompute the sum another way and compare."""
    wf = Workflow("kiln-demo-audit")
    wf.add(check, name="Check", params={"expected": total, "got": sum(range(1, 13))})
    return wf


@task(name="demo.audit")
def audit(sums: list[dict]) -> dict:
    """Starts a child run and waits for it: the task waits (no worker thread held) and runs
    again from the top once the child ended; ``start_child`` then returns the same run."""
    total = sum(s["sum"] for s in sums)
    child = current_task().start_child(audit_workflow(total), key="audit")
    return {"chunks": len(sums), "total": total, "child_run": child.id, **child.result()["Check"]}


@task(name="demo.square_sum")
def square_sum(numbers: list[int], parity: str) -> dict:
    picked = [n for n in numbers if (n % 2 == 0) == (parity == "even")]
    return {"parity": parity, "total": sum(n * n for n in picked), "count": len(picked)}


@task(name="demo.flaky_fetch")
def flaky_fetch(steps: int = 5) -> dict:
    ctx = current_task()
    for i in range(steps):
        ctx.report_progress((i + 1) / steps, f"step {i + 1}/{steps}")
        time.sleep(0.05)
    if ctx.attempt == 1:
        raise ConnectionError("simulated network blip on the first attempt")
    return {"value": 1000, "attempt": ctx.attempt}


@task(name="demo.add")
def add(parts: list[int], bonus: int) -> int:
    return sum(parts) + bonus


@task(name="demo.report")
def report(message: str, total: int, approved_by: str) -> dict:
    return {"message": message, "total": total, "approved_by": approved_by}


# What ``kiln demo`` sends to the run right after submitting it.
APPROVAL = ("approve", {"approved": True, "by": "kiln demo"})


def demo_workflow() -> Workflow:
    wf = Workflow("kiln-demo", on_error="stop")
    gen = wf.add(generate, name="Generate", params={"count": 12})
    evens = wf.add(
        square_sum,
        name="Square evens",
        params={"numbers": gen.result["numbers"], "parity": "even"},
        depends_on=[gen],
    )
    odds = wf.add(
        square_sum,
        name="Square odds",
        params={"numbers": gen.result["numbers"], "parity": "odd"},
        depends_on=[gen],
    )
    sums = wf.map(
        chunk_sum,
        name="Chunk sum",
        over=gen.result["chunks"],
        params={"chunk": item, "index": index},
    )
    wf.add(audit, name="Audit", params={"sums": sums.result}, depends_on=[sums])
    flaky = wf.add(flaky_fetch, name="Flaky fetch", params={"steps": 5}, max_attempts=3)
    total = wf.add(
        add,
        name="Sum",
        params={
            "parts": [evens.result["total"], odds.result["total"]],
            "bonus": flaky.result["value"],
        },
        depends_on=[evens, odds, flaky],
    )
    cool = wf.add_sleep("Cool down", seconds=0.5, depends_on=[total])
    approve = wf.add_signal("Approve", signal=APPROVAL[0], timeout_s=60, depends_on=[cool])
    wf.add(
        report,
        name="Report",
        params={
            "message": f"sum of squares 1..12 plus bonus = {total.result}",
            "total": total.result,
            "approved_by": approve.result["by"],
        },
        depends_on=[total, approve],
    )
    return wf
