"""Kiln over HTTP: submit runs to a ``kiln web`` and wait on them with its long poll
(``GET /workflows/<id>?wait=``). Needs only ``requests``, not the database."""

from __future__ import annotations

import time
from typing import Any

import requests

from kiln.core import errors
from kiln.core.builder import Workflow
from kiln.core.runs import RunHandle


def _error_classes(cls: type[errors.KilnError]) -> dict[str, type[errors.KilnError]]:
    found = {cls.__name__: cls}
    for sub in cls.__subclasses__():
        found.update(_error_classes(sub))
    return found


class Client:
    """``Client("http://kiln:8000", token=...)``; ``submit(...)`` returns a
    :class:`~kiln.core.runs.RunHandle`. An error answer raises the
    :class:`~kiln.KilnError` subclass the server named (404 ``WorkflowNotFound``...)."""

    def __init__(self, url: str, token: str | None = None, *, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s  # per request, on top of any server-side wait
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(
        self, definition: dict[str, Any] | Workflow, idempotency_key: str | None = None
    ) -> RunHandle:
        """Submit a run; the same ``idempotency_key`` and definition again returns that run."""
        if isinstance(definition, Workflow):
            definition = definition.to_definition()
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        run = self._request("POST", "/workflows", json=definition, headers=headers)
        return RunHandle(self, run["id"])

    def run(self, run_id: int) -> RunHandle:
        """A handle on an existing run (:class:`~kiln.core.errors.WorkflowNotFound` if none)."""
        self.wait(run_id, 0)
        return RunHandle(self, run_id)

    def cancel(self, run_id: int) -> None:
        """Ask for the run's cancellation (a controller applies it)."""
        self._request("POST", f"/workflows/{run_id}/cancel", json={})

    def wait(self, run_id: int, timeout_s: float) -> dict[str, Any]:
        """The run with its tasks once it is terminal, or as it is after ``timeout_s``: one
        long poll, retried after ``Retry-After`` while the server's waiters are all busy."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = max(0.0, deadline - time.monotonic())
            params = {"wait": f"{left:.3f}"} if left > 0 else None
            response = self._send("GET", f"/workflows/{run_id}", params=params, timeout_s=left)
            if response.status_code != 429 or left <= 0:
                return self._rest_of_tasks(run_id, self._json(response))
            pause = float(response.headers.get("Retry-After") or 1)
            time.sleep(max(0.0, min(pause, deadline - time.monotonic())))

    def _rest_of_tasks(self, run_id: int, run: dict[str, Any]) -> dict[str, Any]:
        """``run`` with the tasks of its further pages (a run of over 1,000 tasks)."""
        while run.get("tasks_next_after") is not None:
            page = self._request(
                "GET", f"/workflows/{run_id}", params={"tasks_after": run["tasks_next_after"]}
            )
            run["tasks"] += page["tasks"]
            run["tasks_next_after"] = page["tasks_next_after"]
        return run

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._json(self._send(method, path, **kwargs))

    def _send(
        self, method: str, path: str, *, timeout_s: float = 0.0, **kwargs: Any
    ) -> requests.Response:
        return self.session.request(
            method, self.url + path, timeout=self.timeout_s + timeout_s, **kwargs
        )

    @staticmethod
    def _json(response: requests.Response) -> Any:
        if response.ok:
            return response.json()
        try:
            body = response.json()
        except ValueError:
            body = {}
        name = "".join(part.title() for part in str(body.get("error", "")).split("_"))
        cls = _error_classes(errors.KilnError).get(name, errors.KilnError)
        error = cls(
            body.get("message") or f"HTTP {response.status_code}", **body.get("details") or {}
        )
        error.status_code = response.status_code
        raise error
