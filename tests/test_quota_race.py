"""Concurrent workers against one ledger, and a worker killed while holding a reservation.

On PostgreSQL the race runs in 8 real processes (spawned, each with its own engine); SQLite has a
single writer, so there the same worker code runs in 8 threads of this process, each with its own
connection. Either way every worker reserves random amounts until it is refused.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import queue
import random
import signal
import threading
import time

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from plugin import quota
from plugin.models import ProviderAccount, QuotaReservation

WORKERS = 8
BASE_DAY = dt.date(2024, 1, 1)


def _run_round(session: Session, ledger_id: int, seed: int, max_rounds: int, mode: str) -> dict:
    """One worker's share of a round: reserve random 1..100 until refused (or ``max_rounds``)."""
    rng = random.Random(seed)
    asked = granted = 0
    refused = False
    violations: list[tuple[int, int, int]] = []
    for _ in range(max_rounds):
        n = rng.randint(1, 100)
        res = quota.reserve(session, ledger_id, n, lease_seconds=3600)
        if res is None:
            refused = True
            break
        asked += n
        granted += res.amount
        if not 0 < res.amount <= n:
            violations.append((n, res.amount, -1))
        roll = rng.random()
        if mode == "full":
            # Only ever grow the ledger: commit all, or keep holding.
            if roll < 0.8:
                quota.commit_reservation(session, res.id, res.amount)
        elif roll < 0.5:
            quota.commit_reservation(session, res.id, res.amount)
        elif roll < 0.7:
            quota.commit_reservation(session, res.id, rng.randint(0, res.amount))
        elif roll < 0.85:
            quota.release(session, res.id)
        limit, reserved, committed = quota.ledger_totals(session, ledger_id)
        if reserved + committed > limit or reserved < 0:
            violations.append((limit, reserved, committed))
    return {"asked": asked, "granted": granted, "refused": refused, "violations": violations}


def _worker(url: str, index: int, rounds: list[tuple[int, int, int, str]], barrier, results) -> None:
    """Runs every round in step with the other workers (``barrier``), reporting each result."""
    engine = create_engine(url, connect_args={"timeout": 30} if url.startswith("sqlite") else {})
    try:
        with Session(engine) as session:
            for round_no, (ledger_id, seed, max_rounds, mode) in enumerate(rounds):
                barrier.wait(timeout=60)
                try:
                    outcome = _run_round(session, ledger_id, seed * 100 + index, max_rounds, mode)
                except Exception as exc:  # reported to the parent, which fails the test
                    session.rollback()
                    outcome = {"error": repr(exc)}
                results.put((round_no, index, outcome))
    finally:
        engine.dispose()


def _hold_and_wait(url: str, ledger_id: int, amount: int, lease_seconds: float, out) -> None:
    """Reserve, report the reservation, then hang as a worker stuck mid-send would."""
    engine = create_engine(url)
    with Session(engine) as session:
        res = quota.reserve(session, ledger_id, amount, lease_seconds=lease_seconds)
        out.put(res.id if res else None)
        time.sleep(120)


@pytest.fixture
def account(session, workspace) -> ProviderAccount:
    acct = ProviderAccount(workspace_id=workspace.id, kind="sendcloud", name="main", api_user="u")
    session.add(acct)
    session.commit()
    return acct


def _plan(session, workspace, account) -> list[tuple[int, int, int, str, int]]:
    """Rounds as (ledger, seed, max_rounds, mode, limit): several where demand exceeds the
    quota, one where it cannot (8 workers x 3 x at most 100 < limit), one with releases and
    partial commits."""
    plan = []
    specs = [(seed, 10_000, "full", None) for seed in (1, 2, 3, 4)]
    specs += [(5, 3, "full", WORKERS * 3 * 100 + 1), (6, 60, "churn", None)]
    for i, (seed, max_rounds, mode, limit) in enumerate(specs):
        q = limit or random.Random(seed).randint(500, 2500)
        ledger = quota.ensure_ledger(
            session, workspace.id, account.id, "batch", BASE_DAY + dt.timedelta(days=i), q
        )
        plan.append((ledger, seed, max_rounds, mode, q))
    return plan


def test_racing_workers_never_get_more_than_the_quota(session, workspace, account, database_url):
    plan = _plan(session, workspace, account)
    rounds = [(ledger, seed, max_rounds, mode) for ledger, seed, max_rounds, mode, _ in plan]
    session.commit()
    if session.get_bind().dialect.name == "postgresql":
        ctx = multiprocessing.get_context("spawn")
        barrier, results = ctx.Barrier(WORKERS), ctx.Queue()
        workers = [
            ctx.Process(target=_worker, args=(database_url, i, rounds, barrier, results))
            for i in range(WORKERS)
        ]
    else:  # SQLite: one writer at a time, so threads with a connection each
        barrier, results = threading.Barrier(WORKERS), queue.Queue()
        workers = [
            threading.Thread(target=_worker, args=(database_url, i, rounds, barrier, results))
            for i in range(WORKERS)
        ]
    started = time.monotonic()
    for w in workers:
        w.start()
    outcomes: dict[int, list[dict]] = {i: [] for i in range(len(rounds))}
    try:
        for _ in range(WORKERS * len(rounds)):
            round_no, _index, outcome = results.get(timeout=60)
            outcomes[round_no].append(outcome)
    finally:
        for w in workers:
            w.join(timeout=30)
    assert time.monotonic() - started < 60

    session.expire_all()
    for round_no, (ledger, seed, _max_rounds, mode, q) in enumerate(plan):
        got = outcomes[round_no]
        assert all("error" not in o for o in got), got
        assert all(not o["violations"] for o in got), (seed, got)
        limit, reserved, committed = quota.ledger_totals(session, ledger)
        assert limit == q
        assert reserved + committed <= q, (seed, reserved, committed)
        # The ledger agrees with its reservations.
        assert reserved == quota.held_total(session, ledger)
        committed_rows = session.scalar(
            select(func.coalesce(func.sum(QuotaReservation.amount), 0)).where(
                QuotaReservation.ledger_id == ledger, QuotaReservation.status == "committed"
            )
        )
        assert committed == committed_rows
        if mode == "full":
            granted = sum(o["granted"] for o in got)
            assert granted == reserved + committed
            if all(o["refused"] for o in got):  # demand exceeded the quota
                assert granted >= q - 100, (seed, granted, q)
            else:  # demand below the quota: everyone got all they asked for
                assert granted == sum(o["asked"] for o in got) < q


def test_a_killed_worker_gets_its_reservation_back_after_the_lease(session, workspace, account, database_url):
    q = 50
    ledger = quota.ensure_ledger(session, workspace.id, account.id, "batch", BASE_DAY, q)
    session.commit()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_hold_and_wait, args=(database_url, ledger, q, 2.0, out))
    child.start()
    try:
        reservation_id = out.get(timeout=60)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=10)
    assert child.exitcode == -signal.SIGKILL
    assert reservation_id is not None

    # Right after the kill the quota is still held by the dead worker's lease.
    assert quota.reserve(session, ledger, 10) is None
    lease_until = session.scalar(
        select(QuotaReservation.lease_until).where(QuotaReservation.id == reservation_id)
    )
    wait = (lease_until - dt.datetime.now(dt.UTC)).total_seconds()
    assert wait <= 2.0
    time.sleep(max(0.0, wait) + 0.2)

    back = quota.reserve(session, ledger, q)
    assert back is not None
    assert back.amount == q
    session.expire_all()
    assert session.get(QuotaReservation, reservation_id).status == "expired"
    assert quota.ledger_totals(session, ledger) == (q, q, 0)
