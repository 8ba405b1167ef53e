"""Alembic environment: runs Kiln's migrations against KILN_DATABASE_URL (or the URL a caller
put in the config), on PostgreSQL or SQLite."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from kiln.core.config import Settings
from kiln.store.db import normalize_url
from kiln.store.dialects import open_store
from kiln.store.schema import metadata

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    return normalize_url(
        config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url
    )


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    store = open_store(_url(), pool_size=1)
    try:
        with store.engine.connect() as conn:
            _run(conn)
    finally:
        store.close()


def _include_object(obj, name, type_, reflected, compare_to):  # type: ignore[no-untyped-def]
    # SQLite reflects a DESC index column as plain ascending, so comparing tasks_dispatch_idx
    # there would always report a difference that is not one.
    if type_ == "index" and name == "tasks_dispatch_idx":
        return context.get_bind().dialect.name != "sqlite"
    return True


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_object=_include_object,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
