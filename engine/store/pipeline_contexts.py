"""Contexts: the shared input of pipelines, a dataset split into shards plus shared config.

Rows are stored inline (one ``context_shards`` row per shard), or a context names a
``source`` (a path or URL of a JSON array or JSON-lines file) that the workers read and split
into ``num_shards`` contiguous chunks with :func:`kiln.core.pipelines.split_rows`. Functions
ending in ``_txn`` never commit.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from kiln.core.errors import ContextNotFound
from kiln.store.db import utcnow
from kiln.store.schema import context_shards, contexts


def create_context_txn(
    conn: sa.Connection,
    *,
    name: str,
    config: dict[str, Any],
    shards: list[list[Any]] | None,
    num_shards: int,
    source: str | None = None,
) -> int:
    values = {
        "name": name,
        "config": config,
        "source": source,
        "num_shards": num_shards,
        "num_rows": sum(len(s) for s in shards) if shards is not None else None,
        "created_at": utcnow(),
    }
    context_id = conn.execute(
        contexts.insert().values(values).returning(contexts.c.id)
    ).scalar_one()
    if shards is not None:
        conn.execute(
            context_shards.insert(),
            [
                {"context_id": context_id, "shard_index": i, "rows": s, "num_rows": len(s)}
                for i, s in enumerate(shards)
            ],
        )
    return context_id


def get_context(conn: sa.Connection, context_id: int) -> dict[str, Any]:
    """The context without its rows, with per-shard row counts (None for a source)."""
    row = conn.execute(sa.select(contexts).where(contexts.c.id == context_id)).mappings().first()
    if row is None:
        raise ContextNotFound(f"context {context_id} does not exist", id=context_id)
    out = dict(row)
    sizes: dict[int, int | None] = dict(
        conn.execute(
            sa.select(context_shards.c.shard_index, context_shards.c.num_rows).where(
                context_shards.c.context_id == context_id
            )
        ).all()
    )
    out["shards"] = [{"shard_index": i, "num_rows": sizes.get(i)} for i in range(out["num_shards"])]
    return out


def context_exists(conn: sa.Connection, context_id: int) -> bool:
    return (
        conn.execute(sa.select(contexts.c.id).where(contexts.c.id == context_id)).first()
        is not None
    )


def shard_rows(conn: sa.Connection, context_id: int, shard_index: int) -> list[Any] | None:
    """The inline rows of one shard, or None when the context reads a ``source``."""
    return conn.execute(
        sa.select(context_shards.c.rows).where(
            context_shards.c.context_id == context_id,
            context_shards.c.shard_index == shard_index,
        )
    ).scalar()
