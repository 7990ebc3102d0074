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


def test_sqlite_ids_of_deleted_tags_and_templates_are_never_given_again(app_config, tmp_path):
    """0009: SQLite used to hand a deleted last row's id to the next one (a new tag took over a
    scheduled campaign's deleted tag).  The rebuild keeps every row and tagging, with the
    foreign keys on as the app runs them (a parent's DROP must not cascade to its children)."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    sa.event.listen(engine, "connect", lambda dbapi, _rec: dbapi.execute("PRAGMA foreign_keys=ON"))
    migrate.upgrade(engine, "0008")
    now = "'2024-03-01 00:00:00.000000'"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                'INSERT INTO marketing_workspaces (id, "key", name, timezone, created_at) '
                f"VALUES (1, 'w', 'W', 'Asia/Shanghai', {now})"
            )
        )
        for tag_id, name in ((1, "old"), (2, "vip")):
            conn.execute(
                sa.text(
                    "INSERT INTO marketing_tags (id, name, color, workspace_id, created_at) "
                    f"VALUES ({tag_id}, '{name}', 'blue', 1, {now})"
                )
            )
        conn.execute(
            sa.text(
                "INSERT INTO marketing_contacts (id, email, email_domain, email_local, custom, "
                "created_at, updated_at, workspace_id) "
                f"VALUES (7, 'a@example.com', 'example.com', 'a', '{{}}', {now}, {now}, 1)"
            )
        )
        conn.execute(sa.text("INSERT INTO marketing_contact_tags (contact_id, tag_id) VALUES (7, 2)"))
    migrate.upgrade(engine)
    with engine.begin() as conn:
        taggings = conn.execute(sa.text("SELECT contact_id, tag_id FROM marketing_contact_tags")).all()
        assert taggings == [(7, 2)]
        for table in ("marketing_tags", "marketing_views", "marketing_templates", "marketing_senders"):
            sql = conn.execute(sa.text(f"SELECT sql FROM sqlite_master WHERE name = '{table}'")).scalar()
            assert "AUTOINCREMENT" in sql, table
        assert conn.execute(sa.text("PRAGMA foreign_keys")).scalar() == 1  # back on for the app
        conn.execute(sa.text("DELETE FROM marketing_tags WHERE id = 2"))
        assert conn.execute(sa.text("SELECT count(*) FROM marketing_contact_tags")).scalar() == 0  # cascaded
        conn.execute(
            sa.text(
                "INSERT INTO marketing_tags (name, color, workspace_id, created_at) "
                f"VALUES ('new', 'blue', 1, {now})"
            )
        )
        assert conn.execute(sa.text("SELECT id FROM marketing_tags WHERE name = 'new'")).scalar() == 3


def test_a_half_done_sqlite_rebuild_is_cleaned_up_and_retried(app_config, tmp_path):
    """pysqlite commits a batch rebuild's CREATE TABLE at once: a failed migration left the copy
    behind and every retry failed on it.  The next run drops it (its original still exists)."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'h.db'}")
    migrate.upgrade(engine, "0008")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE _alembic_tmp_marketing_tags (id INTEGER)"))
    migrate.upgrade(engine)
    names = sa.inspect(engine).get_table_names()
    assert "_alembic_tmp_marketing_tags" not in names
    assert "marketing_tags" in names
