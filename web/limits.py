"""Limits on every JSON request body, checked on the raw bytes before any parser sees them:
Python's parser recurses (100,000 nested brackets crash it) and turns a 5,000-digit integer
into an error of its own, so neither may reach it.

* nesting deeper than ``KILN_MAX_JSON_DEPTH`` (default 64): **413** ``limit_exceeded``;
* an integer outside the 64-bit range, ``NaN``/``Infinity``, or a number that overflows to
  infinity: **422** ``invalid_value``.
"""

from __future__ import annotations

from flask import Flask, request

from kiln.core.limits import check_json_text


def install(app: Flask, max_depth: int) -> None:
    @app.before_request
    def check_json_body():  # type: ignore[no-untyped-def]
        # Only bodies a JSON parser would read (flask and webargs parse JSON mimetypes only).
        if request.is_json and request.content_length != 0:
            check_json_text(request.get_data(cache=True), max_depth=max_depth)
