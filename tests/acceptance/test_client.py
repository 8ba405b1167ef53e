"""kiln.Client against real processes: ``kiln web``, a worker and a controller on PostgreSQL
and Redis."""

from __future__ import annotations

import pytest
import requests

from kiln import Client, RunFailed, Workflow
from tests.conftest import wait_for
from tests.taskinstance_helpers import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def client(cluster):
    port = free_port()
    cluster.start("web", "--port", str(port), name="web")
    cluster.worker()
    cluster.controller()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{url}/health", timeout=5).ok
        except requests.ConnectionError:
            return False

    wait_for(up, timeout=60, what="kiln web to answer")
    with Client(url) as c:
        yield c


def counting_gets(client: Client) -> list[str]:
    gets: list[str] = []
    request = client.session.request

    def counted(method, url, **kwargs):  # type: ignore[no-untyped-def]
        if method == "GET":
            gets.append(url)
        return request(method, url, **kwargs)

    client.session.request = counted  # type: ignore[method-assign]
    return gets


def test_a_submitted_run_is_waited_on_with_a_few_long_polls_and_gives_its_results(client, cluster):
    wf = Workflow("slow-sum")
    a = wf.add("sleep", name="Nap", params={"seconds": 2, "value": 5})
    wf.add("add", name="Sum", params={"a": "{{Nap.result}}", "b": 1}, depends_on=[a])
    gets = counting_gets(client)
    handle = client.submit(wf)
    assert handle.result(timeout=60) == {"Nap": 5, "Sum": 6}, cluster.logs()
    # One long poll answers when the run ends; a tight loop would make dozens of GETs.
    assert len(gets) <= 3, gets
    assert client.run(handle.id).status() == "succeeded"


def test_a_failing_run_raises_run_failed_with_the_tasks_error(client, cluster):
    wf = Workflow("doomed")
    wf.add("fail_always", name="Doomed", params={"message": "no luck"}, max_attempts=1)
    with pytest.raises(RunFailed) as caught:
        client.submit(wf).result(timeout=60)
    assert caught.value.task == "Doomed", cluster.logs()
    assert "no luck" in caught.value.error


def test_an_idempotency_key_replayed_returns_the_same_run(client, cluster):
    wf = Workflow("once")
    wf.add("echo", name="E", params={"v": 1})
    first = client.submit(wf, idempotency_key="nightly-1")
    again = client.submit(wf.to_definition(), idempotency_key="nightly-1")
    assert again.id == first.id
    assert first.result(timeout=60) == {"E": {"v": 1}}, cluster.logs()
