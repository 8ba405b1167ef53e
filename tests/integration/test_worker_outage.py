"""Queued work survives a worker outage: re-sends wait for a live worker, and only sends a live
worker could have consumed count towards quarantine (which is for poison messages)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from kiln.app.runtime import Kiln
from kiln.store.dispatch import MAX_DISPATCHES
from tests.conftest import fast_settings, wait_for

TIMEOUT_S = 0.2  # the dispatch lease: MAX_DISPATCHES of them pass in a few seconds


@pytest.fixture
def short_lease(database_url: str) -> Iterator[Kiln]:
    k = Kiln(fast_settings(database_url=database_url, dispatch_timeout_s=TIMEOUT_S), pool_size=8)
    yield k
    k.close()


def _queued_run(kiln: Kiln) -> int:
    wf_id = kiln.submit(
        {
            "name": "outage",
            "on_error": "continue",  # each task meets its own fate
            "tasks": [{"name": f"T{i}", "handler": "echo"} for i in range(3)],
        },
        check_handlers=False,
    )
    assert len(kiln.dispatch(10)) == 3  # leased; the message goes nowhere
    return wf_id


def _recover_for(kiln: Kiln, periods: int) -> tuple[list, list]:
    """Run recovery passes (as a controller does) until ``periods`` dispatch leases passed."""
    resent: list = []
    quarantined: list = []
    horizon = time.monotonic() + periods * TIMEOUT_S

    def one_pass() -> bool:
        rec = kiln.recover()
        resent.extend(rec.resend)
        quarantined.extend(rec.quarantined)
        return time.monotonic() > horizon

    wait_for(one_pass, timeout=periods * TIMEOUT_S + 60, what=f"{periods} dispatch leases")
    return resent, quarantined


def test_a_worker_outage_longer_than_max_dispatches_leases_quarantines_nothing_and_the_work_runs_when_workers_return(  # noqa: E501
    short_lease,
):
    kiln = short_lease
    # A worker was here, then every worker stopped: the outage.
    pid = kiln.monitor.new_process_id("worker")
    kiln.monitor.register_process(pid, "worker")
    kiln.monitor.stop_process(pid)
    wf_id = _queued_run(kiln)

    resent, quarantined = _recover_for(kiln, MAX_DISPATCHES + 5)

    assert quarantined == []
    assert resent == []  # nothing piles up in a queue no one reads
    tasks = kiln.workflow(wf_id)["tasks"]
    assert {t["status"] for t in tasks} == {"queued"}
    assert {t["dispatch_count"] for t in tasks} == {1}

    import tests.handlers  # noqa: F401 - registers the test handlers
    from kiln.workers.embedded import EmbeddedRuntime

    with EmbeddedRuntime(kiln, threads=2):
        run = wait_for(
            lambda: (r := kiln.workflow(wf_id))["status"] in ("succeeded", "failed") and r,
            what="the run to finish once a worker is back",
        )
    assert run["status"] == "succeeded", [t["error"] for t in run["tasks"]]
    assert all(t["attempts"] == 1 for t in run["tasks"])


def test_a_message_no_live_worker_ever_claims_is_still_quarantined(short_lease):
    kiln = short_lease
    # A worker that heartbeats but never claims: the message is poison to it.
    pid = kiln.monitor.new_process_id("worker")
    kiln.monitor.register_process(pid, "worker")
    wf_id = _queued_run(kiln)

    def quarantined_all() -> bool:
        kiln.monitor.heartbeat_process(pid)
        kiln.recover()
        return {t["status"] for t in kiln.workflow(wf_id)["tasks"]} == {"failed"}

    wait_for(quarantined_all, timeout=MAX_DISPATCHES * TIMEOUT_S + 60, what="quarantine")
    run = kiln.workflow(wf_id)
    assert run["status"] == "failed"
    for task in run["tasks"]:
        assert task["dispatch_count"] == MAX_DISPATCHES
        assert task["error"].startswith(f"quarantined: sent {MAX_DISPATCHES} times")
