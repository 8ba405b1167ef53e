"""OpenAI-compatible ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``.

Each request becomes a task in the instance's own queue (task id = the response ``id``),
so it shares the ``max_concurrency`` slots with protocol tasks, shows up in
``/queue/status`` and ``/results``, and takes the duration model's simulated time. The
answer is simulated text; its length is deterministic in the prompt and capped by
``max_tokens`` (``finish_reason`` is ``"length"`` when the cap cut it, else ``"stop"``).

Token accounting uses :mod:`kiln.taskinstance.server.simulation`'s tokenizer:
``completion_tokens`` is exactly the token count of the returned text, ``prompt_tokens``
is ``count_tokens(prompt)`` or :func:`~kiln.taskinstance.tokens.count_chat_tokens`.

Rate limits: every request is charged one request and ``prompt_tokens + max_tokens``
tokens up front (as OpenAI does), from buckets refilling at ``rpm_limit``/``tpm_limit`` per
minute. Responses carry ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the
limits that are configured; a request that does not fit gets HTTP 429 with
``retry-after`` (whole seconds), ``retry-after-ms`` and an OpenAI error body. Errors on
these routes use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``, not
Kiln's, because OpenAI clients parse it.

Authentication: when the instance has an api key, ``Authorization: Bearer <key>`` is
required on ``/v1/*`` (401 ``invalid_api_key`` otherwise); the protocol routes stay open.
"""

from __future__ import annotations

import hmac
import math
import time
import uuid
from typing import Any

from flask import Blueprint, Response, jsonify, request

from kiln.taskinstance.ratelimit import RateLimiter
from kiln.taskinstance.server.problems import RuntimeProblem
from kiln.taskinstance.server.runtime import InstanceRuntime
from kiln.taskinstance.server.simulation import count_chat_tokens, count_tokens, natural_length

__all__ = ["DEFAULT_CHAT_MAX_TOKENS", "DEFAULT_COMPLETION_MAX_TOKENS", "create_openai_blueprint"]

#: OpenAI's legacy completions default to 16 tokens; chat has no fixed default upstream.
DEFAULT_COMPLETION_MAX_TOKENS = 16
DEFAULT_CHAT_MAX_TOKENS = 256
#: How long a request may wait for its task (queue wait included) before a 504.
REQUEST_TIMEOUT_S = 600.0


class _OpenAIError(Exception):
    def __init__(
        self, status: int, message: str, type_: str, code: str | None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.type, self.code, self.param = status, type_, code, param


def _error_response(err: _OpenAIError, headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"message": str(err), "type": err.type, "param": err.param, "code": err.code}}
    response = jsonify(body)
    response.status_code = err.status
    response.headers.update(headers or {})
    return response


def _invalid(message: str, param: str | None = None) -> _OpenAIError:
    return _OpenAIError(400, message, "invalid_request_error", None, param)


def _max_tokens(body: dict[str, Any], default: int) -> int:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid("max_tokens must be a positive integer", "max_tokens")
    return value


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    raise _invalid("prompt must be a string or a list of strings", "prompt")


def create_openai_blueprint(
    runtime: InstanceRuntime, limiter: RateLimiter, api_key: str | None = None
) -> Blueprint:
    """Blueprint with the two OpenAI-compatible routes bound to ``runtime``."""
    bp = Blueprint("openai_compat", __name__, url_prefix="/v1")

    @bp.errorhandler(_OpenAIError)
    def _handle(err: _OpenAIError) -> Response:
        return _error_response(err, limiter.headers())

    @bp.before_request
    def _authenticate() -> None:
        if api_key is None:
            return
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise _OpenAIError(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )

    def _body() -> dict[str, Any]:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise _invalid("the request body must be a JSON object")
        if body.get("stream"):
            raise _invalid("stream=true is not supported by this instance", "stream")
        n = body.get("n", 1)
        if n != 1:
            raise _invalid("only n=1 is supported by this instance", "n")
        return body

    def _run(prefix: str, body: dict[str, Any], seed: str, prompt_tokens: int, cap: int):
        if runtime.replicas == 0:
            raise _OpenAIError(503, "no replica of the model is running", "server_error", None)
        decision = limiter.admit(prompt_tokens + cap)
        if not decision.allowed:
            wait = decision.retry_after
            headers = dict(decision.headers)
            if math.isfinite(wait):
                headers["retry-after"] = str(max(1, math.ceil(wait)))
                headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
            kind = "requests" if decision.limited_by == "requests" else "tokens"
            err = _OpenAIError(
                429,
                f"Rate limit reached for {kind} per minute on model "
                f"{body.get('model') or runtime.model_type}. Please try again later.",
                kind,
                "rate_limit_exceeded",
            )
            return None, _error_response(err, headers), decision.headers
        output_tokens = natural_length(seed, cap)
        task_id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        metadata = {
            "input_tokens": prompt_tokens,
            "output_tokens": output_tokens,
            "source": "openai",
        }
        try:
            runtime.submit({"prompt": seed}, metadata, task_id)
        except RuntimeProblem as exc:
            raise _OpenAIError(503, str(exc), "server_error", exc.code) from exc
        entry = runtime.wait(task_id, REQUEST_TIMEOUT_S)
        if entry["status"] == "failed":
            raise _OpenAIError(500, entry["error"] or "generation failed", "server_error", None)
        if entry["status"] != "completed":
            raise _OpenAIError(504, "generation timed out", "server_error", "timeout")
        result = entry["result"]
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": result["output_tokens"],
            "total_tokens": prompt_tokens + result["output_tokens"],
        }
        finish = "length" if output_tokens >= cap else "stop"
        # Headers describe the limits as this request was admitted, as OpenAI's do.
        return (task_id, result["text"], usage, finish), None, decision.headers

    def _model(body: dict[str, Any]) -> str:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _invalid("you must provide a model parameter", "model")
        return model

    @bp.get("/models")
    def models() -> Response:
        return jsonify(
            {
                "object": "list",
                "data": [{"id": runtime.model_type, "object": "model", "owned_by": "kiln"}],
            }
        )

    @bp.post("/chat/completions")
    def chat_completions() -> Response:
        body = _body()
        model = _model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _invalid("messages must be a non-empty array", "messages")
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            raise _invalid("each message needs a string role", "messages")
        cap = _max_tokens(body, DEFAULT_CHAT_MAX_TOKENS)
        prompt_tokens = count_chat_tokens(messages)
        seed = "\n".join(f"{m['role']}: {m.get('content')}" for m in messages)
        done, limited, headers = _run("chatcmpl", body, seed, prompt_tokens, cap)
        if limited is not None:
            return limited
        task_id, text, usage, finish = done
        response = jsonify(
            {
                "id": task_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            }
        )
        response.headers.update(headers)
        return response

    @bp.post("/completions")
    def completions() -> Response:
        body = _body()
        model = _model(body)
        prompt = _prompt_text(body.get("prompt", ""))
        cap = _max_tokens(body, DEFAULT_COMPLETION_MAX_TOKENS)
        prompt_tokens = count_tokens(prompt)
        done, limited, headers = _run("cmpl", body, prompt, prompt_tokens, cap)
        if limited is not None:
            return limited
        task_id, text, usage, finish = done
        response = jsonify(
            {
                "id": task_id,
                "object": "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
                "usage": usage,
            }
        )
        response.headers.update(headers)
        return response

    return bp
