"""Helpers for tests that drive real instances: the process, a Kiln double, waiting.

``InstanceProcess`` starts ``python -m kiln.taskinstance.server.app`` as a subprocess and
reads its port from the ``listening on`` line; ``KilnDouble`` is an in-process Flask
server implementing Kiln's side of the registration/heartbeat contract, recording what it
receives; ``wait_until`` polls a condition with a deadline.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from flask import Flask, jsonify, request
from werkzeug.serving import make_server

__all__ = ["InstanceProcess", "KilnDouble", "free_port", "wait_until"]

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS may hand it out again later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(
    condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll ``condition`` until it returns something truthy, and return it; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


class InstanceProcess:
    """A reference instance running as a subprocess; use as a context manager.

    ``args`` are CLI options for the ``instance`` command (``--model-type`` defaults to
    ``m`` if absent). ``url`` is known once :meth:`start` returns.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        python: str = sys.executable,
        startup_timeout: float = 15.0,
    ) -> None:
        args = list(args)
        if "--model-type" not in args:
            args = ["--model-type", "m", *args]
        self.command = [python, "-m", "kiln.taskinstance.server.app", *args]
        self.env = {**os.environ, **(env or {})}
        self.startup_timeout = startup_timeout
        self.url: str = ""
        self.port: int = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()

    def start(self) -> InstanceProcess:
        self.proc = subprocess.Popen(
            self.command,
            cwd=REPO_ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], self.startup_timeout)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("listening on "):
            self.stop(sig=signal.SIGKILL)
            raise RuntimeError(f"instance did not start ({line!r}):\n{self.log()}")
        self.url = line.removeprefix("listening on ")
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def log(self) -> str:
        """Everything the instance wrote on stderr so far."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Signal the process and wait for it; SIGKILL if it outlives ``timeout``."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def __enter__(self) -> InstanceProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        self._log.close()


class KilnDouble:
    """Kiln's ``/instances`` endpoints, in-process, recording every request.

    ``POST /instances`` answers 201 ``{"id": "inst-N"}``; ``POST
    /instances/<id>/heartbeat`` answers 200 for a known id, 404 after :meth:`forget`.
    """

    def __init__(self, port: int = 0) -> None:
        self.lock = threading.Lock()
        self.registrations: list[dict[str, Any]] = []
        self.heartbeats: list[tuple[str, dict[str, Any]]] = []
        self.authorizations: list[str | None] = []
        self.known: set[str] = set()
        app = Flask("kiln-double")

        @app.post("/instances")
        def register():
            with self.lock:
                self.registrations.append(request.get_json())
                self.authorizations.append(request.headers.get("Authorization"))
                kiln_id = f"inst-{len(self.registrations)}"
                self.known.add(kiln_id)
            return jsonify({"id": kiln_id}), 201

        @app.post("/instances/<kiln_id>/heartbeat")
        def heartbeat(kiln_id: str):
            with self.lock:
                self.heartbeats.append((kiln_id, request.get_json()))
                self.authorizations.append(request.headers.get("Authorization"))
                if kiln_id not in self.known:
                    return jsonify({"error": "not_found", "message": "unknown instance"}), 404
            return jsonify({"ok": True})

        self._server = make_server("127.0.0.1", port, app, threaded=True)
        self.port = self._server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def forget(self) -> None:
        """Drop every registered instance, as a Kiln restart with lost state would."""
        with self.lock:
            self.known.clear()

    def heartbeats_for(self, kiln_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [body for hid, body in self.heartbeats if hid == kiln_id]

    def start(self) -> KilnDouble:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5.0)
        self._server.server_close()

    def __enter__(self) -> KilnDouble:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
