"""The reference instance's OpenAI-compatible routes, their usage accounting and rate limits."""

from __future__ import annotations

import time

import pytest
import requests

from kiln.taskinstance import InstanceRejected, OpenAICompatClient, RateLimited
from kiln.taskinstance.server.simulation import count_chat_tokens, count_tokens
from tests.taskinstance_helpers import InstanceProcess

FAST = ["--model-type", "sim-llm", "--speed", "0.01"]
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is a kiln, exactly?"},
]


@pytest.fixture(scope="module")
def instance():
    with InstanceProcess(FAST) as proc:
        yield proc


def test_chat_completions_answer_in_openai_shape_with_exact_usage(instance):
    response = requests.post(
        f"{instance.url}/v1/chat/completions",
        json={"model": "sim-llm", "messages": MESSAGES, "max_tokens": 40},
        timeout=10,
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {"id", "object", "created", "model", "choices", "usage"}
    assert body["object"] == "chat.completion" and body["model"] == "sim-llm"
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in {"stop", "length"}
    text = choice["message"]["content"]
    usage = body["usage"]
    assert usage["prompt_tokens"] == count_chat_tokens(MESSAGES)
    assert usage["completion_tokens"] == count_tokens(text) <= 40
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # The request ran as a task in the instance's own queue.
    entry = requests.get(f"{instance.url}/results/{body['id']}", timeout=5).json()
    assert entry["status"] == "completed" and entry["result"]["text"] == text
    models = requests.get(f"{instance.url}/v1/models", timeout=5).json()
    assert models["data"][0]["id"] == "sim-llm"


def test_completions_answer_with_text_and_usage_and_stop_at_max_tokens(instance):
    prompt = "Once upon a time, in a pottery studio,"
    response = requests.post(
        f"{instance.url}/v1/completions",
        json={"model": "sim-llm", "prompt": prompt, "max_tokens": 3},
        timeout=10,
    )
    body = response.json()
    assert response.status_code == 200 and body["object"] == "text_completion"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {
        "prompt_tokens": count_tokens(prompt),
        "completion_tokens": 3,
        "total_tokens": count_tokens(prompt) + 3,
    }
    assert count_tokens(choice["text"]) == 3


def test_invalid_openai_requests_get_an_openai_error_body(instance):
    response = requests.post(
        f"{instance.url}/v1/chat/completions", json={"model": "sim-llm"}, timeout=5
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "messages"


def test_rate_limit_headers_count_down_and_requests_past_the_rpm_limit_get_429():
    with InstanceProcess([*FAST, "--rpm-limit", "3", "--tpm-limit", "100000"]) as proc:
        url = f"{proc.url}/v1/completions"
        body = {"model": "sim-llm", "prompt": "hi", "max_tokens": 4}
        remaining = []
        for _ in range(3):
            response = requests.post(url, json=body, timeout=10)
            assert response.status_code == 200
            headers = response.headers
            assert headers["x-ratelimit-limit-requests"] == "3"
            assert headers["x-ratelimit-limit-tokens"] == "100000"
            assert int(headers["x-ratelimit-remaining-tokens"]) <= 100000 - 5
            assert headers["x-ratelimit-reset-requests"].endswith("s")
            remaining.append(int(headers["x-ratelimit-remaining-requests"]))
        assert remaining == [2, 1, 0]

        refused = requests.post(url, json=body, timeout=10)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert refused.json()["error"]["type"] == "requests"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert int(refused.headers["retry-after"]) >= 1


def test_requests_past_the_tpm_limit_get_429():
    with InstanceProcess([*FAST, "--tpm-limit", "50"]) as proc:
        url = f"{proc.url}/v1/completions"
        body = {"model": "sim-llm", "prompt": "one two three", "max_tokens": 20}
        assert requests.post(url, json=body, timeout=10).status_code == 200  # 23 tokens
        assert requests.post(url, json=body, timeout=10).status_code == 200  # 46 tokens
        refused = requests.post(url, json=body, timeout=10)
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "tokens"
        assert "x-ratelimit-limit-requests" not in refused.headers
        assert refused.headers["x-ratelimit-limit-tokens"] == "50"


def test_an_api_key_is_required_on_v1_when_the_instance_has_one():
    with InstanceProcess([*FAST, "--api-key", "sk-test"]) as proc:
        url = f"{proc.url}/v1/completions"
        body = {"model": "sim-llm", "prompt": "hi", "max_tokens": 2}
        denied = requests.post(url, json=body, timeout=5)
        assert denied.status_code == 401
        assert denied.json()["error"]["code"] == "invalid_api_key"
        wrong = requests.post(url, json=body, headers={"Authorization": "Bearer no"}, timeout=5)
        assert wrong.status_code == 401
        with OpenAICompatClient(proc.url, api_key="sk-test") as client:
            assert client.completions("sim-llm", "hi", max_tokens=2)["usage"]["completion_tokens"]
        with OpenAICompatClient(proc.url, api_key="nope", max_retries=0) as client:
            with pytest.raises(InstanceRejected) as err:
                client.completions("sim-llm", "hi", max_tokens=2)
            assert err.value.status_code == 401
        assert requests.get(f"{proc.url}/status", timeout=5).status_code == 200


def test_the_openai_client_backs_off_on_429_using_the_headers():
    # 600 tokens/min = 10 tokens/s; each call costs 2 + 53 = 55 tokens, so 10 fit the
    # bucket and the 11th must wait ~0.5 s, as the server's retry-after says.
    with InstanceProcess([*FAST, "--tpm-limit", "600"]) as proc:
        with OpenAICompatClient(proc.url, max_retries=5) as client:
            for _ in range(11):
                assert client.completions("sim-llm", "hi there", max_tokens=53)["usage"]
            assert client.rate_limited_responses >= 1


def test_the_openai_client_paces_itself_under_its_limits_without_429s():
    with InstanceProcess([*FAST, "--tpm-limit", "600"]) as proc:
        with OpenAICompatClient(proc.url, tpm_limit=600, max_retries=0) as client:
            began = time.monotonic()
            for _ in range(11):
                assert client.completions("sim-llm", "hi there", max_tokens=53)["usage"]
            assert client.rate_limited_responses == 0
            assert time.monotonic() - began >= 0.4  # the 11th call waited for its tokens


def test_the_openai_client_refuses_a_request_larger_than_the_tpm_limit():
    with OpenAICompatClient("http://127.0.0.1:9", tpm_limit=10) as client:
        with pytest.raises(RateLimited):
            client.completions("sim-llm", "hi", max_tokens=50)
