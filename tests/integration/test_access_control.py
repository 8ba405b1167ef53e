"""Read access control (issue 12): with tokens configured every endpoint but the open ones
needs one, each token carries scopes (read < write < admin) and is configured by its sha256,
several at once; /metrics may have its own token; /health stays open."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import tests.handlers  # noqa: F401 - registers the handlers the definitions name
from kiln.cli.main import main
from kiln.core.access import hash_token
from kiln.web.app import create_app

READER, WRITER, ADMIN, OLD, SCRAPER = "r-token", "w-token", "a-token", "old-token", "m-token"
DEFINITION = {"name": "w", "tasks": [{"name": "a", "handler": "noop"}]}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(pg_kiln, monkeypatch):
    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    monkeypatch.setenv(
        "KILN_API_TOKENS",
        f"{hash_token(READER)}:read; {hash_token(WRITER)}:write;{hash_token(ADMIN)}:admin;"
        f"{hash_token(OLD)}:read,write",
    )
    monkeypatch.setenv("KILN_METRICS_TOKEN", SCRAPER)
    return create_app(pg_kiln).test_client()


def test_reads_without_a_token_are_refused_with_401_when_tokens_are_configured(client):
    for url in ("/workflows", "/pipelines", "/dispatcher/all-operations", "/scheduler/stats",
                "/instances", "/health/detailed", "/ui/runs?fragment=1"):  # fmt: skip
        r = client.get(url)
        assert r.status_code == 401, url
        assert r.get_json()["error"] == "unauthorized"
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="kiln"'
    assert client.get("/workflows", headers=bearer("not-a-token")).status_code == 401
    # A dashboard page sends the browser to the sign-in form instead.
    page = client.get("/ui/runs")
    assert page.status_code == 302 and page.headers["Location"] == "/ui/login?next=/ui/runs"


def test_health_and_the_api_document_stay_open(client):
    assert client.get("/health").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/dispatcher/health-check").status_code == 200


def test_each_scope_opens_what_it_names_and_a_wrong_scope_is_refused_with_403(client):
    assert client.get("/workflows", headers=bearer(READER)).status_code == 200
    assert client.post("/scheduler/schedule-next", headers=bearer(READER)).status_code == 200
    refused = client.post("/workflows", json=DEFINITION, headers=bearer(READER))
    assert refused.status_code == 403
    assert refused.get_json()["error"] == "forbidden"
    assert refused.get_json()["details"] == {"scope": "write"}
    created = client.post("/workflows", json=DEFINITION, headers=bearer(WRITER))
    assert created.status_code == 201
    cancel = f"/workflows/{created.get_json()['id']}/cancel"
    assert client.post(cancel, headers=bearer(READER)).status_code == 403
    assert client.post(cancel, headers=bearer(WRITER)).status_code == 200
    policy = {"policy": "Fair"}
    assert client.put("/scheduler/policy", json=policy, headers=bearer(WRITER)).status_code == 403
    assert client.put("/scheduler/policy", json=policy, headers=bearer(ADMIN)).status_code == 200
    assert client.get("/workflows", headers=bearer(ADMIN)).status_code == 200  # admin ⊃ read


def test_two_tokens_work_at_once_so_one_can_be_rotated_without_downtime(pg_kiln, monkeypatch):
    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    monkeypatch.delenv("KILN_METRICS_TOKEN", raising=False)
    both = f"{hash_token(OLD)}:write;{hash_token(WRITER)}:write"
    monkeypatch.setenv("KILN_API_TOKENS", both)
    during = create_app(pg_kiln).test_client()
    for token in (OLD, WRITER):
        assert during.post("/workflows", json=DEFINITION, headers=bearer(token)).status_code == 201
    monkeypatch.setenv("KILN_API_TOKENS", f"{hash_token(WRITER)}:write")
    after = create_app(pg_kiln).test_client()
    assert after.get("/workflows", headers=bearer(OLD)).status_code == 401
    assert after.get("/workflows", headers=bearer(WRITER)).status_code == 200


def test_the_plaintext_api_token_keeps_every_scope(pg_kiln, monkeypatch):
    monkeypatch.delenv("KILN_API_TOKENS", raising=False)
    monkeypatch.setenv("KILN_API_TOKEN", "legacy")
    client = create_app(pg_kiln).test_client()
    assert client.get("/workflows").status_code == 401
    assert client.get("/workflows", headers=bearer("legacy")).status_code == 200
    r = client.put("/scheduler/policy", json={"policy": "FIFO"}, headers=bearer("legacy"))
    assert r.status_code == 200


def test_metrics_take_their_own_token_or_a_read_token(client):
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer(SCRAPER)).status_code == 200
    assert client.get("/metrics", headers=bearer(READER)).status_code == 200
    # The scraper's token opens nothing else.
    assert client.get("/workflows", headers=bearer(SCRAPER)).status_code == 401


def test_only_a_metrics_token_closes_only_the_metrics(pg_kiln, monkeypatch):
    for name in ("KILN_API_TOKEN", "KILN_API_TOKENS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KILN_METRICS_TOKEN", SCRAPER)
    client = create_app(pg_kiln).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer(SCRAPER)).status_code == 200
    assert client.get("/workflows").status_code == 200


def test_the_openapi_document_declares_bearer_auth_on_every_protected_operation(client):
    paths = client.get("/openapi.json").get_json()["paths"]
    declared = {
        (method.upper(), path): "security" in operation
        for path, operations in paths.items()
        for method, operation in operations.items()
        if isinstance(operation, dict)
    }
    assert declared.pop(("GET", "/dispatcher/health-check")) is False
    assert all(declared.values()), [k for k, v in declared.items() if not v]
    assert "`admin` scope" in paths["/scheduler/policy"]["put"]["description"]


def test_kiln_token_hash_prints_the_sha256_that_kiln_api_tokens_lists():
    runner = CliRunner()
    result = runner.invoke(main, ["token", "hash"], input="s3cret\n")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == hash_token("s3cret")
    scoped = runner.invoke(main, ["token", "hash", "--scopes", "read,write"], input="s3cret\n")
    assert scoped.output.strip() == f"{hash_token('s3cret')}:read,write"
    assert runner.invoke(main, ["token", "hash", "--scopes", "root"], input="x\n").exit_code != 0


def test_a_malformed_token_list_stops_the_web_app_from_starting(pg_kiln, monkeypatch):
    monkeypatch.setenv("KILN_API_TOKENS", "plaintext-not-a-hash:read")
    with pytest.raises(ValueError, match="KILN_API_TOKENS"):
        create_app(pg_kiln)
