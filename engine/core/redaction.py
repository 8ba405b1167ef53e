"""What Kiln shows of secrets: ``***``. Every response, dashboard page, CLI output and log line
passes what it shows through :func:`redact` (or :func:`redact_text` for plain text); the
stored values stay intact, since workers need them.

A secret is the value of a key naming one (:func:`is_secret_key`), the password or token in
a URL (``https://user:***@host``, ``?api_key=***``), a ``name=value`` pair whose name names
one (``password=***``), or the credential after ``Bearer`` or ``Basic`` in text.
"""

from __future__ import annotations

import functools
import re
from typing import Any

SECRET_MARKERS = (
    "key",
    "secret",
    "token",
    "password",
    "passwd",
    "authorization",
    "auth",
    "credential",
    "bearer",
    "cookie",
    "session",
)
REDACTED = "***"

# Names that contain a marker but hold no secret: token counts of LLM requests
# (max_tokens, prompt_tokens...), tokenizers, authors, keywords.
_BENIGN = re.compile(
    r"(?:max|min|prompt|completion|total|input|output|cached|reasoning|num|new|generated)"
    r"[_-]?tokens|tokeniz\w*|author(?!i)\w*|keyword\w*"
)
# scheme://user:password@ or scheme://token@ (userinfo stops at '/', '@' and blanks)
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<info>[^/@\s]+)@")
# name=value in a query string, or in text such as a log line ("password=hunter2")
_QUERY_PARAM = re.compile(r"(?P<sep>^|[?&;\s])(?P<name>[^=&;#\s]+)=(?P<value>[^&;#\s]*)")
_SCHEME_CREDENTIAL = re.compile(r"\b(?P<scheme>Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.I)


def is_secret_key(key: Any) -> bool:
    """``key`` names a secret: it contains one of :data:`SECRET_MARKERS` (any case, any
    position: ``api_key``, ``X-Api-Bearer``, ``db_credentials``), except names of counts
    and tools such as ``max_tokens`` or ``tokenizer``."""
    return _secret_name(key if isinstance(key, str) else str(key))


@functools.lru_cache(maxsize=4096)
def _secret_name(key: str) -> bool:
    # Cached: every API answer redacts the same few field names over and over.
    name = _BENIGN.sub("", key.lower())
    return any(marker in name for marker in SECRET_MARKERS)


def _userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match["info"].partition(":")
    return f"{match['scheme']}{user}:{REDACTED}@" if colon else f"{match['scheme']}{REDACTED}@"


def _query_param(match: re.Match[str]) -> str:
    if not match["value"] or not is_secret_key(match["name"]):
        return match[0]
    return f"{match['sep']}{match['name']}={REDACTED}"


def redact_text(text: str) -> str:
    """``text`` with the credentials in URLs, in secret ``name=value`` pairs and after
    ``Bearer``/``Basic`` replaced by ``***``; anything else unchanged."""
    if "://" in text:
        text = _URL_USERINFO.sub(_userinfo, text)
    if "=" in text:
        text = _QUERY_PARAM.sub(_query_param, text)
    return _SCHEME_CREDENTIAL.sub(lambda m: f"{m['scheme']} {REDACTED}", text)


def redact(value: Any) -> Any:
    """A copy of ``value`` (JSON-like data) to show people: at any depth, the value of every
    secret key (:func:`is_secret_key`) is ``***`` (``None`` stays ``None``: "not set" is
    no secret), and every string goes through :func:`redact_text`."""
    if isinstance(value, dict):
        return {
            k: REDACTED if v is not None and is_secret_key(k) else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
