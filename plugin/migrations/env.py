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
            if connection.exec_driver_sql("PRAGMA foreign_keys").scalar() != 0:
                # Inside a transaction the host's engine opened, SQLite ignores the pragma; a
                # rebuild would then silently cascade through the children: refuse instead.
                raise RuntimeError("cannot turn SQLite's foreign keys off for the migration")
            _drop_leftovers(connection)
        try:
            _migrate(connection)
        finally:
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()


def _drop_leftovers(connection: Connection) -> None:
    """Tables a batch rebuild left when a migration failed half-way: pysqlite commits a CREATE
    TABLE at once, so the rollback does not remove them, and the retry would fail on them."""
    names = connection.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '\\_alembic\\_tmp\\_%' ESCAPE '\\'"
    ).scalars()
    for name in list(names):
        original = name.removeprefix("_alembic_tmp_")
        exists = connection.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (original,)
        ).first()
        if exists is None:  # the copy may be the only one left: never drop it
            raise RuntimeError(f"{name} is left from a failed migration and {original} is missing")
        connection.exec_driver_sql(f'DROP TABLE "{name}"')
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
            if broken:  # the version stays where it was; leftovers are dropped on the next try
                raise RuntimeError(f"a migration left rows whose parents are gone: {sorted(broken)[:5]}")


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; connect to the database")
run_migrations_online()
