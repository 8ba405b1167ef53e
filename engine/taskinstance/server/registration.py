"""Registration with Kiln and the heartbeat loop (the contract is in ``server.py``'s docstring).

One daemon thread: register (retrying with capped, jittered exponential backoff while Kiln
is unreachable or refuses), then heartbeat every ``heartbeat_interval`` seconds; a 404 on
a heartbeat means Kiln forgot this instance, so it registers again. The instance serves
tasks the whole time; nothing here blocks it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

__all__ = ["Registrar", "RegistrationState"]

log = logging.getLogger("kiln.taskinstance.registration")


@dataclass
class RegistrationState:
    """What the instance knows about its standing with Kiln (served on ``GET /health``)."""

    kiln_url: str | None
    registered: bool = False
    kiln_instance_id: str | None = None
    registration_attempts: int = 0
    registrations: int = 0
    heartbeats_sent: int = 0
    heartbeat_failures: int = 0
    last_error: str | None = None
    last_heartbeat_at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def to_json(self) -> dict[str, Any]:
        with self.lock:
            return {
                "kiln_url": self.kiln_url,
                "registered": self.registered,
                "kiln_instance_id": self.kiln_instance_id,
                "registration_attempts": self.registration_attempts,
                "registrations": self.registrations,
                "heartbeats_sent": self.heartbeats_sent,
                "heartbeat_failures": self.heartbeat_failures,
                "last_error": self.last_error,
                "last_heartbeat_at": self.last_heartbeat_at,
            }


class Registrar:
    """Keeps one instance registered with Kiln and heartbeating until :meth:`stop`."""

    def __init__(
        self,
        kiln_url: str,
        registration_body: Callable[[], dict[str, Any]],
        heartbeat_body: Callable[[], tuple[dict[str, Any], int]],
        ack_heartbeat: Callable[[int], None],
        *,
        heartbeat_interval: float = 2.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 10.0,
        api_token: str | None = None,
        request_timeout: float = 5.0,
    ) -> None:
        self.kiln_url = kiln_url.rstrip("/")
        self.state = RegistrationState(kiln_url=self.kiln_url)
        self._registration_body = registration_body
        self._heartbeat_body = heartbeat_body
        self._ack = ack_heartbeat
        self.heartbeat_interval = heartbeat_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.request_timeout = request_timeout
        self._stop = threading.Event()
        self._session = requests.Session()
        if api_token:
            self._session.headers["Authorization"] = f"Bearer {api_token}"
        self._thread = threading.Thread(target=self._run, name="kiln-registrar", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, final_status: dict[str, Any] | None = None) -> None:
        """Stop the loop; if registered, send one last heartbeat carrying ``final_status``."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.request_timeout + 1.0)
        if final_status is not None and self.state.registered:
            try:
                self._post(self._heartbeat_url(), final_status)
            except requests.RequestException as exc:
                log.info("final heartbeat not delivered: %s", exc)
        self._session.close()

    # ------------------------------------------------------------------ internals
    def _post(self, url: str, body: dict[str, Any]) -> requests.Response:
        return self._session.post(url, json=body, timeout=self.request_timeout)

    def _heartbeat_url(self) -> str:
        return f"{self.kiln_url}/instances/{self.state.kiln_instance_id}/heartbeat"

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._register():
                return
            self._heartbeat_until_forgotten()

    def _register(self) -> bool:
        """Register, retrying until it works; ``False`` if stopped first."""
        delay = self.backoff_initial
        while not self._stop.is_set():
            with self.state.lock:
                self.state.registration_attempts += 1
            error = self._try_register()
            if error is None:
                return True
            with self.state.lock:
                self.state.last_error = error
            log.warning("registration with %s failed (%s); retrying", self.kiln_url, error)
            # Jitter keeps a fleet restarted together from hammering Kiln in lockstep.
            if self._stop.wait(delay * random.uniform(0.8, 1.2)):
                return False
            delay = min(self.backoff_max, delay * 2)
        return False

    def _try_register(self) -> str | None:
        try:
            response = self._post(f"{self.kiln_url}/instances", self._registration_body())
        except requests.RequestException as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.status_code not in (200, 201):
            return f"HTTP {response.status_code}: {response.text[:200]}"
        try:
            kiln_id = response.json()["id"]
        except (ValueError, KeyError, TypeError):
            return "registration response has no JSON 'id'"
        with self.state.lock:
            self.state.registered = True
            self.state.kiln_instance_id = str(kiln_id)
            self.state.registrations += 1
            self.state.last_error = None
        log.info("registered with %s as %s", self.kiln_url, kiln_id)
        return None

    def _heartbeat_until_forgotten(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            body, unreported = self._heartbeat_body()
            try:
                response = self._post(self._heartbeat_url(), body)
            except requests.RequestException as exc:
                self._heartbeat_failed(f"{type(exc).__name__}: {exc}")
                continue
            if response.status_code == 404:
                log.warning("Kiln no longer knows this instance; registering again")
                with self.state.lock:
                    self.state.registered = False
                    self.state.kiln_instance_id = None
                return
            if 200 <= response.status_code < 300:
                self._ack(unreported)
                with self.state.lock:
                    self.state.heartbeats_sent += 1
                    self.state.last_heartbeat_at = time.time()
            else:
                self._heartbeat_failed(f"HTTP {response.status_code}")

    def _heartbeat_failed(self, error: str) -> None:
        with self.state.lock:
            self.state.heartbeat_failures += 1
            self.state.last_error = error
        log.warning("heartbeat to %s failed: %s", self.kiln_url, error)
