"""Pure simulation core of the reference TaskInstance: tokenizer, duration model, text.

Nothing here does I/O or threading; the server and the tests call these functions with
plain data.

Tokenizer
    ``tokenize(text)`` splits on the regular expression ``\\w+|[^\\w\\s]``: every run of
    word characters (Unicode letters, digits, underscore) is one token and every other
    non-space character is one token on its own. ``"Hello, world!"`` is four tokens. It
    is deterministic and cheap, and it is what the instance's token accounting (usage,
    tokens-per-minute limits, the duration model) counts; it does not try to match any
    real model's BPE vocabulary.

Duration model
    ``model_ms = base_ms + per_input_token_ms * input_tokens + per_output_token_ms *
    output_tokens`` (defaults 1.8, 0.0994, 30.1 ms), or ``metadata["duration_ms"]`` when the
    caller gives it. The wall-clock time the instance really spends is ``model_ms * speed``
    (``speed`` is a time scale: 0.01 runs a 1.5 s task in 15 ms), optionally multiplied by
    a deterministic per-task jitter factor.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from typing import Any

from kiln.taskinstance.tokens import (
    _content_text,
    count_chat_tokens,
    count_tokens,
    tokenize,
)

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "DurationModel",
    "InvalidMetadata",
    "SimulationPlan",
    "count_chat_tokens",
    "count_tokens",
    "input_text",
    "natural_length",
    "simulate_text",
    "tokenize",
]

#: Output length when neither ``output_tokens`` nor ``max_tokens`` is in the metadata.
DEFAULT_OUTPUT_TOKENS = 16

_VOCABULARY = (
    "the kiln fires each shard in order and the queue keeps its promise to every task "
    "while replicas wake and sleep a worker claims the next job under a lease that "
    "expires if nobody renews it results arrive with timings so the predictor learns "
    "how long tokens take on this hardware model instance durable workflow pipeline "
    "steady warm clay glaze heat cool measure estimate schedule retry resume"
).split()


class InvalidMetadata(ValueError):
    """The task metadata has a field of the wrong type or range."""


def input_text(input_data: Any) -> str:
    """The text a task's ``input_data`` stands for, used when metadata gives no token count.

    A string is itself; a dict contributes its ``prompt``, ``text`` or ``messages``
    contents when present; anything else counts as its canonical JSON.
    """
    if isinstance(input_data, str):
        return input_data
    if isinstance(input_data, dict):
        if isinstance(input_data.get("prompt"), str):
            return input_data["prompt"]
        if isinstance(input_data.get("text"), str):
            return input_data["text"]
        messages = input_data.get("messages")
        if isinstance(messages, list):
            return " ".join(
                _content_text(m.get("content")) for m in messages if isinstance(m, dict)
            )
    if input_data is None:
        return ""
    return json.dumps(input_data, sort_keys=True, default=str)


def _rng(seed: str) -> random.Random:
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def simulate_text(seed: str, n_tokens: int) -> str:
    """Deterministic pseudo-prose of exactly ``n_tokens`` tokens under :func:`tokenize`.

    The same ``seed`` always yields the same text; sentences end with ``.`` which is a
    token of its own.
    """
    if n_tokens <= 0:
        return ""
    rng = _rng(seed)
    out: list[str] = []
    sentence_len = 0
    target = rng.randint(6, 14)
    for i in range(n_tokens):
        last = i == n_tokens - 1
        if sentence_len >= target and not last:
            out.append(".")
            sentence_len = 0
            target = rng.randint(6, 14)
            continue
        if last and sentence_len > 0 and n_tokens > 1:
            out.append(".")
            continue
        word = rng.choice(_VOCABULARY)
        out.append(word.capitalize() if sentence_len == 0 else word)
        sentence_len += 1
    text = ""
    for token in out:
        text += token if token == "." or not text else " " + token
    return text


def natural_length(seed: str, max_tokens: int) -> int:
    """How many tokens the simulated model "wants" to answer ``seed`` with, capped.

    Deterministic in ``seed``; between 8 and 96 before the ``max_tokens`` cap, so short
    limits produce ``finish_reason="length"`` and generous ones ``"stop"``.
    """
    wanted = _rng("length:" + seed).randint(8, 96)
    return max(0, min(wanted, max_tokens))


def _non_negative(metadata: dict[str, Any], key: str) -> float | None:
    value = metadata.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidMetadata(f"metadata.{key} must be a non-negative number")
    if value < 0:
        raise InvalidMetadata(f"metadata.{key} must be a non-negative number")
    return float(value)


@dataclass(frozen=True)
class SimulationPlan:
    """Everything the instance needs to run one task: token counts and how long it takes."""

    input_tokens: int
    output_tokens: int
    model_ms: float
    wall_ms: float
    fail: bool
    fail_message: str | None
    text_seed: str


@dataclass(frozen=True)
class DurationModel:
    """``model_ms = base + per_input * input_tokens + per_output * output_tokens``.

    ``speed`` scales model time to wall-clock time; ``jitter`` is the relative standard
    deviation of a deterministic (seeded by task id) noise factor applied to wall time.
    """

    base_ms: float = 1.8
    per_input_token_ms: float = 0.0994
    per_output_token_ms: float = 30.1
    speed: float = 1.0
    jitter: float = 0.0

    def model_ms(self, input_tokens: float, output_tokens: float) -> float:
        """Simulated model time, before the ``speed`` scale."""
        return (
            self.base_ms
            + self.per_input_token_ms * input_tokens
            + self.per_output_token_ms * output_tokens
        )

    def plan(
        self, input_data: Any, metadata: dict[str, Any], task_id: str = "", *, noisy: bool = True
    ) -> SimulationPlan:
        """Plan a task from its metadata; raises :class:`InvalidMetadata` on bad fields.

        Recognised metadata: ``input_tokens``, ``output_tokens`` (else ``max_tokens``,
        else 16), ``duration_ms`` (overrides the formula), ``fail`` (true or an error
        message string). Input tokens default to the token count of ``input_data``.
        """
        if not isinstance(metadata, dict):
            raise InvalidMetadata("metadata must be an object")
        given_in = _non_negative(metadata, "input_tokens")
        given_out = _non_negative(metadata, "output_tokens")
        max_tokens = _non_negative(metadata, "max_tokens")
        explicit = _non_negative(metadata, "duration_ms")
        input_tokens = (
            int(given_in) if given_in is not None else count_tokens(input_text(input_data))
        )
        if given_out is not None:
            output_tokens = int(given_out)
        elif max_tokens is not None:
            output_tokens = int(max_tokens)
        else:
            output_tokens = DEFAULT_OUTPUT_TOKENS
        model_ms = explicit if explicit is not None else self.model_ms(input_tokens, output_tokens)
        wall_ms = model_ms * self.speed
        if noisy and self.jitter > 0:
            factor = 1.0 + self.jitter * _rng("jitter:" + task_id).gauss(0.0, 1.0)
            wall_ms *= max(0.0, factor)
        fail = metadata.get("fail", False)
        fail_message = fail if isinstance(fail, str) and fail else None
        seed = json.dumps(input_data, sort_keys=True, default=str)
        return SimulationPlan(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            model_ms=model_ms,
            wall_ms=wall_ms,
            fail=bool(fail),
            fail_message=fail_message,
            text_seed=seed,
        )
