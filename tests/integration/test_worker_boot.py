"""A worker takes messages as soon as Dramatiq starts its threads, which is before the boot's
``after_worker_boot`` hooks run. A task claimed in that window keeps the worker identity it was
claimed under: the heartbeat extends its lease instead of finding it lost and cancelling it."""

from __future__ import annotations

import dramatiq
import sqlalchemy as sa
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import ShutdownNotifications

import tests.handlers  # noqa: F401 - registers the test handlers (poll_cancelled)
from kiln.app.runtime import Kiln
from kiln.transport import Transport
from kiln.workers.actors import build_actors
from kiln.workers.lifecycle import WorkerLifecycle
from tests.conftest import fast_settings, wait_for


class ClaimBeforeBootEnds(dramatiq.Middleware):
    """Holds the boot's ``after_worker_boot`` until the worker's threads have claimed the
    task (Dramatiq runs ``after_`` hooks in the reverse order of the middleware: added after
    the lifecycle's, this one runs before it)."""

    def __init__(self, kiln: Kiln) -> None:
        self.kiln = kiln
        self.task_id: int | None = None

    def after_worker_boot(self, broker, worker):  # type: ignore[no-untyped-def]
        q = sa.text("SELECT status FROM tasks WHERE id = :id")
        wait_for(
            lambda: (
                self.kiln.read(lambda c: c.execute(q, {"id": self.task_id}).scalar()) == "running"
            ),
            what="the task claimed before the boot's end",
        )


def test_a_task_claimed_while_the_worker_boots_keeps_the_identity_it_was_claimed_under(
    database_url: str,
) -> None:
    settings = fast_settings(database_url=database_url)
    broker = StubBroker(middleware=[ShutdownNotifications()])
    broker.emit_after("process_boot")
    submitter = Kiln(settings, pool_size=2, sender=Transport(broker, settings.queue_name).send_now)
    kiln = Kiln(settings, pool_size=4)
    build_actors(broker, kiln, [settings.queue_name])
    gate = ClaimBeforeBootEnds(kiln)
    broker.add_middleware(gate)
    lifecycle = next(m for m in broker.middleware if isinstance(m, WorkerLifecycle))
    # Submitted on an idle queue, the task is leased and its message is on the broker before
    # the worker starts.
    run_id = submitter.submit(
        {
            "name": "boot",
            "tasks": [{"name": "A", "handler": "poll_cancelled", "params": {"key": "worker-boot"}}],
        }  # fmt: skip
    )
    gate.task_id = kiln.read(
        lambda c: c.execute(
            sa.text("SELECT id FROM tasks WHERE workflow_id = :w"), {"w": run_id}
        ).scalar_one()
    )
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=10)
    try:
        worker.start()  # returns once every after_worker_boot hook has run
        owner, concurrency = kiln.read(
            lambda c: c.execute(
                sa.text(
                    "SELECT t.lease_owner, p.concurrency FROM tasks t "
                    "JOIN processes p ON p.id = t.lease_owner WHERE t.id = :id"
                ),
                {"id": gate.task_id},
            ).one()
        )
        assert lifecycle.process_id() == owner
        assert concurrency == 2  # registered with the boot's threads, not a default
        submitter.cancel(run_id)
        wait_for(lambda: kiln.run(run_id)["status"] == "cancelled", what="the cancel")
    finally:
        worker.stop(timeout=10_000)
        broker.close()
        submitter.close()
        kiln.close()
