"""Workers and controllers check the schema revision at start-up without importing Alembic
(``kiln.store.revision``); what they read must be what Alembic itself says."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from kiln.app.runtime import MIGRATIONS_DIR, Kiln
from kiln.core.config import Settings
from kiln.store.revision import head_revision
from tests.conftest import _db_url


def alembic_scripts() -> ScriptDirectory:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(cfg)


def test_the_head_revision_read_from_file_names_is_alembics_head():
    assert head_revision() == alembic_scripts().get_current_head()


def test_every_migration_file_is_named_after_its_revision_and_follows_the_one_before():
    revisions = list(reversed(list(alembic_scripts().walk_revisions())))
    assert revisions
    previous = None
    for rev in revisions:
        assert rev.path is not None
        assert rev.path.rsplit("/", 1)[-1].startswith(f"{rev.revision}_"), rev.path
        assert rev.down_revision == previous
        assert previous is None or rev.revision > previous
        previous = rev.revision


def test_a_migrated_database_is_current_at_the_revision_alembic_reads(kiln):
    alembic_says = kiln.read(lambda c: MigrationContext.configure(c).get_current_revision())
    assert kiln.control.schema_revision() == alembic_says == head_revision()
    assert kiln.control.schema_is_current()


def test_a_database_at_an_older_revision_is_not_current(kiln):
    kiln.txn(lambda c: c.execute(sa.text("UPDATE alembic_version SET version_num = '0001'")))
    assert kiln.control.schema_revision() == "0001"
    assert not kiln.control.schema_is_current()


def test_an_unmigrated_database_has_no_revision_and_is_not_current(tmp_path, pg_admin):
    name = f"kiln_empty_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    urls = [f"sqlite:///{tmp_path / 'empty.db'}", _db_url(name)]
    try:
        for url in urls:
            kiln = Kiln(Settings(database_url=url), pool_size=1)
            try:
                assert kiln.control.schema_revision() is None, url
                assert not kiln.control.schema_is_current(), url
            finally:
                kiln.close()
    finally:
        with pg_admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
