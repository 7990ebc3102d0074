"""The driver-level statements of the runner's hot path (plugin.bulk_sql) on the test database."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from plugin import bulk_sql
from plugin.errors import ConfigurationError
from plugin.models import StatCounter


def test_placeholders_follow_the_driver_and_percent_signs_survive_format_style():
    sql = "SELECT ? WHERE name LIKE 'a%'"
    assert bulk_sql.for_driver(sql, "qmark") == sql
    assert bulk_sql.for_driver(sql, "pyformat") == "SELECT %s WHERE name LIKE 'a%%'"
    with pytest.raises(ConfigurationError, match="named"):
        bulk_sql.for_driver(sql, "named")


def test_rows_written_through_the_driver_read_back_as_sqlalchemy_wrote_them(session, workspace):
    """Both forms (row by row, and PostgreSQL's one JSON statement) store what the ORM reads."""
    from plugin import counters

    at = dt.datetime(2026, 12, 6, 19, 0, tzinfo=dt.UTC)
    to_db = bulk_sql.to_db(session, StatCounter.__table__.c.bucket)
    rows = [
        (workspace.id, 7, "sent", "all", "", to_db(at), 3),
        (workspace.id, 7, "sent", "domain", "b.cn", to_db(at), 2),
    ]
    bulk_sql.executemany(session, counters._UPSERT, rows, postgres_sql=counters._UPSERT_PG)
    bulk_sql.executemany(session, counters._UPSERT, rows[:1], postgres_sql=counters._UPSERT_PG)
    session.commit()
    stored = {
        (r.dimension, r.key): (r.count, r.bucket)
        for r in session.scalars(select(StatCounter).where(StatCounter.campaign_id == 7))
    }
    assert stored == {("all", ""): (6, at), ("domain", "b.cn"): (2, at)}
