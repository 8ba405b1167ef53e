"""Access control and request-forgery defences, applied to every request before its view.

* **Tokens and scopes** (:mod:`kiln.core.access`): with tokens configured, every endpoint
  except the open ones (``/health``, ``/``, ``/openapi.json``, ``/dispatcher/health-check``,
  the dashboard's login and static files) needs one: ``read`` for reads (and the two dry-run
  POSTs, ``/scheduler/schedule-next`` and ``/predict``), ``write`` for changes, ``admin`` for
  ``PUT /scheduler/policy``. ``/metrics`` takes ``KILN_METRICS_TOKEN`` or a ``read`` token.
  A token comes as ``Authorization: Bearer <token>``, or from the dashboard's login cookie.
  No token configured: nothing is checked (the embedded default).
* **Forgery**, checked with or without tokens: a state-changing request (POST, PUT, PATCH,
  DELETE) whose ``Origin`` or ``Sec-Fetch-Site`` says it comes from another site is refused
  (403), and one with a body that is not JSON is refused (415) — an HTML form cannot send
  JSON, and a cross-site script cannot without a CORS preflight Kiln never grants. The
  dashboard's own forms (login, logout) and every request authenticated by the cookie carry
  a CSRF token: HMAC(token, "kiln-csrf") once signed in, a random double-submit cookie
  before.

docs/security.md is the threat model.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from typing import Any
from urllib.parse import urlsplit

from apispec import BasePlugin
from flask import Flask, Request, current_app, g, jsonify, redirect, request, url_for
from werkzeug.middleware.proxy_fix import ProxyFix

from kiln.core import audit
from kiln.core.access import ADMIN, READ, WRITE, AccessPolicy, hash_token
from kiln.core.config import Settings
from kiln.web.errors import body

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}]
METRICS = "metrics"  # the scope /metrics asks for (see AccessPolicy.opens_metrics)
TOKEN_COOKIE = "kiln_token"
CSRF_COOKIE = "kiln_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
FORM_ENDPOINTS = frozenset({"ui_login.login", "ui_login.logout"})  # take HTML forms

OPEN = frozenset({"/", "/health", "/openapi.json", "/dispatcher/health-check", "/ui/login",
                  "/ui/logout"})  # fmt: skip
OPEN_PREFIXES = ("/ui/static/",)
READ_ONLY_POSTS = frozenset({("POST", "/scheduler/schedule-next"), ("POST", "/predict")})
ADMIN_ROUTES = frozenset({("PUT", "/scheduler/policy")})


def required_scope(method: str, path: str) -> str | None:
    """The scope ``method path`` needs (None: open to anyone). ``path`` may be a concrete
    path or an OpenAPI template (``/workflows/{workflow_id}``): the rules name no parameter."""
    if method == "OPTIONS" or path in OPEN or path.startswith(OPEN_PREFIXES):
        return None
    if path == "/metrics":
        return METRICS
    if (method, path) in ADMIN_ROUTES:
        return ADMIN
    if method not in MUTATING or (method, path) in READ_ONLY_POSTS:
        return READ
    return WRITE


def policy() -> AccessPolicy:
    return current_app.extensions["kiln_access"]  # type: ignore[no-any-return]


def install(app: Flask, settings: Settings) -> None:
    """Check every request; a test's ``KILN_API_TOKEN``/``KILN_API_TOKENS``/
    ``KILN_METRICS_TOKEN`` in the environment count when ``settings`` has none."""
    env = os.environ
    app.extensions["kiln_access"] = AccessPolicy.from_config(
        api_token=settings.api_token or env.get("KILN_API_TOKEN", ""),
        api_tokens=settings.api_tokens or env.get("KILN_API_TOKENS", ""),
        metrics_token=settings.metrics_token or env.get("KILN_METRICS_TOKEN", ""),
    )
    hops = settings.proxy_hops or int(env.get("KILN_PROXY_HOPS") or 0)
    if hops:
        # The scheme and host the browser used, so the Origin check and the cookies' Secure
        # flag see them: trusted from exactly ``hops`` proxies (docs/security.md).
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops
        )
    app.before_request(_guard)
    app.before_request(_name_actor)
    app.teardown_request(_forget_actor)
    app.after_request(_set_csrf_cookie)

    @app.context_processor
    def _auth_globals() -> dict[str, Any]:
        return {"csrf_token": csrf_token, "signed_in": signed_in, "auth_enabled": policy().enabled}


def _guard():  # type: ignore[no-untyped-def]
    # Every request passes here: the request object is looked up once (each ``request.x``
    # goes through a context-local proxy), and the credentials only when they decide.
    req = request._get_current_object()  # type: ignore[attr-defined]
    method = req.method
    if method in MUTATING:
        refused = _cross_site(req) or _not_json(req)
        if refused is not None:
            return refused
    need = required_scope(method, req.path)
    if need is None:
        return None
    access = policy()
    if need == METRICS:
        if not access.metrics_closed or access.opens_metrics(_credentials(req)[0]):
            return None
        return _unauthorized("KILN_METRICS_TOKEN or a token with the 'read' scope")
    if not access.enabled:
        return None
    token, from_cookie = _credentials(req)
    scopes = access.scopes_of(token)
    if scopes is None:
        if method == "GET" and req.path.startswith("/ui/"):
            if not req.args.get("fragment"):
                return redirect(url_for("ui_login.login", next=req.full_path.rstrip("?")))
        return _unauthorized(f"a token with the {need!r} scope")
    if need not in scopes:
        return _error(403, "forbidden", f"this token lacks the {need!r} scope", scope=need)
    if from_cookie and method in MUTATING and not _csrf_ok():
        return _error(
            403, "csrf_token_invalid", f"a request signed in by cookie needs the {CSRF_HEADER} "
            "header the dashboard's pages carry"
        )  # fmt: skip
    return None


def _name_actor() -> None:
    """Events this request causes name it: ``api``, or ``api token <sha256 prefix>`` (the
    prefix of the digest ``KILN_API_TOKENS`` lists it by, never the token)."""
    token, _ = _credentials(request._get_current_object())  # type: ignore[attr-defined]
    g.kiln_audit = audit.begin(f"api token {hash_token(token)[:12]}" if token else "api")


def _forget_actor(_exc: BaseException | None) -> None:
    if "kiln_audit" in g:
        audit.end(g.pop("kiln_audit"))


def _credentials(req: Request) -> tuple[str, bool]:
    """``(token, came from the login cookie)``; ``("", False)`` when none was given."""
    scheme, _, given = req.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and given.strip():
        return given.strip(), False
    cookie = req.cookies.get(TOKEN_COOKIE, "")
    return cookie, bool(cookie)


def _cross_site(req: Request):  # type: ignore[no-untyped-def]
    """403 when the browser says the request comes from another site. Clients that are not
    browsers send neither header and pass; behind a proxy, see docs/security.md."""
    site = req.headers.get("Sec-Fetch-Site")
    origin = req.headers.get("Origin")
    if site is not None and site not in ("same-origin", "none"):
        reason = f"Sec-Fetch-Site is {site!r}"
    elif origin is not None and urlsplit(origin).netloc != req.host:
        reason = f"Origin {origin!r} is not this server ({req.host})"
    else:
        return None
    return _error(403, "cross_site_request", f"state changes must come from this site: {reason}")


def _not_json(req: Request):  # type: ignore[no-untyped-def]
    """415 for a body that is not JSON (what HTML forms send); the dashboard's own forms
    pass with a valid CSRF token. A request without body and type (``cancel``) passes."""
    if req.endpoint in FORM_ENDPOINTS:
        if _csrf_ok(req.form.get(CSRF_FIELD)):
            return None
        return _error(403, "csrf_token_invalid", "the form's CSRF token is missing or stale; "
                      "reload the page and try again")  # fmt: skip
    mimetype = req.mimetype
    chunked = "chunked" in req.headers.get("Transfer-Encoding", "").lower()
    if not (req.content_length or chunked or mimetype):
        return None
    if mimetype == "application/json" or mimetype.endswith("+json"):
        return None
    return _error(
        415, "unsupported_media_type", "state-changing requests take a JSON body "
        f"(Content-Type: application/json), not {mimetype or 'an untyped one'!r}"
    )  # fmt: skip


# --- the dashboard's session and CSRF token -------------------------------------------------


def signed_in() -> bool:
    cookie = request.cookies.get(TOKEN_COOKIE, "")
    return bool(cookie) and policy().scopes_of(cookie) is not None


def csrf_token() -> str:
    """The CSRF token the current page carries: bound to the login cookie once signed in,
    else a random double-submit value (set as a cookie with this response)."""
    expected = _expected_csrf()
    if expected:
        return expected
    g.kiln_new_csrf = secrets.token_hex(32)
    return g.kiln_new_csrf  # type: ignore[no-any-return]


def _expected_csrf() -> str:
    if signed_in():
        key = request.cookies[TOKEN_COOKIE].encode()
        return hmac.new(key, b"kiln-csrf", hashlib.sha256).hexdigest()
    return request.cookies.get(CSRF_COOKIE, "") or g.get("kiln_new_csrf", "")


def _csrf_ok(given: str | None = None) -> bool:
    given = given or request.headers.get(CSRF_HEADER, "")
    expected = _expected_csrf()
    return bool(given and expected) and hmac.compare_digest(given, expected)


def _set_csrf_cookie(response):  # type: ignore[no-untyped-def]
    value = g.get("kiln_new_csrf")
    if value and not request.cookies.get(CSRF_COOKIE):
        response.set_cookie(
            CSRF_COOKIE, value, httponly=True, samesite="Strict", secure=request.is_secure,
            path="/ui",
        )  # fmt: skip
    return response


def set_login_cookie(response: Any, token: str) -> None:
    """The dashboard's session: the token itself, unreadable by scripts (HttpOnly), never
    sent with a request another site starts (SameSite=Strict), HTTPS-only behind TLS."""
    response.set_cookie(
        TOKEN_COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure, path="/"
    )


def clear_login_cookie(response: Any) -> None:
    response.delete_cookie(TOKEN_COOKIE, path="/", samesite="Strict", httponly=True)


# --- answers ----------------------------------------------------------------------------------


def _error(status: int, code: str, message: str, **details: Any):  # type: ignore[no-untyped-def]
    response = jsonify(body(code, message, details))
    response.status_code = status
    return response


def _unauthorized(what: str):  # type: ignore[no-untyped-def]
    response = _error(401, "unauthorized", f"this endpoint needs 'Authorization: Bearer <token>' "
                      f"with {what}")  # fmt: skip
    response.headers["WWW-Authenticate"] = 'Bearer realm="kiln"'
    return response


class SecurityPlugin(BasePlugin):  # type: ignore[misc]
    """Declares each operation's security in the OpenAPI document from
    :func:`required_scope`, so the document and the checks cannot disagree."""

    def operation_helper(self, path=None, operations=None, **kwargs):  # type: ignore[no-untyped-def]
        for method, operation in (operations or {}).items():
            need = required_scope(method.upper(), path or "")
            if need is None:
                operation.pop("security", None)
                continue
            operation["security"] = SECURITY
            what = "KILN_METRICS_TOKEN or `read`" if need == METRICS else f"`{need}`"
            note = f"Needs a token with the {what} scope when tokens are configured."
            operation["description"] = f"{operation.get('description', '')}\n\n{note}".strip()


def document(spec: Any) -> None:
    """Install :class:`SecurityPlugin`; call before any blueprint is registered."""
    plugin = SecurityPlugin()
    plugin.init_spec(spec)
    spec.plugins.append(plugin)
