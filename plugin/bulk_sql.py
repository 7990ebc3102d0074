"""Hot-path ``executemany`` straight through the database driver.

Why: SQLAlchemy converts every parameter of every row of an ``executemany`` through its type
processors and builds a parameter dictionary per row; for the runner's per-batch writes (a
hundred recipient rows, a hundred statistics cells) that bookkeeping cost more than the
database's own work.  The values these statements take are plain strings and integers except
for one timestamp per batch, which :func:`to_db` converts once with the column's own type,
so what reaches the database is exactly what SQLAlchemy itself would have written.

The SQL is written once, with ``?`` placeholders, in the dialect both databases share
(``ON CONFLICT ... DO UPDATE``, ``CASE``); :func:`executemany` adapts the placeholders to the
driver (``?`` for sqlite3, ``%s`` for psycopg).  It runs on the session's connection, inside the
caller's transaction.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson
from sqlalchemy import Column, ColumnElement, any_, bindparam, event
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from .errors import ConfigurationError


@functools.lru_cache(maxsize=64)
def for_driver(sql: str, paramstyle: str) -> str:
    """``sql`` written with ``?`` placeholders, for a driver of ``paramstyle``."""
    if paramstyle == "qmark":
        return sql
    if paramstyle in ("format", "pyformat"):
        return sql.replace("%", "%%").replace("?", "%s")
    raise ConfigurationError(
        f"the plugin's bulk statements run on sqlite3 and psycopg; this driver's parameter style "
        f"({paramstyle}) is not one of theirs"
    )


def one_of(
    column: ColumnElement[Any], name: str, element_type: Any, *, postgres: bool, values: Any = None
) -> ColumnElement[bool]:
    """``column IN (:name)``; on PostgreSQL ``column = ANY(:name)`` with the values as ONE array.

    Why: a hundred-item ``IN`` list makes a statement too long for psycopg's statement cache, so
    it was parsed in Python and planned by the server on every batch; ``= ANY(array)`` is one
    short statement, cached and prepared like the others.  ``values`` may be left for execution.
    """
    required = values is None  # left for execution: running without it must fail, not match nothing
    if postgres:
        return column == any_(bindparam(name, values, type_=ARRAY(element_type), required=required))
    return column.in_(bindparam(name, values, expanding=True, required=required))


@functools.lru_cache(maxsize=16)
def for_libpq(sql: str) -> bytes:
    """``sql`` written with ``?`` placeholders, numbered (``$1``, ``$2``...) for a statement
    prepared directly through libpq."""
    pieces = sql.split("?")
    numbered = [f"{piece}${n}" for n, piece in enumerate(pieces[:-1], start=1)]
    return ("".join(numbered) + pieces[-1]).encode()


def executemany(
    session: Session, sql: str, rows: Sequence[Sequence[Any]], *, postgres_sql: str | None = None
) -> None:
    """Run ``sql`` (``?`` placeholders) once per row of ``rows`` in the session's transaction.

    ``postgres_sql``, when given, replaces the row-by-row statement on PostgreSQL with ONE
    set-based statement taking the rows as a single JSON array of arrays (its one ``?``; read
    with ``jsonb_array_elements`` and ``e->>i``): a hundred executions cost the server a hundred
    plans and index walks, and column arrays cost the driver a Python-level dump per element;
    one JSON text (encoded in C) costs neither.  ``jsonb``, not ``json``: ``e->>i`` on ``json``
    parses the element's text again for every field (0.57 ms for 100 recipient rows of seven
    fields, against 0.13 ms).  SQLite, in process, gains nothing from it.
    """
    if not rows:
        return
    connection = session.connection()
    paramstyle = connection.dialect.paramstyle
    if postgres_sql is not None and connection.dialect.name == "postgresql":
        payload = orjson.dumps(list(rows), default=_json_value).decode()
        if _on_psycopg(connection):
            _cursor(connection).execute(for_driver(postgres_sql, paramstyle), (payload,))
        else:
            connection.exec_driver_sql(for_driver(postgres_sql, paramstyle), (payload,))
        return
    connection.exec_driver_sql(for_driver(sql, paramstyle), list(rows))


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} has no JSON form for a bulk statement")


def to_db(session: Session, column: Column[Any]) -> Callable[[Any], Any]:
    """The conversion the column's type applies to a value on its way to the driver (e.g. an
    aware UTC timestamp to SQLite's text); get it once, apply it per value."""
    dialect = session.get_bind().dialect
    # The dialect's own type (SQLite's DATETIME formats text with microseconds): the generic
    # type's processor would hand sqlite3 a datetime, which it writes without them when they
    # are zero, and text compares ``12:00:00`` below ``12:00:00.000000``.
    processor = column.type.dialect_impl(dialect).bind_processor(dialect)
    return processor if processor is not None else _unchanged


def _unchanged(value: Any) -> Any:
    return value


# --------------------------------------------------------------------------- hot statements


class Fetched:
    """What a hot statement returned, fetched at once (the methods the runner uses of
    SQLAlchemy's ``Result``)."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def all(self) -> list[Any]:
        return self.rows

    def first(self) -> Any:
        return self.rows[0] if self.rows else None

    def one(self) -> Any:
        if len(self.rows) != 1:
            raise ValueError(f"expected one row, got {len(self.rows)}")
        return self.rows[0]

    def one_or_none(self) -> Any:
        if len(self.rows) > 1:
            raise ValueError(f"expected at most one row, got {len(self.rows)}")
        return self.rows[0] if self.rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalar_one_or_none(self) -> Any:
        if len(self.rows) > 1:
            raise ValueError(f"expected at most one row, got {len(self.rows)}")
        return self.rows[0][0] if self.rows else None


class Hot:
    """A statement the runner runs for every batch, compiled once for psycopg and run straight
    on the session's driver connection; on any other driver (SQLite, another PostgreSQL
    driver) ``run`` hands it to SQLAlchemy, so one call serves both databases.

    Why: SQLAlchemy's execution layer (compiled-cache lookup, execution context, parameter and
    result processing, ``Row`` objects) costs ~120 µs of CPU per statement on top of psycopg's
    own work (measured on this project's two-core machine: 227 µs against 106 µs for a
    one-row SELECT); a batch runs eight of them, on the engine's critical interpreter lock.

    What SQLAlchemy would have done and this does not, and why it does not matter here: type
    processing (the statements' values are ints, strings, aware datetimes and int lists, which
    psycopg adapts the same way; timestamps come back aware in the connection's time zone
    rather than UTC, and the runner only compares them; a naive datetime is not refused as
    ``UTCDateTime`` would), Python-side column defaults (``onupdate``: a statement whose SQL
    needs one names it in ``required``, and running it without that value raises, so a missing
    default cannot pass silently), autoflush (callers hold no pending ORM changes at these
    points), and wrapping errors: they arrive as ``psycopg.Error``, not SQLAlchemy's
    ``DBAPIError`` (the caller's rollback still recovers the connection).
    """

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._compiled: tuple[str, dict[str, Any], frozenset[str]] | None = None

    def _compile(self) -> tuple[str, dict[str, Any], frozenset[str]]:
        """On first use (a host on SQLite never compiles for psycopg); built whole before it is
        published, so threads compiling at once never see half of it."""
        from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg

        compiled = self.statement.compile(dialect=pg_psycopg.dialect())
        defaults: dict[str, Any] = {}
        required = set()
        for bind, name in compiled.bind_names.items():
            if bind.required or bind.callable is not None:
                required.add(name)
            else:
                defaults[name] = bind.value
        for column in (*compiled.insert_prefetch, *compiled.update_prefetch):
            required.add(column.key)
            defaults.pop(column.key, None)
        self._compiled = (str(compiled), defaults, frozenset(required))
        return self._compiled

    def run(self, session: Session, params: dict[str, Any]) -> Any:
        """Run in the session's transaction; rows fetched at once.  Through SQLAlchemy (its
        ``Result`` has the same methods) when the driver is not psycopg 3."""
        connection = session.connection()
        if not _on_psycopg(connection):
            return session.execute(self.statement, params)
        sql, defaults, required = self._compiled or self._compile()
        missing = required.difference(params)
        if missing:
            raise ValueError(f"hot statement run without {sorted(missing)}: {sql[:80]}")
        values = {**defaults, **params} if defaults else params
        pipe = connection.connection.info.get(_PIPELINE)
        if pipe is not None:  # sent now, answered with the others: read when first used
            cursor = _new_cursor(connection)
            cursor.execute(sql, values)
            return Answer(cursor, pipe)
        cursor = _cursor(connection)
        cursor.execute(sql, values)
        rows = cursor.fetchall() if cursor.description is not None else []
        return Fetched(rows, cursor.rowcount)


def _on_psycopg(connection: Any) -> bool:
    """Whether statements may go straight to the driver (psycopg 3, this module's cursor)."""
    return bool(connection.dialect.driver == "psycopg")


#: Statements run by this module past SQLAlchemy (its events do not see them; benchmarks
#: add this count to theirs).
DRIVER_STATEMENTS = itertools.count()


def _cursor(connection: Any) -> Any:
    """The psycopg cursor kept with a session's connection (inside its transaction); rows as
    named tuples, read by attribute like SQLAlchemy's."""
    from psycopg.rows import namedtuple_row

    fairy = connection.connection
    next(DRIVER_STATEMENTS)
    cursor = fairy.info.get("mkt_hot_cursor")
    if cursor is None or cursor.closed or cursor.connection is not fairy.driver_connection:
        cursor = fairy.driver_connection.cursor(row_factory=namedtuple_row)
        fairy.info["mkt_hot_cursor"] = cursor
    return cursor


def _new_cursor(connection: Any) -> Any:
    """A cursor of its own for a statement whose answer is read later (in a pipeline each
    cursor keeps the answer of its last statement only)."""
    from psycopg.rows import namedtuple_row

    next(DRIVER_STATEMENTS)
    return connection.connection.driver_connection.cursor(row_factory=namedtuple_row)


# --------------------------------------------------------------------------- pipelines

#: Key of the active pipeline in the pooled connection's ``info``.
_PIPELINE = "mkt_pipeline"


class Answer(Fetched):
    """A hot statement's answer in a pipeline: its rows and row count are read from the server
    on first use (which sends everything queued so far and waits for it)."""

    __slots__ = ("_cursor", "_pipe")

    def __init__(self, cursor: Any, pipe: Any) -> None:
        self._cursor = cursor
        self._pipe = pipe

    def __getattr__(self, name: str) -> Any:
        if name not in ("rows", "rowcount"):
            raise AttributeError(name)
        cursor = self._cursor
        if cursor.pgresult is None:  # not answered yet (after the block, everything is)
            self._pipe.sync()
        self.rows = cursor.fetchall() if cursor.description is not None else []
        self.rowcount = cursor.rowcount
        cursor.close()
        return getattr(self, name)


class Pipeline:
    """See :func:`pipeline`."""

    def __init__(self, driver_connection: Any | None) -> None:
        self._driver = driver_connection

    def commit(self) -> None:
        """End the transaction in the same round trip as the statements before it (PostgreSQL);
        the caller's ``session.commit()`` that follows finds nothing left to do there.  Without
        a pipeline this does nothing: the session's commit is the commit."""
        if self._driver is not None:
            self._driver.commit()


@contextlib.contextmanager
def pipeline(session: Session) -> Iterator[Pipeline]:
    """Send the hot statements of the block without waiting for each one's answer (psycopg's
    pipeline mode), so a transaction's writes reach the server in a few round trips.

    Why: the runner's record transaction locks rows every worker of the account needs (the
    quota ledger, the campaign row, the campaign's counters) and then, statement by statement,
    waited for an answer and for its interpreter lock before sending the next: sampled on
    PostgreSQL with three workers, an eighth of their time went to waiting for those locks and
    a quarter to transactions idle between statements (``pg_stat_activity``).  Pipelined, the
    server runs the statements back to back; the client waits where it reads an answer (psycopg
    also after ``BEGIN``) and at the commit: four round trips instead of six (measured with one
    runner: 12.9 ms a batch instead of 13.3; with three threads the run is bound by the
    machine's CPU, and its rate did not move).  Answers that are read (a row count) wait for
    everything sent before them; errors arrive there or at the end of the block, and the
    caller's rollback recovers as usual.

    Only statements of this module (``Hot``, ``executemany``) may run in the block: psycopg
    does not answer a statement the session sends there, so one raises at once instead of
    reading as "no rows".  The session must not commit inside it either (``Pipeline.commit``
    does).  Blocks do not nest.  On any other driver the block runs as written.
    """
    connection = session.connection()
    if not _on_psycopg(connection):
        yield Pipeline(None)
        return
    fairy = connection.connection
    if _PIPELINE in fairy.info:
        raise RuntimeError("bulk_sql.pipeline blocks do not nest")
    _guard(connection.engine)
    driver = fairy.driver_connection
    with driver.pipeline() as pipe:
        fairy.info[_PIPELINE] = pipe
        try:
            yield Pipeline(driver)
        finally:
            del fairy.info[_PIPELINE]


_GUARDED_LOCK = threading.Lock()


def _guard(engine: Any) -> None:
    """Make the engine refuse statements sent through SQLAlchemy inside a pipeline (once)."""
    if event.contains(engine, "before_cursor_execute", _refuse_in_pipeline):
        return
    with _GUARDED_LOCK:
        if not event.contains(engine, "before_cursor_execute", _refuse_in_pipeline):
            event.listen(engine, "before_cursor_execute", _refuse_in_pipeline)


def _refuse_in_pipeline(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
    if _PIPELINE in conn.connection.info:
        raise RuntimeError(
            "a statement went through the session inside bulk_sql.pipeline, where the driver "
            f"would not answer it; run it before or after the block, or as a Hot statement: {statement[:80]}"
        )
