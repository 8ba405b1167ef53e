"""Token counting shared by the TaskInstance client (rate-limit budgets) and the reference
server (simulated lengths): a token is a run of word characters or one punctuation mark."""

from __future__ import annotations

import json
import re
from typing import Any

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")

#: Tokens a chat message costs beyond its content (role and delimiters), and the tokens
#: that prime the assistant's reply; the same bookkeeping OpenAI documents for its models.
CHAT_TOKENS_PER_MESSAGE = 4
CHAT_REPLY_PRIMING_TOKENS = 3


def tokenize(text: str) -> list[str]:
    """Split ``text`` into tokens (see the module docstring for the rule)."""
    return _TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    """Number of tokens in ``text`` under :func:`tokenize`."""
    return sum(1 for _ in _TOKEN_RE.finditer(text))


def _content_text(content: Any) -> str:
    """Text of a chat message's ``content``: a string, or a list of ``{type: text}`` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return " ".join(parts)
    return json.dumps(content, sort_keys=True)


def count_chat_tokens(messages: list[dict[str, Any]]) -> int:
    """Prompt tokens of a chat request.

    Each message costs ``count_tokens(content) + 4`` (role and delimiters, plus one more
    token when the message carries a ``name``); the reply is primed with 3 more.
    """
    total = CHAT_REPLY_PRIMING_TOKENS
    for message in messages:
        total += CHAT_TOKENS_PER_MESSAGE + count_tokens(_content_text(message.get("content")))
        if message.get("name"):
            total += 1
    return total
