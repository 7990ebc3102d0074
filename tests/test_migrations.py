"""The shipped migrations build exactly the tables the models describe, and only ``marketing_*``."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from plugin import migrate
from plugin.demo.models import db
from plugin.migrations_support import include_name
from plugin.models import Base


def test_models_and_migrations_agree(app):
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_name": include_name, "compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == [], f"models differ from migrations: {diff}"


def test_plugin_tables_are_prefixed_and_versioned_apart(app):
    names = sa.inspect(db.engine).get_table_names()
    plugin_tables = {t.name for t in Base.metadata.sorted_tables}
    assert plugin_tables <= set(names)
    assert all(name.startswith("marketing_") for name in plugin_tables)
    assert migrate.VERSION_TABLE in names
    assert "alembic_version" not in names  # the host's own Alembic history stays untouched


def test_downgrade_and_upgrade_round_trip(app_config):
    """A throwaway database goes to base and back to head (on SQLite: a fresh file)."""
    engine = sa.create_engine("sqlite://")
    migrate.upgrade(engine)
    assert "marketing_contacts" in sa.inspect(engine).get_table_names()
    migrate.downgrade(engine, "base")
    assert "marketing_contacts" not in sa.inspect(engine).get_table_names()
    migrate.upgrade(engine)
    assert "marketing_campaign_recipients" in sa.inspect(engine).get_table_names()
