"""Debian's PgBouncer in transaction mode in front of the local PostgreSQL, for a benchmark to
go through (``bench/throughput.py --pgbouncer``); tests/integration/test_pgbouncer.py starts
it the same way."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa


@contextlib.contextmanager
def pgbouncer(direct_url: str, *, pool_size: int = 5) -> Iterator[str]:
    """Run PgBouncer (``pool_mode = transaction``, ``default_pool_size = pool_size``) on a free
    port in front of the server ``direct_url`` names; yield ``direct_url`` through it."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.access(binary, os.X_OK):
        raise SystemExit("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    direct = sa.make_url(direct_url)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    folder = Path(tempfile.mkdtemp(prefix="kiln-bench-pgbouncer-"))
    folder.chmod(0o755)  # readable by the postgres user it drops to when started as root
    (folder / "users.txt").write_text(f'"{direct.username}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={direct.host} port={direct.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = {pool_size}\n"
        "reserve_pool_size = 0\nmax_client_conn = 1000\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    for f in folder.iterdir():
        f.chmod(0o644)
    as_user = ["-u", "postgres"] if os.geteuid() == 0 else []  # it refuses to run as root
    with open(folder / "pgbouncer.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, *as_user, str(folder / "pgbouncer.ini")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_accepting(proc, port)
            yield direct.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            shutil.rmtree(folder, ignore_errors=True)


def _wait_accepting(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"pgbouncer exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("timed out waiting for pgbouncer to accept connections")
