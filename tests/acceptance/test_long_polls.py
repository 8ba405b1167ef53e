"""The web process under gunicorn, as the Procfile runs it but smaller (2 workers x 4 threads:
fewer threads than the long polls it is sent), under long polls."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest
import requests

from tests.conftest import ROOT, wait_for
from tests.taskinstance_helpers import free_port

pytestmark = pytest.mark.slow
WAITS = 8


@pytest.fixture
def web(cluster, tmp_path):
    """``gunicorn --workers 2 --threads 4`` serving the cluster's database: fewer threads than
    ``WAITS`` long polls."""
    port = free_port()
    env = {k: v for k, v in cluster.env.items() if k != "KILN_MAX_WAITERS"}  # the default
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", "2", "--threads", "4",
         "--bind", f"127.0.0.1:{port}", "kiln.web.app:create_app()"],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{url}/health", timeout=5).ok
        except requests.ConnectionError:
            return False

    wait_for(up, timeout=60, what="gunicorn to answer")
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


def test_long_polls_on_a_pending_operation_leave_health_answering_and_waits_past_the_cap_get_429(
    web, pg_kiln
):
    # No controller runs: the operation stays pending, and every wait on it waits.
    op, _ = pg_kiln.operations.create("clone", {"context_id": 1, "pipeline_name": "x"})
    status_url = f"{web}/dispatcher/operation-status/{op['ic_id']}"
    answers: list[requests.Response] = []
    lock = threading.Lock()

    def long_poll() -> None:
        r = requests.get(status_url, params={"wait": 30}, timeout=120)
        with lock:
            answers.append(r)

    polls = [threading.Thread(target=long_poll) for _ in range(WAITS)]
    for t in polls:
        t.start()
    # Two waits per process at most (KILN_MAX_WAITERS): the others are refused at once.
    refused = wait_for(
        lambda: len(answers) >= WAITS - 2 * 2 and list(answers),
        timeout=30,
        what="the waits past the cap to be refused",
    )
    assert {r.status_code for r in refused} == {429}, [r.text for r in refused]
    assert all(r.headers["Retry-After"] == "1" for r in refused)
    assert refused[0].json()["error"] == "too_many_waiters"

    health = requests.get(f"{web}/health", timeout=60)
    assert health.status_code == 200
    with lock:
        waiting = WAITS - len(answers)
    assert waiting >= 1, "/health answered only after every wait had ended"

    assert requests.get(status_url, params={"wait": 31}, timeout=30).status_code == 422

    # The operation ends (a clone of a context that does not exist fails): the waits return.
    assert pg_kiln.operations.apply_pending("test", limit=10) == 1
    for t in polls:
        t.join(timeout=60)
    waited = [r for r in answers if r.status_code != 429]
    # These waited through the /health request: they could only end when the operation did.
    assert 1 <= len(waited) <= 2 * 2
    assert {r.status_code for r in waited} == {200}
    assert {r.json()["status"] for r in waited} == {"failed"}
