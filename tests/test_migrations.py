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


def test_sqlite_timestamps_in_other_spellings_are_rewritten_and_counter_cells_merged(app_config):
    """0007: every spelling older bulk writes left (ISO "T", no microseconds) takes SQLAlchemy's,
    so day ranges compare right; a cell written in two spellings becomes one with both counts."""
    engine = sa.create_engine("sqlite://")
    migrate.upgrade(engine, "0006")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                'INSERT INTO marketing_workspaces (id, "key", name, timezone, created_at) '
                "VALUES (1, 'w', 'W', 'Asia/Shanghai', '2024-03-01 00:00:00.000000')"
            )
        )
        cells = [
            ("2024-03-01T15:00:00", "all", 3),  # 23:00 Shanghai, 1 March: outside 2 March
            ("2024-03-01T16:00:00", "all", 5),
            ("2024-03-01 16:00:00", "domain", 1),
            ("2024-03-01 16:00:00.000000", "domain", 2),  # the same cell as the one above
            ("2024-03-01 17:00:00.000000", "all", 7),
        ]
        for n, (bucket, dimension, count) in enumerate(cells, start=1):
            conn.execute(
                sa.text(
                    "INSERT INTO marketing_stat_counters (id, workspace_id, campaign_id, metric, dimension, "
                    "\"key\", bucket, count) VALUES (:id, 1, 9, 'sent', :dimension, '', :bucket, :count)"
                ),
                {"id": n, "bucket": bucket, "dimension": dimension, "count": count},
            )
        spellings = ["2024-03-01T16:00:00", "2024-03-01T16:00:01.250000", "2024-03-01 16:00:02", None]
        for n, sent_at in enumerate(spellings, start=1):
            conn.execute(
                sa.text(
                    "INSERT INTO marketing_campaign_recipients (id, workspace_id, campaign_id, email, "
                    "status, possible_duplicate, attempts, soft_bounces, sent_at) "
                    "VALUES (:id, 1, 9, :email, 'accepted', 0, 1, 0, :sent_at)"
                ),
                {"id": n, "email": f"r{n}@example.com", "sent_at": sent_at},
            )
    migrate.upgrade(engine)
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT dimension, bucket, count FROM marketing_stat_counters ORDER BY bucket, dimension")
        ).all()
        sent = (
            conn.execute(sa.text("SELECT sent_at FROM marketing_campaign_recipients ORDER BY id"))
            .scalars()
            .all()
        )
        day = conn.execute(
            sa.text(
                "SELECT sum(count) FROM marketing_stat_counters WHERE dimension = 'all' "
                "AND bucket >= :since AND bucket < :until"
            ),
            {"since": "2024-03-01 16:00:00.000000", "until": "2024-03-02 16:00:00.000000"},
        ).scalar_one()
    assert [tuple(row) for row in stored] == [
        ("all", "2024-03-01 15:00:00.000000", 3),
        ("all", "2024-03-01 16:00:00.000000", 5),
        ("domain", "2024-03-01 16:00:00.000000", 3),
        ("all", "2024-03-01 17:00:00.000000", 7),
    ]
    assert sent == [
        "2024-03-01 16:00:00.000000",
        "2024-03-01 16:00:01.250000",
        "2024-03-01 16:00:02.000000",
        None,
    ]
    assert day == 12
