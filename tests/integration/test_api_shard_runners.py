"""The shard handler's three runners against real endpoints: a python function on rows read
from a source file, a TaskInstance (vllm) and an OpenAI-compatible endpoint (openai) with
rate limits and an API key — the reference TaskInstance server plays both instances."""

from __future__ import annotations

import dataclasses
import json

import pytest

from kiln.core.pipelines import validate_config
from kiln.store import pipeline_contexts as cx
from kiln.store import pipelines as pl
from kiln.workers import pipeline_shards
from kiln.workers.pipeline_shards import ShardConfigError, execute_shard
from tests.taskinstance_helpers import InstanceProcess


def rows_with_index(rows, shard_index):
    return {"shard": shard_index, "rows": rows}


def create(kiln, *, shards=None, source=None, num_shards=None, **config):
    context_id = kiln.txn(
        lambda c: cx.create_context_txn(
            c,
            name="ctx",
            config={"lang": "en"},
            shards=shards,
            num_shards=num_shards or len(shards),
            source=source,
        )
    )
    cfg = validate_config({"pipeline_name": "p", **config})
    return kiln.txn(lambda c: pl.create_pipeline_txn(c, cfg, context_id=context_id))


def test_a_python_pipeline_reads_a_source_file_and_splits_it_into_shards(
    pg_kiln, tmp_path, monkeypatch
):
    settings = dataclasses.replace(pg_kiln.settings, source_dirs=(str(tmp_path),))
    monkeypatch.setattr(pg_kiln, "settings", settings)  # the deployment allows this directory
    source = tmp_path / "rows.jsonl"
    source.write_text("\n".join(json.dumps({"text": f"r{i}"}) for i in range(5)))
    pid = create(
        pg_kiln,
        source=str(source),
        num_shards=2,
        pipeline_type="python",
        model_config={"handler": "tests.integration.test_api_shard_runners:rows_with_index"},
    )
    first, second = (execute_shard(pg_kiln, pid, i) for i in range(2))
    assert first == {
        "shard_index": 0,
        "samples": 3,
        "outputs": {"shard": 0, "rows": [{"text": "r0"}, {"text": "r1"}, {"text": "r2"}]},
    }
    assert (second["samples"], second["outputs"]["rows"][-1]) == (2, {"text": "r4"})


def test_a_vllm_pipeline_runs_each_row_on_the_taskinstance_once(pg_kiln):
    with InstanceProcess(["--speed", "0.01"]) as instance:
        pid = create(
            pg_kiln,
            shards=[["hello there", {"prompt": "second row"}]],
            pipeline_type="vllm",
            model_config={"model": "m", "instance_url": instance.url},
            sampling_params={"max_tokens": 8},
        )
        out = execute_shard(pg_kiln, pid, 0)
        again = execute_shard(pg_kiln, pid, 0)  # a retried shard: the instance has the rows
        from kiln.taskinstance import TaskInstanceClient

        with TaskInstanceClient(instance.url) as client:
            ran = client.results()
    assert out["samples"] == 2 and all(isinstance(t, str) and t for t in out["outputs"])
    assert again == out
    assert sorted(r.task_id for r in ran) == [f"kiln-p{pid}-s0-r0", f"kiln-p{pid}-s0-r1"]


def test_a_vllm_pipeline_without_an_instance_fails_with_the_reason(pg_kiln, monkeypatch):
    monkeypatch.delenv("KILN_VLLM_INSTANCE_URL", raising=False)
    pid = create(pg_kiln, shards=[["x"]], pipeline_type="vllm", model_config={"model": "m"})
    with pytest.raises(ShardConfigError, match="model_config.instance_url"):
        execute_shard(pg_kiln, pid, 0)


def test_an_openai_pipeline_uses_its_key_and_keeps_within_its_rate_limit(pg_kiln):
    args = ["--speed", "0.01", "--api-key", "sk-test", "--rpm-limit", "600"]
    with InstanceProcess(args) as instance:
        pid = create(
            pg_kiln,
            shards=[[f"question {i}" for i in range(6)]],
            pipeline_type="openai",
            model_config={"model": "m", "temperature": 0.7, "max_tokens": 8},
            client_config={"base_url": instance.url, "api_key": "sk-test"},
            rpm_limit=300,
            tpm_limit=100_000,
        )
        out = execute_shard(pg_kiln, pid, 0)
        client = next(c for (p, _), c in pipeline_shards._clients.items() if p == pid)
        assert client.rate_limited_responses == 0
        wrong = create(
            pg_kiln,
            shards=[["q"]],
            pipeline_type="openai",
            model_config={"model": "m"},
            client_config={"base_url": instance.url, "api_key": "wrong"},
        )
        with pytest.raises(Exception, match="(?i)key|auth"):
            execute_shard(pg_kiln, wrong, 0)
    assert out["samples"] == 6 and all(isinstance(t, str) and t for t in out["outputs"])
