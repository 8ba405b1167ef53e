"""The shard handler of pipelines: runs one shard of one pipeline.

Every task of a pipeline's backing workflow names the built-in handler
:data:`~kiln.core.pipelines.SHARD_HANDLER` with params ``{pipeline_id, shard_index}``; a
worker registers it when it starts (:func:`register_shard_handler`). It loads the pipeline's
configuration and the shard's rows and runs them:

* ``python``: calls ``model_config["handler"]`` (a registered name or
  ``package.module:function`` in an allowed module, see :mod:`kiln.core.handlers`) with the
  keyword arguments it accepts among ``rows``,
  ``model_config``, ``context_config`` and ``shard_index``; its return value (JSON) is the
  shard's ``outputs``.
* ``vllm``: enqueues each row on the TaskInstance at ``model_config["instance_url"]`` (else
  ``KILN_VLLM_INSTANCE_URL``) with ``{prompt, model, sampling_params}`` and waits for the
  results. Ids are ``kiln-p<pipeline>-s<shard>-r<row>``, so a retried shard finds the rows
  the instance already ran instead of running them twice. Choosing the instance from a
  registry of instances is the scheduler issue's job; until then the URL is configuration.
* ``openai``: calls ``/v1/chat/completions`` of ``client_config["base_url"]`` per row with
  ``model_config`` as the request parameters, keeping within ``rpm_limit``/``tpm_limit``
  (one rate-limited client per pipeline and worker process, shared by its shards).

A context's ``source`` is read only if :func:`~kiln.core.sources.check_source` allows it,
and only up to ``KILN_SOURCE_MAX_BYTES``.

The result is ``{shard_index, samples, outputs}``; ``samples`` adds up to the pipeline's
``total_samples_processed``. Row *j*'s prompt is the row itself when it is a string, else its
``prompt``/``text``/``input`` field, else its JSON.
"""

from __future__ import annotations

import inspect
import json
import os
import threading
from typing import Any

from kiln.app.runtime import Kiln
from kiln.core.errors import InvalidDefinition, KilnError, PermanentFailure
from kiln.core.handlers import register, resolve_handler
from kiln.core.pipelines import LEGACY_SHARD_HANDLERS, SHARD_HANDLER, split_rows
from kiln.core.sources import check_source
from kiln.core.task_context import current_task

RESULT_TIMEOUT_S = float(os.environ.get("KILN_SHARD_RESULT_TIMEOUT_S", "600"))
_clients: dict[tuple[int, str], Any] = {}
_clients_lock = threading.Lock()


class ShardConfigError(KilnError):
    """The pipeline cannot run: its configuration is incomplete."""

    status_code = 422


def register_shard_handler(kiln: Kiln) -> None:
    """Make this process run shard tasks (also those stored under older handler names) on
    ``kiln``; a worker calls it when it starts."""

    def run_shard(pipeline_id: int, shard_index: int) -> dict[str, Any]:
        return execute_shard(kiln, pipeline_id, shard_index)

    register(SHARD_HANDLER, run_shard, aliases=LEGACY_SHARD_HANDLERS)


def execute_shard(kiln: Kiln, pipeline_id: int, shard_index: int) -> dict[str, Any]:
    """Run one shard; the result is ``{shard_index, samples, outputs}``. A handler or a
    source this deployment does not allow fails the shard for good."""
    settings = kiln.settings
    job = kiln.pipelines.shard_job(pipeline_id, shard_index)
    rows = job["rows"]
    try:
        if rows is None:
            text = read_source(job["source"], settings.source_dirs, settings.source_max_bytes)
            rows = split_rows(parse_rows(text), job["num_shards"])[shard_index]
        if job["pipeline_type"] == "python":
            # Rows written before handlers were checked against the allowlist meet it here.
            handler = job["model_config"]["handler"]
            job = {**job, "fn": resolve_handler(handler, settings.handler_modules)}
    except InvalidDefinition as exc:
        raise PermanentFailure(exc.message) from exc
    outputs = RUNNERS[job["pipeline_type"]](job, rows)
    return {"shard_index": shard_index, "samples": len(rows), "outputs": outputs}


def read_source(source: str, dirs: tuple[str, ...], max_bytes: int) -> str:
    """The text at a source (:func:`~kiln.core.sources.check_source` decides which are
    allowed), read only up to ``max_bytes``: a larger one raises PermanentFailure."""
    path = check_source(source, dirs)
    too_large = PermanentFailure(
        f"source {source!r} is larger than {max_bytes} bytes (KILN_SOURCE_MAX_BYTES)"
    )
    if path is not None:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise too_large
        return data.decode()
    import requests  # here, not at the top: a worker starts without it (only URLs need it)

    with requests.get(source, timeout=60, stream=True) as response:
        response.raise_for_status()
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > max_bytes:
            raise too_large
        chunks, size = [], 0
        for chunk in response.iter_content(64 * 1024):
            size += len(chunk)
            if size > max_bytes:  # the length header may be absent or wrong
                raise too_large
            chunks.append(chunk)
    return b"".join(chunks).decode()  # JSON is UTF-8


def parse_rows(text: str) -> list[Any]:
    """Rows of a JSON array (or a single JSON value) or of JSON lines."""
    try:
        data = json.loads(text)
    except ValueError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return data if isinstance(data, list) else [data]


def prompt_of(row: Any) -> str:
    if isinstance(row, str):
        return row
    if isinstance(row, dict):
        for key in ("prompt", "text", "input"):
            if isinstance(row.get(key), str):
                return row[key]
    return json.dumps(row, sort_keys=True)


def _progress(done: int, total: int) -> None:
    try:
        current_task().report_progress(done / total if total else 1.0, f"{done}/{total} rows")
    except RuntimeError:  # called outside a worker (tests, tools): nothing to report to
        pass


def run_python(job: dict[str, Any], rows: list[Any]) -> Any:
    fn = job["fn"]  # resolved by execute_shard
    offered = {
        "rows": rows,
        "model_config": {k: v for k, v in job["model_config"].items() if k != "handler"},
        "context_config": job["context_config"],
        "shard_index": job["shard_index"],
    }
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return fn(**offered)
    names = {p.name for p in params}
    return fn(**{k: v for k, v in offered.items() if k in names})


def run_vllm(job: dict[str, Any], rows: list[Any]) -> list[Any]:
    from kiln.taskinstance import TaskIdConflict, TaskInstanceClient

    url = job["model_config"].get("instance_url") or os.environ.get("KILN_VLLM_INSTANCE_URL")
    if not url:
        raise ShardConfigError(
            f"vllm pipeline {job['pipeline_id']} has no TaskInstance: set "
            "model_config.instance_url or KILN_VLLM_INSTANCE_URL"
        )
    sampling = job.get("sampling_params") or {}
    model = job["model_config"]["model"]
    with TaskInstanceClient(url) as client:
        ids = []
        for j, row in enumerate(rows):
            input_data = {"prompt": prompt_of(row), "model": model, "sampling_params": sampling}
            metadata = {"max_tokens": sampling["max_tokens"]} if "max_tokens" in sampling else {}
            task_id = f"kiln-p{job['pipeline_id']}-s{job['shard_index']}-r{j}"
            try:
                ids.append(client.enqueue(input_data, metadata, task_id=task_id).task_id)
            except TaskIdConflict:  # an id from another Kiln database: run it under a new one
                ids.append(client.enqueue(input_data, metadata).task_id)
        outputs = []
        for j, task_id in enumerate(ids):
            result = client.wait_for_result(task_id, timeout=RESULT_TIMEOUT_S)
            if not result.succeeded:
                raise RuntimeError(f"row {j} failed on {url}: {result.error}")
            out = result.result
            outputs.append(out.get("text", out) if isinstance(out, dict) else out)
            _progress(j + 1, len(ids))
    return outputs


def _openai_client(job: dict[str, Any]) -> Any:
    from kiln.taskinstance import OpenAICompatClient

    cfg = job.get("client_config") or {}
    key = (job["pipeline_id"], json.dumps([cfg, job["rpm_limit"], job["tpm_limit"]]))
    with _clients_lock:
        if key not in _clients:
            _clients[key] = OpenAICompatClient(
                cfg["base_url"],
                api_key=cfg.get("api_key"),
                rpm_limit=job.get("rpm_limit"),
                tpm_limit=job.get("tpm_limit"),
            )
        return _clients[key]


def run_openai(job: dict[str, Any], rows: list[Any]) -> list[Any]:
    client = _openai_client(job)
    params = {k: v for k, v in job["model_config"].items() if k != "model"}
    outputs = []
    for j, row in enumerate(rows):
        messages = (
            row["messages"]
            if isinstance(row, dict) and isinstance(row.get("messages"), list)
            else [{"role": "user", "content": prompt_of(row)}]
        )
        reply = client.chat_completions(job["model_config"]["model"], messages, **params)
        outputs.append(reply["choices"][0]["message"]["content"])
        _progress(j + 1, len(rows))
    return outputs


RUNNERS = {"python": run_python, "vllm": run_vllm, "openai": run_openai}
