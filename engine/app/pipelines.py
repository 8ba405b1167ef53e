"""``kiln.pipelines``: contexts (sharded input) and pipelines (one configuration run over each
shard). Each method is one transaction; the SQL is in :mod:`kiln.store.pipelines` and
:mod:`kiln.store.pipeline_contexts`, the rules in :mod:`kiln.core.pipelines`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kiln.app.database import Database
from kiln.core.errors import ContextNotFound
from kiln.core.handlers import check_handler
from kiln.core.pipelines import (
    PipelineConfig,
    merge_overrides,
    shards_from_request,
    validate_config,
)
from kiln.core.sources import check_source
from kiln.store import pipeline_contexts as cx
from kiln.store import pipelines as pl

if TYPE_CHECKING:
    import sqlalchemy as sa


def _check_handler(config: PipelineConfig, allowed: tuple[str, ...]) -> None:
    """A python pipeline's handler must be runnable (:func:`check_handler`), so a typo or a
    module the deployment does not allow is a 422 and not N failed shards."""
    if config.pipeline_type == "python":
        check_handler(config.model_config["handler"], allowed)


class Pipelines:
    def __init__(self, kiln: Database) -> None:
        self._kiln = kiln

    # --- contexts ---------------------------------------------------------------------

    def create_context(
        self,
        *,
        name: str,
        config: dict[str, Any],
        shards: list[list[Any]] | None = None,
        rows: list[Any] | None = None,
        source: str | None = None,
        num_shards: int | None = None,
    ) -> dict[str, Any]:
        """Store a context given exactly one of ``shards`` (the rows of each shard),
        ``rows`` (split into ``num_shards``) or ``source`` (a path or URL the workers read,
        with ``num_shards``); return it as :meth:`context` shows it. Raises
        InvalidDefinition for any other combination or a ``source`` outside
        :func:`~kiln.core.sources.check_source`'s rules, LimitExceeded for more shards than
        ``settings.max_context_shards``."""
        inline, count = shards_from_request(
            shards=shards,
            rows=rows,
            source=source,
            num_shards=num_shards,
            max_shards=self._kiln.settings.max_context_shards,
        )
        if source:
            check_source(source, self._kiln.settings.source_dirs)
        return self._kiln.txn(
            lambda c: cx.get_context(
                c,
                cx.create_context_txn(
                    c, name=name, config=config, shards=inline, num_shards=count, source=source
                ),
            )
        )

    def context(self, context_id: int) -> dict[str, Any]:
        """A context with per-shard row counts, without its rows; raises ContextNotFound."""
        return self._kiln.read(lambda c: cx.get_context(c, context_id))

    # --- pipelines --------------------------------------------------------------------

    def create(self, data: dict[str, Any], *, context_id: int) -> dict[str, Any]:
        """Validate a configuration (request field names) and create the pipeline and its
        backing workflow on ``context_id``; its first shard is ready at once. Returns the
        pipeline as :meth:`get` shows it."""
        config = validate_config(data)
        _check_handler(config, self._kiln.settings.handler_modules)
        return self._kiln.txn(
            lambda c: pl.get_pipeline(c, pl.create_pipeline_txn(c, config, context_id=context_id))
        )

    def get(self, pipeline_id: int, *, shards: bool = True) -> dict[str, Any]:
        """The pipeline with derived status and progress and (``shards``) each shard's task;
        secrets are not redacted. Raises PipelineNotFound."""
        return self._kiln.read(lambda c: pl.get_pipeline(c, pipeline_id, shards=shards))

    def list(
        self,
        *,
        status: str | None = None,
        context_id: int | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Pipelines newest first, with progress; page with ``before_id``."""
        return self._kiln.read(
            lambda c: pl.list_pipelines(
                c, status=status, context_id=context_id, limit=limit, before_id=before_id
            )
        )

    def workflow_of(self, pipeline_id: int) -> int | None:
        """The backing workflow's id; raises PipelineNotFound."""
        return self._kiln.read(lambda c: pl.pipeline_target(c, pipeline_id))

    def check_clone(self, data: dict[str, Any]) -> int:
        """Validate a clone request now (the controller checks again when it applies it):
        ``data`` is a full configuration with ``context_id``, or ``parent_pipeline_id`` with
        overrides. Returns the new pipeline's context id; raises PipelineNotFound,
        ContextNotFound or InvalidDefinition."""
        parent_id = data.get("parent_pipeline_id")
        overrides = {k: v for k, v in data.items() if k != "parent_pipeline_id"}

        def read(c: sa.Connection) -> tuple[PipelineConfig, int]:
            merged = (
                merge_overrides(pl.config_of(c, parent_id), overrides)
                if parent_id is not None
                else dict(data)
            )
            config = validate_config(merged)
            if not cx.context_exists(c, merged["context_id"]):
                raise ContextNotFound(
                    f"context {merged['context_id']} does not exist", id=merged["context_id"]
                )
            return config, merged["context_id"]

        config, context_id = self._kiln.read(read)
        _check_handler(config, self._kiln.settings.handler_modules)
        return context_id

    # --- controllers and workers ------------------------------------------------------

    def sync_statuses(self) -> int:
        """Write each active pipeline's status from its workflow's (for ``events`` and
        operators); returns how many changed. Reads never depend on it."""
        return self._kiln.txn(lambda c: pl.sync_statuses_txn(c))

    def shard_job(self, pipeline_id: int, shard_index: int) -> dict[str, Any]:
        """Everything a worker needs to run one shard: the full configuration (secrets
        included), the context's config and source, and the shard's inline rows (None when
        it reads ``source``)."""
        return self._kiln.read(lambda c: pl.load_shard_job(c, pipeline_id, shard_index))
