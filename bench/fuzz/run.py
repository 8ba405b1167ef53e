"""Schemathesis against a real `kiln web` with a token configured (a measurement, not a test).

Starts gunicorn as the Procfile does, on a fresh PostgreSQL database, with KILN_API_TOKEN
set, and runs every schemathesis check (``--checks all``) on every operation of
``/openapi.json``, sending the token. Prints schemathesis' summary; the run passes when it
reports no failures (no 5xx, no response that breaks the document).

    .venv/bin/python bench/fuzz/run.py [--max-examples 200] [--seed 1]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
import sqlalchemy as sa

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TOKEN = "fuzz-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-examples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    db = f"kiln_fuzz_{os.getpid()}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {db}"))
    url = sa.make_url(PG_ADMIN).set(database=db).render_as_string(hide_password=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env |= {"KILN_DATABASE_URL": url, "KILN_API_TOKEN": TOKEN}
    bin_dir = Path(sys.executable).parent
    port = free_port()
    web = None
    try:
        subprocess.run([str(bin_dir / "kiln"), "db", "upgrade"], env=env, check=True)
        web = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--workers",
                "2",
                "--threads",
                "4",
                "--bind",
                f"127.0.0.1:{port}",
                "kiln.web.app:create_app()",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{base}/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("kiln web did not start")
            time.sleep(0.1)
        run = subprocess.run(
            [
                str(bin_dir / "schemathesis"),
                "--config-file",
                str(HERE / "schemathesis.toml"),
                "run",
                f"{base}/openapi.json",
                "--checks",
                "all",
                "--header",
                f"Authorization: Bearer {TOKEN}",
                "--max-examples",
                str(args.max_examples),
                "--seed",
                str(args.seed),
                "--workers",
                "2",
                "--no-color",
            ],
            env=env,
            cwd=HERE,
        )
        return run.returncode
    finally:
        if web is not None:
            web.terminate()
            web.wait(10)
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        admin.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
