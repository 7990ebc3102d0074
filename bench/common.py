"""Shared helpers of the benchmarks: throwaway databases, fast bulk loading, timers, verdicts.

Why bulk loading matters here: a benchmark at 1,000,000 contacts must not spend minutes building
its data through the ORM.  PostgreSQL gets ``COPY`` through psycopg, SQLite one ``executemany``
in one transaction: both run at the driver's floor (reference/performance.md §2.5).
"""

from __future__ import annotations

import contextlib
import gc
import os
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from plugin import migrate

PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
PROFILES = ("quick", "full")


# ----------------------------------------------------------------------------- databases


@contextlib.contextmanager
def postgres_database(prefix: str = "mkt_bench") -> Iterator[str]:
    """A fresh PostgreSQL database of this run (``<prefix>_<random>``), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def sqlite_database() -> Iterator[str]:
    """A SQLite file in a temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="mkt-bench-") as folder:
        yield f"sqlite:///{Path(folder) / 'bench.sqlite'}"


@contextlib.contextmanager
def database(kind: str) -> Iterator[str]:
    with postgres_database() if kind == "postgres" else sqlite_database() as url:
        yield url


def migrated_engine(url: str) -> Engine:
    """An engine on ``url`` with the plugin's schema at the newest revision."""
    engine = sa.create_engine(url)
    migrate.upgrade(engine)
    return engine


def analyze(engine: Engine) -> None:
    """Planner statistics after a bulk load (autovacuum would get there, later)."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))


# ----------------------------------------------------------------------------- bulk loading


def bulk_insert(engine: Engine, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Load ``rows`` into ``table`` at the driver's speed; returns the row count.

    PostgreSQL: ``COPY ... FROM STDIN`` through psycopg 3 (rows written one by one, streamed).
    SQLite: ``executemany`` in one transaction.  Values must already be what the column stores
    (JSON as text, timestamps as the dialect stores them).
    """
    count = 0
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if engine.dialect.name == "postgresql":
            names = ", ".join(f'"{c}"' for c in columns)
            with cursor.copy(f'COPY "{table}" ({names}) FROM STDIN') as copy:  # type: ignore[attr-defined]
                for row in rows:
                    copy.write_row(row)
                    count += 1
        else:
            marks = ", ".join("?" for _ in columns)
            names = ", ".join(f'"{c}"' for c in columns)

            def counted() -> Iterator[Sequence[Any]]:
                nonlocal count
                for row in rows:
                    count += 1
                    yield row

            cursor.executemany(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', counted())
        raw.commit()
    finally:
        raw.close()
    return count


# ----------------------------------------------------------------------------- timing


def best_of(
    fn: Callable[[], Any], repeat: int = 3, setup: Callable[[], Any] | None = None
) -> tuple[float, Any]:
    """The fastest of ``repeat`` runs (seconds) and the last result; ``setup`` runs untimed before each."""
    best = float("inf")
    result: Any = None
    for _ in range(repeat):
        if setup is not None:
            setup()
        gc.collect()
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Verdict:
    """One line of the report: subject against floor, and the targets it must meet."""

    name: str
    subject_s: float
    floor_s: float
    max_ratio: float
    max_seconds: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.subject_s / self.floor_s if self.floor_s > 0 else float("inf")

    @property
    def passed(self) -> bool:
        fast_enough = self.max_seconds is None or self.subject_s <= self.max_seconds
        return self.ratio <= self.max_ratio and fast_enough

    def line(self) -> str:
        target = f"≤ {self.max_ratio:g}× floor" + (
            f" and < {self.max_seconds:g} s" if self.max_seconds is not None else ""
        )
        extra = "".join(f"  {k}={v}" for k, v in self.notes.items())
        return (
            f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {self.subject_s:.3f} s vs floor "
            f"{self.floor_s:.3f} s = {self.ratio:.2f}×  (target {target}){extra}"
        )


def report(verdicts: Sequence[Verdict]) -> int:
    """Print every verdict; the process exit code (1 when any failed)."""
    for verdict in verdicts:
        print(verdict.line(), flush=True)
    failed = [v.name for v in verdicts if not v.passed]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def say(message: str) -> None:
    print(message, flush=True)
