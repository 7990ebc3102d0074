"""What the plugin's Alembic environment looks at; also for hosts' own ``env.py``.

A host running Flask-Migrate should pass ``include_name=exclude_marketing_tables`` in its
``context.configure`` so its autogenerate never proposes to drop the plugin's tables.
"""

from __future__ import annotations

#: The plugin's own Alembic version table, apart from the host's ``alembic_version``.
VERSION_TABLE = "marketing_alembic_version"


def include_name(name: str | None, type_: str, parent_names: dict) -> bool:
    """The plugin's environment: only ``marketing_*`` tables."""
    if type_ == "table":
        return bool(name) and name.startswith("marketing_") and name != VERSION_TABLE
    return True


def exclude_marketing_tables(name: str | None, type_: str, parent_names: dict) -> bool:
    """For the host's environment: everything except the plugin's tables."""
    if type_ == "table":
        return not (name or "").startswith("marketing_")
    return True
