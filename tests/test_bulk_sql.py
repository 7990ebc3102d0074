"""The driver-level statements of the runner's hot path (plugin.bulk_sql) on the test database."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from sqlalchemy import bindparam, func, select

from plugin import bulk_sql, counters
from plugin.errors import ConfigurationError
from plugin.models import StatCounter
from tests.conftest import BACKEND


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


_CELLS = StatCounter.__table__
_ADD = (
    _CELLS.update()
    .where(_CELLS.c.campaign_id == bindparam("cid"), _CELLS.c.dimension == bindparam("dim"))
    .values(count=_CELLS.c.count + bindparam("n"))
)
_ADD_HOT = bulk_sql.Hot(_ADD)
_COUNTS_HOT = bulk_sql.Hot(
    select(_CELLS.c.key, _CELLS.c.count)
    .where(_CELLS.c.campaign_id == bindparam("cid"))
    .order_by(_CELLS.c.key)
)


def _cells(session, workspace_id: int, campaign_id: int, keys: list[str]) -> None:
    at = bulk_sql.to_db(session, _CELLS.c.bucket)(dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC))
    rows = [(workspace_id, campaign_id, "sent", "domain", key, at, 1) for key in keys]
    bulk_sql.executemany(session, counters._UPSERT, rows, postgres_sql=counters._UPSERT_PG)


def test_a_pipeline_sends_its_statements_together_and_each_answer_reads_back(session, workspace):
    """Answers read in any order after later statements were queued; the commit inside the
    block is the transaction's (the session's commit after it finds nothing left to do)."""
    ws = workspace.id  # read before: the ORM must not run a statement inside the block
    with bulk_sql.pipeline(session) as pipe:
        if BACKEND == "postgres":  # the driver really is in pipeline mode, not running one by one
            assert session.connection().connection.driver_connection.pgconn.pipeline_status != 0
        _cells(session, ws, 41, ["a.cn", "b.cn"])
        _cells(session, ws, 42, ["c.cn"])
        first = _ADD_HOT.run(session, {"cid": 41, "dim": "domain", "n": 10})
        second = _ADD_HOT.run(session, {"cid": 42, "dim": "nothing", "n": 10})
        counts = _COUNTS_HOT.run(session, {"cid": 41})
        unread = _ADD_HOT.run(session, {"cid": 42, "dim": "domain", "n": 0})
        assert second.rowcount == 0
        assert first.rowcount == 2
        assert [tuple(row) for row in counts.all()] == [("a.cn", 11), ("b.cn", 11)]
        pipe.commit()
        if BACKEND == "postgres":  # the COMMIT went in the pipeline, not in the session's commit
            driver = session.connection().connection.driver_connection
            assert driver.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert unread.rowcount == 1  # answered by the end of the block, readable after it
    session.commit()
    session.rollback()  # nothing left open: what follows reads what was committed
    stored = dict(
        session.execute(select(_CELLS.c.key, _CELLS.c.count).where(_CELLS.c.campaign_id.in_((41, 42)))).all()
    )
    assert stored == {"a.cn": 11, "b.cn": 11, "c.cn": 1}


class _Boom(Exception):
    pass


@pytest.mark.parametrize("failure", ["answer read", "answer never read", "error in the block"])
def test_a_failed_pipeline_writes_nothing_and_the_session_goes_on(session, workspace, failure):
    """A statement that fails (a duplicate cell) reports where its answer is read, or at the
    commit when nobody reads it; an exception of the caller's leaves the block too.  The
    rollback removes everything the block sent; the connection works after."""
    duplicate = bulk_sql.Hot(
        _CELLS.insert().values(
            workspace_id=workspace.id,
            campaign_id=43,
            metric="sent",
            dimension="domain",
            key="a.cn",
            bucket=dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC),
            count=5,
        )
    )
    ws = workspace.id  # read before: the ORM must not run a statement inside the block
    _cells(session, ws, 43, ["a.cn"])
    session.commit()

    def failing_pipeline() -> None:
        with bulk_sql.pipeline(session) as pipe:
            _cells(session, ws, 43, ["b.cn"])
            _ADD_HOT.run(session, {"cid": 43, "dim": "domain", "n": 100})
            if failure == "error in the block":
                raise _Boom("the caller failed")
            answer = duplicate.run(session, {})
            if failure == "answer read":
                answer.rowcount  # noqa: B018 - reading the answer is what reports the failure
            pipe.commit()

    with pytest.raises(Exception) as failed:  # noqa: PT011 - the driver's or SQLAlchemy's error, checked below
        failing_pipeline()
    if failure == "error in the block":
        assert isinstance(failed.value, _Boom)
    else:
        assert "unique" in str(failed.value).lower() or "duplicate" in str(failed.value).lower()
    session.rollback()
    stored = dict(
        session.execute(select(_CELLS.c.key, _CELLS.c.count).where(_CELLS.c.campaign_id == 43)).all()
    )
    assert stored == {"a.cn": 1}
    _cells(session, ws, 43, ["b.cn"])  # the connection left pipeline mode and works
    session.commit()
    assert session.scalar(select(func.count()).select_from(_CELLS).where(_CELLS.c.campaign_id == 43)) == 2


def test_the_session_cannot_run_a_statement_inside_a_pipeline(session, workspace):
    """On PostgreSQL a statement sent through the session inside the block would read as "no
    rows"; it is refused with a message instead, and blocks do not nest.  Elsewhere the block
    is an ordinary transaction and the session runs as always."""
    ws = workspace.id
    if BACKEND == "postgres":
        with pytest.raises(RuntimeError, match=r"inside bulk_sql\.pipeline"), bulk_sql.pipeline(session):
            session.execute(select(_CELLS.c.id)).all()
        session.rollback()
        with (
            pytest.raises(RuntimeError, match="do not nest"),
            bulk_sql.pipeline(session),
            bulk_sql.pipeline(session),
        ):
            pass
        session.rollback()
    else:
        with bulk_sql.pipeline(session), bulk_sql.pipeline(session):
            assert session.execute(select(func.count()).select_from(_CELLS)).scalar_one() == 0
    _cells(session, ws, 44, ["a.cn"])  # either way the session works after it
    session.commit()
    assert session.scalar(select(func.count()).select_from(_CELLS).where(_CELLS.c.campaign_id == 44)) == 1
