"""Clients Kiln's workers use to talk to TaskInstances.

:class:`TaskInstanceClient` speaks seed 000's eight-endpoint protocol. Idempotent calls
(every GET, ``/queue/predict``, and ``/queue/enqueue`` — always sent with a task id, the
caller's or a fresh uuid, so a retry cannot run the task twice) are retried with
exponential backoff and jitter on connection errors, timeouts and 5xx answers.
``/models/start`` and ``/models/stop`` are not idempotent and are tried once.

:class:`OpenAICompatClient` calls ``/v1/chat/completions`` and ``/v1/completions`` (its
``base_url`` may end in ``/v1`` or not, as OpenAI's own SDKs write it), keeps client-side
token buckets for the rpm/tpm limits so it rarely triggers a 429, and on a 429 waits as long
as the ``retry-after``/``x-ratelimit-reset-*`` headers say.

All failures are :class:`TaskInstanceError` subclasses; each class's docstring is its
default message, and every instance carries ``status_code``, ``code`` and ``details``.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import requests

from kiln.taskinstance.protocol import (
    EnqueueReceipt,
    InstanceStatus,
    Progress,
    QueuePrediction,
    QueueStatus,
    TaskResult,
)
from kiln.taskinstance.ratelimit import TokenBucket, parse_duration
from kiln.taskinstance.tokens import count_chat_tokens, count_tokens

__all__ = [
    "InstanceRejected",
    "InstanceUnavailable",
    "OpenAICompatClient",
    "ProtocolViolation",
    "RateLimited",
    "ResultTimeout",
    "TaskIdConflict",
    "TaskInstanceClient",
    "TaskInstanceError",
    "TaskNotFound",
]


class TaskInstanceError(Exception):
    """The TaskInstance call failed."""

    def __init__(
        self,
        message: str | None = None,
        *,
        status_code: int | None = None,
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message or self.__doc__)
        self.status_code = status_code
        self.code = code
        self.details = details or {}


class InstanceUnavailable(TaskInstanceError):
    """The TaskInstance could not be reached or kept failing (connection error, timeout, 5xx)."""


class InstanceRejected(TaskInstanceError):
    """The TaskInstance refused the request (4xx)."""


class TaskIdConflict(InstanceRejected):
    """The task id is already taken on this instance by a task with different input."""


class TaskNotFound(TaskInstanceError):
    """The TaskInstance does not know this task id."""


class ResultTimeout(TaskInstanceError):
    """The task did not finish before the deadline."""


class RateLimited(TaskInstanceError):
    """The instance's rate limit was still exceeded after all retries."""


class ProtocolViolation(TaskInstanceError):
    """The TaskInstance answered with something that is not the TaskInstance protocol."""


def _error_fields(response: requests.Response) -> tuple[str | None, str | None, dict[str, Any]]:
    """``(code, message, details)`` from Kiln's or OpenAI's error shape, if present."""
    try:
        body = response.json()
    except ValueError:
        return None, None, {}
    if not isinstance(body, dict):
        return None, None, {}
    error = body.get("error")
    if isinstance(error, dict):  # OpenAI: {"error": {"message", "type", "code"}}
        return _text(error.get("code") or error.get("type")), _text(error.get("message")), error
    details = body.get("details")
    return (
        _text(error),
        _text(body.get("message")),
        details if isinstance(details, dict) else {},
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class _Backoff:
    """Exponential delays with ±25 % jitter: ``initial * 2**n`` capped at ``maximum``."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum = initial, maximum

    def delay(self, attempt: int) -> float:
        return min(self.maximum, self.initial * (2**attempt)) * random.uniform(0.75, 1.25)


class TaskInstanceClient:
    """Client for one TaskInstance at ``base_url``.

    ``timeout`` is per HTTP request (seconds); ``retries`` is how many times an
    idempotent call is retried after the first attempt (so ``retries=3`` makes at most 4
    attempts), waiting ``backoff * 2**n`` seconds (capped at ``backoff_max``) between
    them. Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        base_url: str,
        timeout: float = 10.0,
        retries: int = 3,
        *,
        backoff: float = 0.2,
        backoff_max: float = 5.0,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self._backoff = _Backoff(backoff, backoff_max)
        self._session = session or requests.Session()

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> TaskInstanceClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transport
    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        idempotent: bool,
        not_found: type[TaskInstanceError] = InstanceRejected,
    ) -> tuple[Any, int]:
        url = self.base_url + path
        attempts = 1 + (self.retries if idempotent else 0)
        last: TaskInstanceError | None = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(self._backoff.delay(attempt - 1))
            try:
                response = self._session.request(method, url, json=json, timeout=self.timeout)
            except requests.RequestException as exc:
                last = InstanceUnavailable(
                    f"{method} {url} failed: {type(exc).__name__}: {exc}",
                    details={"url": url},
                )
                last.__cause__ = exc
                continue
            if response.status_code >= 500:
                code, message, details = _error_fields(response)
                last = InstanceUnavailable(
                    message, status_code=response.status_code, code=code, details=details
                )
                continue
            return self._decode(response, not_found)
        assert last is not None
        raise last

    @staticmethod
    def _decode(response: requests.Response, not_found: type[TaskInstanceError]) -> tuple[Any, int]:
        if response.status_code >= 400:
            code, message, details = _error_fields(response)
            if response.status_code == 404:
                cls: type[TaskInstanceError] = not_found
            elif code == "task_id_conflict":
                cls = TaskIdConflict
            else:
                cls = InstanceRejected
            raise cls(message, status_code=response.status_code, code=code, details=details)
        try:
            return response.json(), response.status_code
        except ValueError as exc:
            raise ProtocolViolation(
                f"non-JSON answer from {response.url}", status_code=response.status_code
            ) from exc

    # ------------------------------------------------------------------- protocol
    def start_models(
        self, model_type: str, count: int = 1, config: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """``POST /models/start``: add ``count`` replicas of ``model_type``."""
        body = {"model_type": model_type, "count": count, "config": config or {}}
        return self._request("POST", "/models/start", json=body, idempotent=False)[0]

    def stop_models(self, count: int | None = None) -> dict[str, Any]:
        """``POST /models/stop``: remove ``count`` replicas, or all with ``None``."""
        return self._request("POST", "/models/stop", json={"count": count}, idempotent=False)[0]

    def status(self) -> InstanceStatus:
        """``GET /status``."""
        return InstanceStatus.from_json(self._request("GET", "/status", idempotent=True)[0])

    def enqueue(
        self,
        input_data: Any,
        metadata: dict[str, Any] | None = None,
        task_id: str | None = None,
    ) -> EnqueueReceipt:
        """``POST /queue/enqueue``, idempotent by ``task_id`` (a uuid4 hex if not given).

        Enqueueing an id the instance already has returns the existing entry
        (``created=False``) instead of running the task twice; raises
        :class:`TaskIdConflict` if that id holds a task with different input. After a
        retried timeout ``created`` may be false although the first attempt created it.
        """
        body = {
            "input_data": input_data,
            "metadata": metadata or {},
            "task_id": task_id or uuid.uuid4().hex,
        }
        data, status = self._request("POST", "/queue/enqueue", json=body, idempotent=True)
        return EnqueueReceipt.from_json(data, created=status == 201)

    def predict(
        self, metadata: dict[str, Any] | None = None, input_data: Any = None
    ) -> QueuePrediction:
        """``POST /queue/predict``: when a task with ``metadata`` enqueued now would finish."""
        body: dict[str, Any] = {"metadata": metadata or {}}
        if input_data is not None:
            body["input_data"] = input_data
        data, _ = self._request("POST", "/queue/predict", json=body, idempotent=True)
        return QueuePrediction.from_json(data)

    def queue_status(self) -> QueueStatus:
        """``GET /queue/status``."""
        return QueueStatus.from_json(self._request("GET", "/queue/status", idempotent=True)[0])

    def result(self, task_id: str) -> TaskResult:
        """``GET /results/{task_id}``; raises :class:`TaskNotFound` for an unknown id."""
        data, _ = self._request(
            "GET",
            f"/results/{quote(task_id, safe='')}",
            idempotent=True,
            not_found=TaskNotFound,
        )
        return TaskResult.from_json(data)

    def results(self, status: str | None = None) -> list[TaskResult]:
        """``GET /results``: every task the instance still remembers."""
        path = "/results" + (f"?status={quote(status)}" if status else "")
        data, _ = self._request("GET", path, idempotent=True)
        items = data.get("results", []) if isinstance(data, dict) else data
        return [TaskResult.from_json(item) for item in items]

    def progress(self, task_id: str) -> Progress:
        """How far the task is (fraction 0..1 and the instance's message)."""
        return self.result(task_id).progress

    def wait_for_result(
        self,
        task_id: str,
        timeout: float = 60.0,
        poll_interval: float = 0.1,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> TaskResult:
        """Poll until the task is completed or failed and return it (check ``.succeeded``).

        ``on_progress`` is called whenever the task's status, fraction or message changes.
        Raises :class:`ResultTimeout` after ``timeout`` seconds, :class:`TaskNotFound` if
        the instance does not know the id.
        """
        deadline = time.monotonic() + timeout
        last: Progress | None = None
        while True:
            current = self.result(task_id)
            if on_progress is not None and current.progress != last:
                last = current.progress
                on_progress(last)
            if current.finished:
                return current
            left = deadline - time.monotonic()
            if left <= 0:
                raise ResultTimeout(
                    f"task {task_id} still {current.status} after {timeout}s",
                    details={"task_id": task_id, "status": current.status},
                )
            time.sleep(min(poll_interval, left))


class OpenAICompatClient:
    """Client for an instance's OpenAI-compatible routes that respects its rate limits.

    With ``rpm_limit``/``tpm_limit`` set, calls block until local token buckets allow
    them (each call costs one request and prompt tokens + ``max_tokens``, counted with the
    instance's tokenizer). Server ``x-ratelimit-remaining-*`` headers lower the local
    buckets. A 429 is retried after the server's ``retry-after-ms``/``retry-after``/reset
    header, 5xx and connection errors with exponential backoff, up to ``max_retries``.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        rpm_limit: int | None = None,
        tpm_limit: int | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 0.25,
        backoff_max: float = 8.0,
        session: requests.Session | None = None,
    ) -> None:
        root = base_url.rstrip("/")
        # OpenAI's SDKs take the base URL with /v1 (https://api.openai.com/v1); people also
        # write the bare host. Both name the same API root.
        self.base_url = root if root.endswith("/v1") else root + "/v1"
        self.timeout = timeout
        self.max_retries = max_retries
        self._backoff = _Backoff(backoff, backoff_max)
        self._session = session or requests.Session()
        if api_key:
            self._session.headers["Authorization"] = f"Bearer {api_key}"
        self._lock = threading.Lock()
        self._requests = TokenBucket(rpm_limit) if rpm_limit else None
        self._tokens = TokenBucket(tpm_limit) if tpm_limit else None
        #: Times a 429 was answered; useful to check that limits are respected.
        self.rate_limited_responses = 0

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> OpenAICompatClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def chat_completions(
        self,
        model: str,
        messages: list[dict[str, Any]],
        max_tokens: int | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """``POST /v1/chat/completions``; returns the OpenAI response body."""
        body = {"model": model, "messages": messages, **params}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        cost = count_chat_tokens(messages) + (max_tokens or 256)
        return self._call("/chat/completions", body, cost)

    def completions(
        self, model: str, prompt: str, max_tokens: int | None = None, **params: Any
    ) -> dict[str, Any]:
        """``POST /v1/completions``; returns the OpenAI response body."""
        body = {"model": model, "prompt": prompt, **params}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        cost = count_tokens(prompt) + (max_tokens or 16)
        return self._call("/completions", body, cost)

    # ------------------------------------------------------------------ internals
    def _acquire(self, tokens: int) -> None:
        while True:
            with self._lock:
                wait = 0.0
                if self._requests is not None:
                    wait = max(wait, self._requests.wait_time(1))
                if self._tokens is not None:
                    wait = max(wait, self._tokens.wait_time(tokens))
                if wait == float("inf"):
                    raise RateLimited(
                        f"a request of {tokens} tokens can never fit the tpm limit",
                        details={"tokens": tokens},
                    )
                if wait <= 0:
                    if self._requests is not None:
                        self._requests.take(1)
                    if self._tokens is not None:
                        self._tokens.take(tokens)
                    return
            time.sleep(wait)

    def _observe(self, response: requests.Response) -> None:
        with self._lock:
            for bucket, header in (
                (self._requests, "x-ratelimit-remaining-requests"),
                (self._tokens, "x-ratelimit-remaining-tokens"),
            ):
                value = response.headers.get(header)
                if bucket is not None and value is not None and value.isdigit():
                    bucket.drain_to(float(value))

    @staticmethod
    def _retry_after(response: requests.Response) -> float | None:
        headers = response.headers
        if headers.get("retry-after-ms"):
            seconds = parse_duration(headers["retry-after-ms"])
            if seconds is not None:
                return seconds / 1000.0
        for name in ("retry-after", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
            seconds = parse_duration(headers.get(name))
            if seconds is not None:
                return seconds
        return None

    def _pause(self, attempt: int, server_says: float | None) -> None:
        if attempt < self.max_retries:  # no point waiting after the last attempt
            time.sleep(server_says if server_says is not None else self._backoff.delay(attempt))

    def _call(self, path: str, body: dict[str, Any], tokens: int) -> dict[str, Any]:
        url = self.base_url + path
        last: TaskInstanceError | None = None
        for attempt in range(1 + self.max_retries):
            self._acquire(tokens)
            try:
                response = self._session.post(url, json=body, timeout=self.timeout)
            except requests.RequestException as exc:
                last = InstanceUnavailable(f"POST {url} failed: {type(exc).__name__}: {exc}")
                last.__cause__ = exc
                self._pause(attempt, None)
                continue
            self._observe(response)
            code, message, details = _error_fields(response)
            if response.status_code == 429:
                self.rate_limited_responses += 1
                last = RateLimited(message, status_code=429, code=code, details=details)
                self._pause(attempt, self._retry_after(response))
                continue
            if response.status_code >= 500:
                last = InstanceUnavailable(
                    message, status_code=response.status_code, code=code, details=details
                )
                self._pause(attempt, None)
                continue
            if response.status_code >= 400:
                raise InstanceRejected(
                    message, status_code=response.status_code, code=code, details=details
                )
            try:
                return response.json()
            except ValueError as exc:
                raise ProtocolViolation(f"non-JSON answer from {url}") from exc
        assert last is not None
        raise last
