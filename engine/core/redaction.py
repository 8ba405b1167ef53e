"""Secrets in pipeline configuration are shown as ``***`` wherever Kiln shows them."""

from __future__ import annotations

from typing import Any

SECRET_MARKERS = ("key", "secret", "token", "password", "authorization")
REDACTED = "***"


def redact(value: Any) -> Any:
    """``value`` with every secret-looking key's value replaced by ``***``, at any depth."""
    if isinstance(value, dict):
        return {
            k: (
                REDACTED
                if any(m in str(k).lower() for m in SECRET_MARKERS) and v is not None
                else redact(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value
