"""Issue 12, defect 4: the one redaction function, on plain data."""

from __future__ import annotations

import pytest

from kiln.core.redaction import is_secret_key, redact, redact_text


@pytest.mark.parametrize(
    "key",
    ["api_key", "apiKey", "secret", "token", "access_token", "password", "Authorization", "auth",
     "credentials", "X-Api-Bearer", "Cookie", "session_id", "db_passwd", "PRIVATE_KEY"],
)  # fmt: skip
def test_keys_naming_a_secret_are_recognised_in_any_case_and_position(key):
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    ["max_tokens", "prompt_tokens", "completion_tokens", "total_tokens", "tokenizer", "author",
     "model", "base_url", "temperature", "rows"],
)  # fmt: skip
def test_counts_and_ordinary_names_are_not_secrets(key):
    assert not is_secret_key(key)


def test_secret_values_are_replaced_at_any_depth_and_nothing_else_changes():
    value = {
        "model": "m",
        "max_tokens": 8,
        "headers": {"X-Api-Bearer": "b-123", "Accept": "json"},
        "auth": {"user": "u", "pass": "p"},
        "credentials": ["c1"],
        "password": None,
        "items": [{"api_key": "k"}, 3, "plain"],
    }
    assert redact(value) == {
        "model": "m",
        "max_tokens": 8,
        "headers": {"X-Api-Bearer": "***", "Accept": "json"},
        "auth": "***",
        "credentials": "***",
        "password": None,
        "items": [{"api_key": "***"}, 3, "plain"],
    }
    assert value["headers"]["X-Api-Bearer"] == "b-123"  # a copy: the stored value stays


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("https://user:sk-live-1@api.example.org/v1", "https://user:***@api.example.org/v1"),
        ("see postgresql://kiln:hunter2@db/kiln now", "see postgresql://kiln:***@db/kiln now"),
        ("https://ghp_abc@github.com/x.git", "https://***@github.com/x.git"),
        ("https://h/x?api_key=k1&limit=3", "https://h/x?api_key=***&limit=3"),
        ("login failed password=hunter2 user=bob", "login failed password=*** user=bob"),
        ("Authorization: Bearer sk-abc.def", "Authorization: Bearer ***"),
        ("max_tokens=5 a@b.c https://h/p", "max_tokens=5 a@b.c https://h/p"),
    ],
)
def test_credentials_inside_strings_are_replaced(text, shown):
    assert redact_text(text) == shown
    assert redact({"note": text}) == {"note": shown}
