"""Handlers that start child runs (tests of kiln.core.children). Importable by path
(``tests.child_handlers:...``): ``tests`` is an allowed handler module in the test settings."""

from __future__ import annotations

import os
from pathlib import Path

from kiln import Workflow
from kiln.core.task_context import current_task


def leaf(n: int = 0, sleep: float = 0.0, fail: bool = False) -> dict:
    if sleep:
        import time

        # In short steps, stopping once cancelled, so a cancelled run frees its threads.
        deadline = time.monotonic() + sleep
        while time.monotonic() < deadline and not current_task().cancelled:
            time.sleep(min(0.05, sleep))
    if fail:
        raise RuntimeError(f"leaf {n} failed on purpose")
    return {"n": n, "square": n * n}


def child_definition(n: int, sleep: float = 0.0, fail: bool = False) -> dict:
    wf = Workflow(f"child-{n}")
    wf.add("tests.child_handlers:leaf", name="Leaf", params={"n": n, "sleep": sleep, "fail": fail})
    return wf.to_definition()


# Named by a task of kind "workflow": a Workflow object in an allowed module.
one_leaf = Workflow("one-leaf")
one_leaf.add("tests.child_handlers:leaf", name="Leaf", params={"n": 7})


def _log(path: str | None, line: str) -> None:
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


def fan_out(count: int, sleep: float = 0.0, fail_at: int = -1, log: str | None = None) -> dict:
    """Start ``count`` children, then wait for all of them; sums their squares."""
    ctx = current_task()
    _log(log, f"run attempt={ctx.attempt}")
    runs = [
        ctx.start_child(child_definition(i, sleep, fail=i == fail_at), key=f"c{i}")
        for i in range(count)
    ]
    results = ctx.wait_all(runs)
    _log(log, "done")
    return {"children": [r.id for r in runs], "total": sum(r["Leaf"]["square"] for r in results)}


def one_child(n: int = 3) -> dict:
    child = current_task().start_child(child_definition(n), key="only")
    return {"child": child.id, "result": child.result()["Leaf"]}


def child_fails_caught() -> str:
    from kiln import RunFailed

    child = current_task().start_child(child_definition(1, fail=True), key="bad")
    try:
        child.result()
    except RunFailed as exc:
        return f"child failed: {exc.task}"
    return "child succeeded"


def swallow_everything(n: int = 2) -> str:
    """A handler whose ``except Exception`` must not swallow the wait."""
    try:
        current_task().start_child(child_definition(n), key="k").result()
    except Exception:  # noqa: BLE001 - what the test checks
        return "swallowed"
    return "waited"


def marker(path: str) -> str:
    Path(path).touch()
    return "marked"


def nap_then_count(seconds: float) -> dict:
    """Sleeps with sleep_until and saved state, then counts how often it ran."""
    import datetime as dt

    from kiln.core.clock import utcnow

    ctx = current_task()
    state = ctx.state or {
        "until": (utcnow() + dt.timedelta(seconds=seconds)).isoformat(),
        "runs": 0,
    }
    state = {**state, "runs": state["runs"] + 1}
    ctx.sleep_until(dt.datetime.fromisoformat(state["until"]), state=state)
    return {"runs": state["runs"], "until": state["until"]}
