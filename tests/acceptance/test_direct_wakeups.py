"""Work sent to an idle queue by its submitter reaches a real worker process through the direct
wake-up list (``kiln.transport``, ``workers/direct.py``), within the worker's concurrency, and
is recovered when a wake-up is lost."""

from __future__ import annotations

import pytest
import redis
import sqlalchemy as sa

from kiln.app.runtime import Kiln
from kiln.core.builder import Workflow
from kiln.transport import Pusher, list_key
from tests.acceptance.test_crash_recovery import finished
from tests.conftest import fast_settings, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def submitter(cluster, pg_url, redis_url):
    """A Kiln handle that sends what it leases on an idle queue as direct wake-ups onto the
    cluster's queue (what the web process does with ``send_now``)."""
    queue = cluster.env["KILN_QUEUE"]
    pushed: list[list[tuple[int, int]]] = []
    pusher = Pusher(redis_url, queue, expire_s=60)

    def send(dispatches):
        pushed.append([(d.task_id, d.attempt) for d in dispatches])
        pusher.push(dispatches, 8)

    k = Kiln(fast_settings(database_url=pg_url, broker_url=redis_url), pool_size=2, sender=send)
    k.pushed = pushed  # type: ignore[attr-defined]
    yield k
    k.close()


def _one(handler: str, **params) -> Workflow:
    wf = Workflow("direct")
    wf.add(handler, name="t", params=params)
    return wf


def test_a_run_submitted_to_an_idle_queue_runs_from_its_direct_wake_up_without_a_controller(
    cluster, submitter, redis_url
):
    # No controller at all: only the wake-up the submitter pushed can get this task running.
    cluster.worker(threads=2)
    wait_for(lambda: _workers(submitter) == 1, timeout=30, what="the worker to register")
    wf_id = submitter.submit(_one("echo", value=7), check_handlers=False)
    run = finished(submitter, wf_id, timeout=30, cluster=cluster)
    assert run["status"] == "succeeded"
    assert run["tasks"][0]["result"] == {"value": 7}
    assert len(submitter.pushed) == 1  # type: ignore[attr-defined]
    assert redis.Redis.from_url(redis_url).llen(list_key(cluster.env["KILN_QUEUE"])) == 0


def test_direct_wake_ups_share_the_workers_slots_so_concurrency_stays_as_started(
    cluster, submitter
):
    cluster.worker(threads=1)
    wait_for(lambda: _workers(submitter) == 1, timeout=30, what="the worker to register")
    first = submitter.submit(_one("sleep", seconds=1.0), check_handlers=False)
    second = submitter.submit(_one("sleep", seconds=0.2), check_handlers=False)
    for wf_id in (first, second):
        assert finished(submitter, wf_id, timeout=30, cluster=cluster)["status"] == "succeeded"
    a, b = (submitter.workflow(w)["tasks"][0] for w in (first, second))
    # Both were pushed as wake-ups at once, but a one-thread worker ran them one after the other.
    assert len(submitter.pushed) == 2  # type: ignore[attr-defined]
    spans = sorted([(a["started_at"], a["finished_at"]), (b["started_at"], b["finished_at"])])
    assert spans[0][1] <= spans[1][0], spans


def test_a_lost_wake_up_is_recovered_by_the_controller_when_the_dispatch_lease_ends(
    cluster, submitter, redis_url
):
    # The wake-up is deleted before any worker runs: the task stays leased in the database,
    # and the controller re-sends it as a Dramatiq message once its 3 s dispatch lease ends.
    wf_id = submitter.submit(_one("echo", value="late"), check_handlers=False)
    redis.Redis.from_url(redis_url).delete(list_key(cluster.env["KILN_QUEUE"]))
    assert submitter.workflow(wf_id)["tasks"][0]["status"] == "queued"
    cluster.controller()
    cluster.worker(threads=2)
    run = finished(submitter, wf_id, timeout=45, cluster=cluster)
    assert run["status"] == "succeeded"
    assert run["tasks"][0]["attempts"] == 1
    assert run["tasks"][0]["dispatch_count"] == 2  # the lost wake-up, then the re-send


def _workers(kiln: Kiln) -> int:
    return kiln.read(
        lambda c: c.execute(
            sa.text("SELECT count(*) FROM processes WHERE kind = 'worker' AND stopped_at IS NULL")
        ).scalar()
    )
