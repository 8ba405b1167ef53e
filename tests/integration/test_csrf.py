"""Cross-site request forgery (issue 12, defect 10): with no token set, a form on another
site could cancel, pause or resume runs. State changes now need a JSON body (or none), and
the browser's Origin / Sec-Fetch-Site must say this site; the dashboard's login cookie is
SameSite=Strict and HttpOnly, and whatever it signs in carries a CSRF token."""

from __future__ import annotations

import re

import pytest

import tests.handlers  # noqa: F401 - registers the handlers the definitions name
from kiln.web.app import create_app

DEFINITION = {"name": "w", "tasks": [{"name": "a", "handler": "noop"}]}
TOKEN = "dash-token"


@pytest.fixture
def open_client(kiln, monkeypatch):
    """No token configured: the embedded default."""
    for name in ("KILN_API_TOKEN", "KILN_API_TOKENS", "KILN_METRICS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return create_app(kiln).test_client()


@pytest.fixture
def client(kiln, monkeypatch):
    for name in ("KILN_API_TOKENS", "KILN_METRICS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KILN_API_TOKEN", TOKEN)
    return create_app(kiln).test_client()


def run_status(client, run_id, **headers):
    return client.get(f"/workflows/{run_id}", headers=headers).get_json()["status"]


def operations(client, **headers):
    return client.get("/dispatcher/all-operations", headers=headers).get_json()["operations"]


def test_a_cross_site_form_post_cannot_cancel_pause_or_resume_a_run(open_client):
    run_id = open_client.post("/workflows", json=DEFINITION).get_json()["id"]
    evil = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    for verb in ("cancel", "pause", "resume"):
        # What <form method=post action=http://kiln/workflows/1/cancel> sends.
        r = open_client.post(f"/workflows/{run_id}/{verb}", data={"x": "1"}, headers=evil)
        assert r.status_code == 403, (verb, r.get_json())
        assert r.get_json()["error"] == "cross_site_request"
    assert operations(open_client) == []


def test_a_form_body_is_refused_with_415_even_without_origin_headers(open_client):
    run_id = open_client.post("/workflows", json=DEFINITION).get_json()["id"]
    for content_type in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                         "text/plain"):  # fmt: skip
        r = open_client.post(f"/workflows/{run_id}/cancel", data="x=1", content_type=content_type)
        assert r.status_code == 415, content_type
        assert r.get_json()["error"] == "unsupported_media_type"
    r = open_client.post("/dispatcher/stop-pipeline", data='{"pipeline_id": 1}',
                         content_type="text/plain")  # fmt: skip
    assert r.status_code == 415
    assert operations(open_client) == []


def test_a_bodiless_post_from_another_origin_is_refused_but_same_origin_passes(open_client):
    run_id = open_client.post("/workflows", json=DEFINITION).get_json()["id"]
    # fetch(url, {method: "POST", mode: "no-cors"}) from another site: no body, an Origin.
    other = open_client.post(f"/workflows/{run_id}/pause", headers={"Origin": "http://evil:80"})
    assert other.status_code == 403
    same_site = open_client.post(
        f"/workflows/{run_id}/pause", headers={"Sec-Fetch-Site": "same-site"}
    )
    assert same_site.status_code == 403  # a sibling subdomain is another origin
    mine = open_client.post(
        f"/workflows/{run_id}/pause",
        headers={"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"},
    )
    assert mine.status_code == 200
    # Clients that are not browsers (curl, the SDK) send no Origin and no body: they pass.
    assert open_client.post(f"/workflows/{run_id}/resume").status_code == 200
    assert [o["operation"] for o in operations(open_client)] == ["resume", "pause"]


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf-token" content="([0-9a-f]+)"', html).group(1)


def login(client) -> str:
    """Sign in through the dashboard's form; return the CSRF token its pages then carry."""
    form = client.get("/ui/login?next=/ui/runs").text
    field = re.search(r'name="csrf_token" value="([0-9a-f]+)"', form).group(1)
    r = client.post("/ui/login", data={"token": TOKEN, "csrf_token": field, "next": "/ui/runs"})
    assert r.status_code == 302 and r.headers["Location"] == "/ui/runs"
    cookie = next(c for c in r.headers.getlist("Set-Cookie") if c.startswith("kiln_token="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    return csrf_of(client.get("/ui/runs").text)


def test_the_login_form_sets_a_strict_http_only_cookie_and_needs_its_csrf_token(client):
    assert client.get("/ui/runs").status_code == 302
    client.get("/ui/login")
    refused = client.post("/ui/login", data={"token": TOKEN, "csrf_token": "forged"})
    assert refused.status_code == 403 and client.get_cookie("kiln_token") is None
    form = client.get("/ui/login").text
    field = re.search(r'name="csrf_token" value="([0-9a-f]+)"', form).group(1)
    wrong = client.post("/ui/login", data={"token": "guess", "csrf_token": field})
    assert wrong.status_code == 401 and "not one this Kiln accepts" in wrong.text
    csrf = login(client)
    assert client.get("/ui/runs").status_code == 200
    assert client.get("/workflows").status_code == 200  # the cookie reads the API too
    assert "signed in" in client.get("/ui/runs").text
    # Signing out needs the token as well, and ends the session.
    assert client.post("/ui/logout", data={"csrf_token": "forged"}).status_code == 403
    out = client.post("/ui/logout", data={"csrf_token": csrf})
    assert out.status_code == 302 and client.get_cookie("kiln_token") is None
    assert client.get("/workflows").status_code == 401


def test_a_change_signed_in_by_the_cookie_needs_the_pages_csrf_token(client):
    csrf = login(client)
    run_id = client.post("/workflows", json=DEFINITION, headers={"X-CSRF-Token": csrf})
    assert run_id.status_code == 201
    url = f"/workflows/{run_id.get_json()['id']}/cancel"
    forged = client.post(url)  # the cookie alone, as a forged request would carry it
    assert forged.status_code == 403 and forged.get_json()["error"] == "csrf_token_invalid"
    assert client.post(url, headers={"X-CSRF-Token": "0" * 64}).status_code == 403
    assert client.post(url, headers={"X-CSRF-Token": csrf}).status_code == 200
    # A bearer token is never sent by a browser on its own, so it needs no CSRF token.
    assert client.post(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_behind_a_trusted_proxy_the_origin_check_and_cookies_see_the_browsers_site(
    kiln, monkeypatch
):
    monkeypatch.setenv("KILN_API_TOKEN", TOKEN)
    monkeypatch.setenv("KILN_PROXY_HOPS", "1")
    client = create_app(kiln).test_client()
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "kiln.example.com"}
    form = client.get("/ui/login", headers=proxied).text
    field = re.search(r'name="csrf_token" value="([0-9a-f]+)"', form).group(1)
    r = client.post(
        "/ui/login",
        data={"token": TOKEN, "csrf_token": field},
        headers={**proxied, "Origin": "https://kiln.example.com"},
    )
    assert r.status_code == 302
    cookie = next(c for c in r.headers.getlist("Set-Cookie") if c.startswith("kiln_token="))
    assert "Secure" in cookie
    evil = {**proxied, "Origin": "https://evil.example", "Authorization": f"Bearer {TOKEN}"}
    assert client.post("/workflows", json=DEFINITION, headers=evil).status_code == 403
