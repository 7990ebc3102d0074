"""Named leases in the database: "this process does X until T".

Two uses.  The scheduler lease makes a second scheduler process harmless: only the holder of
``marketing:scheduler`` ticks, and another process takes over only after the holder stopped
renewing it (crash, shutdown).  Worker heartbeats (``marketing:run:<campaign id>``) tell the
scheduler that some process is still working on a running campaign, so it only resubmits
campaigns whose workers died.  A file or in-memory lock would only protect one host; a row shared
by every process that shares the database protects them all.

Each call is one short transaction of its own on the engine, never the caller's session: a
lease must be written (and seen by others) even while the caller's own transaction is open or
gets rolled back.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from .models import Lease, utcnow

_leases = Lease.__table__


def acquire(engine: Engine, name: str, holder: str, ttl: float, *, now: dt.datetime | None = None) -> bool:
    """Take or renew ``name`` for ``holder`` until ``now + ttl``; False if someone else holds it.

    One conditional UPDATE (mine, or expired) and, when no row exists yet, one INSERT that the
    primary key lets only one process win.  No read-then-write window.
    """
    now = now or utcnow()
    expires = now + dt.timedelta(seconds=ttl)
    with engine.begin() as conn:
        moved = conn.execute(
            update(_leases)
            .where(
                _leases.c.name == name,
                or_(_leases.c.holder == holder, _leases.c.expires_at <= now),
            )
            .values(holder=holder, expires_at=expires)
        ).rowcount
    if moved == 1:
        return True
    try:
        with engine.begin() as conn:
            conn.execute(insert(_leases).values(name=name, holder=holder, expires_at=expires))
    except IntegrityError:
        return False  # the row exists and is held by someone else (or was just inserted)
    return True


def touch(
    engine: Engine, names: list[str], holder: str, ttl: float, *, now: dt.datetime | None = None
) -> None:
    """Heartbeat: extend ``names`` for ``holder`` whoever held them (several workers may share one
    campaign on PostgreSQL; any of them being alive is what counts)."""
    if not names:
        return
    now = now or utcnow()
    expires = now + dt.timedelta(seconds=ttl)
    with engine.begin() as conn:
        for name in names:
            moved = conn.execute(
                update(_leases)
                .where(_leases.c.name == name, _leases.c.expires_at < expires)
                .values(holder=holder, expires_at=expires)
            ).rowcount
            if moved == 0:
                exists = conn.execute(select(_leases.c.name).where(_leases.c.name == name)).first()
                if exists is None:
                    try:
                        with conn.begin_nested():
                            conn.execute(insert(_leases).values(name=name, holder=holder, expires_at=expires))
                    except IntegrityError:
                        pass  # another worker wrote it at the same moment: it is alive either way


def release(engine: Engine, name: str, holder: str) -> bool:
    """Give ``name`` up if ``holder`` still has it (a clean shutdown lets the next process start now)."""
    with engine.begin() as conn:
        return (
            conn.execute(delete(_leases).where(_leases.c.name == name, _leases.c.holder == holder)).rowcount
            == 1
        )


def alive(engine: Engine, names: list[str], *, now: dt.datetime | None = None) -> set[str]:
    """Which of ``names`` are held by someone right now."""
    if not names:
        return set()
    now = now or utcnow()
    with engine.connect() as conn:
        rows = conn.execute(
            select(_leases.c.name).where(and_(_leases.c.name.in_(names), _leases.c.expires_at > now))
        )
        return {row[0] for row in rows}


def holder_of(engine: Engine, name: str, *, now: dt.datetime | None = None) -> str | None:
    """The current holder of ``name``, or None when free or expired."""
    now = now or utcnow()
    with engine.connect() as conn:
        row = conn.execute(
            select(_leases.c.holder).where(_leases.c.name == name, _leases.c.expires_at > now)
        ).first()
    return row[0] if row else None
