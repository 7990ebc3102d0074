"""Alembic environment of the plugin: its own metadata, version table and table prefix."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from plugin.migrations_support import VERSION_TABLE, include_name
from plugin.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes["engine"]
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # A batch migration rebuilds a table (copy, DROP, rename); with foreign keys on, the
            # DROP of a parent would first delete or cascade through its children.  SQLite takes
            # this pragma only outside a transaction; the keys are checked again at the end.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        try:
            _migrate(connection)
        finally:
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()


def _migrate(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    with connection.begin():
        before = set(connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()) if sqlite else set()
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table=VERSION_TABLE,
            include_name=include_name,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        if sqlite:
            broken = set(connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()) - before
            if broken:  # raised inside the transaction: the migration is rolled back
                raise RuntimeError(f"a migration left rows whose parents are gone: {sorted(broken)[:5]}")


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; connect to the database")
run_migrations_online()
