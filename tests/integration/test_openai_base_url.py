"""Issue 12, defect 11: an openai pipeline's ``base_url`` may end in ``/v1`` (as docs/api.md
and OpenAI's SDKs write it) or not; both reach ``/v1/chat/completions``, never
``/v1/v1/...``. The reference TaskInstance server plays the OpenAI endpoint."""

from __future__ import annotations

import pytest

from kiln.core.pipelines import validate_config
from kiln.store import pipeline_contexts as cx
from kiln.store import pipelines as pl
from kiln.taskinstance import OpenAICompatClient
from kiln.workers.pipeline_shards import execute_shard
from tests.taskinstance_helpers import InstanceProcess


@pytest.fixture(scope="module")
def instance():
    with InstanceProcess(["--speed", "0.01", "--api-key", "sk-test"]) as proc:
        yield proc


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_the_openai_client_reaches_chat_completions_with_or_without_v1(instance, suffix):
    with OpenAICompatClient(instance.url + suffix, api_key="sk-test", max_retries=0) as client:
        reply = client.chat_completions("m", [{"role": "user", "content": "hi"}], max_tokens=4)
        assert reply["choices"][0]["message"]["content"]
        assert client.completions("m", "hi", max_tokens=2)["usage"]["completion_tokens"]


def test_an_openai_pipeline_with_the_documented_v1_base_url_runs(pg_kiln, instance):
    context_id = pg_kiln.txn(
        lambda c: cx.create_context_txn(
            c, name="c", config={}, shards=[["one", "two"]], num_shards=1
        )
    )
    config = validate_config({
        "pipeline_name": "p",
        "pipeline_type": "openai",
        "model_config": {"model": "m", "max_tokens": 4},
        "client_config": {"base_url": f"{instance.url}/v1", "api_key": "sk-test"},
    })  # fmt: skip
    pid = pg_kiln.txn(lambda c: pl.create_pipeline_txn(c, config, context_id=context_id))
    out = execute_shard(pg_kiln, pid, 0)
    assert out["samples"] == 2 and all(isinstance(t, str) and t for t in out["outputs"])
