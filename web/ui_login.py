"""The dashboard's sign-in: a form that exchanges an API token for the login cookie (see
:func:`kiln.web.auth.set_login_cookie`), and sign-out. Both forms carry the CSRF token,
which :mod:`kiln.web.auth` checks before these views run."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for

from kiln.web.auth import clear_login_cookie, policy, set_login_cookie

bp = Blueprint("ui_login", __name__, url_prefix="/ui")


def _next() -> str:
    """Where to go after signing in: a dashboard page, never another site."""
    target = request.values.get("next", "")
    if target.startswith("/ui/") and not target.startswith("/ui/log"):
        return target.rstrip("?")
    return url_for("ui.runs")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if not policy().enabled:  # nothing to sign in to: the dashboard is open
        return redirect(_next())
    if request.method == "GET":
        return render_template("ui/login.html", next=_next(), error=None)
    token = request.form.get("token", "").strip()
    if policy().scopes_of(token) is None:
        error = "That token is not one this Kiln accepts."
        return render_template("ui/login.html", next=_next(), error=error), 401
    response = redirect(_next())
    set_login_cookie(response, token)
    return response


@bp.post("/logout")
def logout() -> Any:
    response = redirect(url_for("ui_login.login"))
    clear_login_cookie(response)
    return response
