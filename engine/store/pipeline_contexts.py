"""Contexts: the shared input of pipelines, a dataset split into shards plus shared config.

Rows are stored inline (one ``context_shards`` row per shard), or a context names a
``source`` (a path or URL of a JSON array or JSON-lines file) that the workers read and split
into ``num_shards`` contiguous chunks with :func:`split_rows`. Functions ending in ``_txn``
never commit.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from kiln.core.errors import InvalidDefinition, NotFound
from kiln.store.db import utcnow
from kiln.store.schema import context_shards, contexts

MAX_SHARDS = 10_000


class ContextNotFound(NotFound):
    """No context with this id."""


def split_rows(rows: list[Any], num_shards: int) -> list[list[Any]]:
    """``num_shards`` contiguous chunks of ``rows`` whose sizes differ by at most one (the
    first ones get the extra rows); chunks may be empty when there are fewer rows."""
    if num_shards < 1:
        raise ValueError("num_shards must be at least 1")
    size, extra = divmod(len(rows), num_shards)
    out, start = [], 0
    for i in range(num_shards):
        end = start + size + (1 if i < extra else 0)
        out.append(rows[start:end])
        start = end
    return out


def shards_from_request(
    *,
    shards: list[list[Any]] | None,
    rows: list[Any] | None,
    source: str | None,
    num_shards: int | None,
) -> tuple[list[list[Any]] | None, int]:
    """Decide the shards of a new context from the three accepted forms: explicit
    ``shards``; ``rows`` split into ``num_shards``; or a ``source`` with ``num_shards``.
    Returns ``(inline shards or None for a source, num_shards)``."""
    given = [name for name, v in (("shards", shards), ("rows", rows), ("source", source)) if v]
    if len(given) != 1:
        raise InvalidDefinition(
            "give exactly one of 'shards' (a list of row lists), 'rows' (with num_shards) or "
            "'source' (a path or URL, with num_shards)",
            field="shards",
        )
    if shards is not None and given == ["shards"]:
        if num_shards is not None and num_shards != len(shards):
            raise InvalidDefinition(
                f"num_shards is {num_shards} but {len(shards)} shards were given",
                field="num_shards",
            )
        if len(shards) > MAX_SHARDS:
            raise InvalidDefinition(f"at most {MAX_SHARDS} shards", field="shards")
        return shards, len(shards)
    if num_shards is None:
        raise InvalidDefinition(f"num_shards is required with '{given[0]}'", field="num_shards")
    if not 1 <= num_shards <= MAX_SHARDS:
        raise InvalidDefinition(f"num_shards must be 1..{MAX_SHARDS}", field="num_shards")
    if rows is not None and given == ["rows"]:
        return split_rows(rows, num_shards), num_shards
    return None, num_shards


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
    sizes = dict(
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
