"""The plugin's own Alembic environment, driven from code (no ``alembic.ini`` for hosts).

The plugin keeps its history in ``marketing_alembic_version`` and only ever looks at
``marketing_*`` tables, so it coexists with the host's own migrations.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

from .migrations_support import VERSION_TABLE

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
__all__ = ["VERSION_TABLE", "current", "downgrade", "revision", "upgrade"]


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    command.downgrade(alembic_config(engine), revision)


def current(engine: Engine) -> None:
    command.current(alembic_config(engine), verbose=True)


def revision(engine: Engine, message: str, autogenerate: bool = True) -> None:
    command.revision(alembic_config(engine), message=message, autogenerate=autogenerate)
