"""Worker pools without I/O: queue lists, which queues live workers serve, and a transport
that sends each task's message to its own queue (on Dramatiq's in-process broker)."""

from __future__ import annotations

import pytest
from dramatiq.brokers.stub import StubBroker

from kiln.core.errors import InvalidDefinition
from kiln.core.execution import Dispatch
from kiln.core.pools import parse_queues, served_queues, worker_info
from kiln.transport import Transport


def test_a_queue_list_is_split_deduplicated_and_validated():
    assert parse_queues("gpu, cpu,gpu") == ("gpu", "cpu")
    for bad in ("", ",", "GPU", "gpu,a b"):
        with pytest.raises(InvalidDefinition):
            parse_queues(bad)


def test_served_queues_are_those_live_workers_registered_or_all_when_one_serves_every_queue():
    infos = [worker_info(["gpu"]), worker_info(["kiln", "cpu"]), None]
    assert served_queues(infos, "default") == {"gpu", "kiln", "cpu", "default"}
    assert served_queues([*infos, worker_info(None)], "default") is None
    assert served_queues([], "default") == frozenset()


def _broker(*queues: str) -> StubBroker:
    broker = StubBroker()
    for q in queues:
        broker.declare_queue(q)
    return broker


def test_each_dispatch_goes_to_its_tasks_queue_and_no_queue_means_the_default():
    broker = _broker("kiln", "gpu")
    Transport(broker, "kiln").send(
        [Dispatch(1, 1, 1), Dispatch(2, 1, 1, queue="gpu"), Dispatch(3, 1, 1)], batch=8
    )
    assert [m.args for m in _drain(broker, "kiln")] == [([[1, 1], [3, 1]],)]
    assert [m.args for m in _drain(broker, "gpu")] == [([[2, 1]],)]


def test_a_one_queue_transport_sends_every_task_to_its_queue():
    broker = _broker("kiln")
    Transport(broker, "kiln", one_queue=True).send(
        [Dispatch(1, 1, 1, queue="gpu"), Dispatch(2, 1, 1)], batch=8
    )
    assert [m.args for m in _drain(broker, "kiln")] == [([[1, 1], [2, 1]],)]


def _drain(broker: StubBroker, queue: str) -> list:
    from dramatiq import Message

    q = broker.queues[queue]
    out = []
    while not q.empty():
        out.append(Message.decode(q.get_nowait()))
    return out
