"""Issue 12, defect 3: a context's ``source`` is an http(s) URL, read only up to
``KILN_SOURCE_MAX_BYTES``, or a file inside ``KILN_SOURCE_DIRS`` (none by default: local
paths are refused). Anything else is 422 at creation and nothing is written; a source stored
before the check is refused by the worker, for good."""

from __future__ import annotations

import dataclasses
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kiln.core.errors import PermanentFailure
from kiln.core.pipelines import validate_config
from kiln.store import pipeline_contexts as cx
from kiln.store import pipelines as pl
from kiln.web.app import create_app
from kiln.workers.pipeline_shards import execute_shard

HANDLER = "tests.handlers:tag_rows"


@pytest.fixture
def client(pg_kiln, monkeypatch):
    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    return create_app(pg_kiln).test_client()


def allow_dirs(kiln, monkeypatch, *dirs, **more):
    settings = dataclasses.replace(kiln.settings, source_dirs=tuple(map(str, dirs)), **more)
    monkeypatch.setattr(kiln, "settings", settings)


def create_source(client, source):
    return client.post("/contexts", json={"name": "c", "source": source, "num_shards": 1})


def stored_pipeline(kiln, source):
    """A pipeline on a context stored as before the check: its source never checked."""
    context_id = kiln.txn(
        lambda c: cx.create_context_txn(
            c, name="old", config={}, shards=None, num_shards=1, source=source
        )
    )
    config = validate_config(
        {"pipeline_name": "p", "pipeline_type": "python", "model_config": {"handler": HANDLER}}
    )
    return kiln.txn(lambda c: pl.create_pipeline_txn(c, config, context_id=context_id))


@pytest.fixture
def server():
    """A real HTTP server: ``/rows.json`` answers 3 rows, ``/endless`` streams without end
    (and without a Content-Length) until the client hangs up; ``sent`` counts its bytes."""
    sent = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if self.path == "/rows.json":
                body = json.dumps([{"text": "a"}, {"text": "b"}, {"text": "c"}]).encode()
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.end_headers()
            chunk = b" " * 65536
            try:
                while sent[0] < 1 << 30:
                    self.wfile.write(chunk)
                    sent[0] += len(chunk)
            except OSError:  # the client stopped reading: what the test wants
                pass

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.sent = sent
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_a_local_path_is_refused_when_no_source_directory_is_configured(client):
    for source in ("/etc/passwd", "file:///etc/passwd"):
        r = create_source(client, source)
        assert r.status_code == 422, r.get_json()
        assert r.get_json()["details"]["field"] == "source"
        assert "KILN_SOURCE_DIRS" in r.get_json()["message"]
    assert client.get("/contexts/1").status_code == 404


def test_a_path_outside_the_source_directories_is_refused_however_it_is_spelled(
    client, pg_kiln, monkeypatch, tmp_path
):
    allowed, outside = tmp_path / "data", tmp_path / "private"
    allowed.mkdir()
    outside.mkdir()
    (outside / "secret.json").write_text("[1]")
    (allowed / "link.json").symlink_to(outside / "secret.json")
    (allowed / "rows.json").write_text("[1, 2]")
    allow_dirs(pg_kiln, monkeypatch, allowed)
    for source in (
        str(outside / "secret.json"),
        f"{allowed}/../private/secret.json",
        str(allowed / "link.json"),
        "data/rows.json",  # relative: depends on the reader's directory
        f"{allowed}-evil/rows.json",
    ):
        r = create_source(client, source)
        assert r.status_code == 422, (source, r.get_json())
    assert client.get("/contexts/1").status_code == 404
    ok = create_source(client, str(allowed / "rows.json"))
    assert ok.status_code == 201, ok.get_json()


def test_only_http_and_https_urls_are_accepted(client):
    for source in ("ftp://example.org/rows.json", "gopher://example.org/", "s3://b/k",
                   "http:///no-host"):  # fmt: skip
        r = create_source(client, source)
        assert r.status_code == 422, (source, r.get_json())
    assert create_source(client, "https://example.org/rows.json").status_code == 201


def test_the_worker_refuses_a_stored_local_source_for_good(pg_kiln):
    pid = stored_pipeline(pg_kiln, "/etc/passwd")
    with pytest.raises(PermanentFailure, match="KILN_SOURCE_DIRS"):
        execute_shard(pg_kiln, pid, 0)


def test_a_url_source_is_read_and_one_larger_than_the_cap_stops_at_the_cap(
    pg_kiln, monkeypatch, server
):
    allow_dirs(pg_kiln, monkeypatch, source_max_bytes=1024 * 1024)
    pid = stored_pipeline(pg_kiln, f"{server.url}/rows.json")
    out = execute_shard(pg_kiln, pid, 0)
    assert out["samples"] == 3
    endless = stored_pipeline(pg_kiln, f"{server.url}/endless")
    with pytest.raises(PermanentFailure, match="larger than 1048576 bytes"):
        execute_shard(pg_kiln, endless, 0)
    # The reader hung up near the cap: the server never got to send its gigabyte.
    assert server.sent[0] < 64 * 1024 * 1024


def test_a_file_source_larger_than_the_cap_fails_for_good(pg_kiln, monkeypatch, tmp_path):
    (tmp_path / "big.json").write_text(json.dumps(["x" * 100] * 100))
    allow_dirs(pg_kiln, monkeypatch, tmp_path, source_max_bytes=1000)
    pid = stored_pipeline(pg_kiln, str(tmp_path / "big.json"))
    with pytest.raises(PermanentFailure, match="larger than 1000 bytes"):
        execute_shard(pg_kiln, pid, 0)
