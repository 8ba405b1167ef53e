"""The sample workflow ``kiln demo`` runs: fan-out, fan-in, result references, progress, and a
task that fails once and succeeds when retried."""

from __future__ import annotations

import time

from kiln.core.definitions import Workflow
from kiln.core.handlers import task
from kiln.core.task_context import current_task


@task(name="demo.generate")
def generate(count: int) -> dict:
    return {"numbers": list(range(1, count + 1))}


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
def report(message: str, total: int) -> dict:
    return {"message": message, "total": total}


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
    wf.add(
        report,
        name="Report",
        params={
            "message": f"sum of squares 1..12 plus bonus = {total.result}",
            "total": total.result,
        },
        depends_on=[total],
    )
    return wf
