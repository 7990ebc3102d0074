"""Where campaigns run: in threads of this process, or in Celery workers.

Both backends call the same ``runner.run_campaign``, so what is sent, claimed and recorded does not
depend on the backend; they only differ in *where* the loop runs.

``threads`` (default, used by the demo): a small pool in the process that runs the scheduler.  One
thread per campaign at most in a process; each job pushes its own app context and so gets its own
scoped SQLAlchemy session, removed when the job ends.

``celery``: ``submit`` sends the task ``marketing.run_campaign`` to the Redis broker
(``MARKETING_CELERY_BROKER_URL``, queue ``MARKETING_CELERY_QUEUE``, default ``marketing``).  The
worker needs the host's Flask app; two ways to start one:

* ``flask --app yourapp marketing worker`` (the app is already built; the simplest), or
* ``MARKETING_CELERY_APP_FACTORY=plugin.demo.app:create_app celery -A plugin.tasks worker``: the
  factory (``module:callable``) is called once per worker process.

On PostgreSQL several workers may run one campaign together (``submit(..., parallel=n)``; by
default ``MARKETING_CAMPAIGN_WORKERS`` tasks for a SendCloud campaign without a rate limit): the
runner claims a SendCloud batch as the next range of recipient ids (one UPDATE of the
campaign's cursor, ``runner._claim_range``) and any other batch with ``FOR UPDATE SKIP LOCKED``,
so they never share a recipient.  Worker
processes do not share an interpreter lock, so on several cores they send faster than threads.

Liveness: while a campaign runs, a heartbeat thread renews the lease ``marketing:run:<id>``
(see ``leases``); the scheduler resubmits a ``running`` campaign only when that lease has expired,
which is what a crashed or stopped worker looks like.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from flask import Flask

from . import leases

log = logging.getLogger(__name__)

#: Seconds between heartbeats of a running campaign, and how long one stays valid.
HEARTBEAT_SECONDS = 5.0
HEARTBEAT_TTL = 30.0
#: How long a campaign handed to the broker counts as alive before any worker picked it up.
QUEUED_TTL = 120.0


def run_lease_name(campaign_id: int) -> str:
    return f"marketing:run:{campaign_id}"


def worker_identity(kind: str) -> str:
    """``host:pid:kind:random``: unique per process start, readable in the leases table."""
    return f"{socket.gethostname()}:{os.getpid()}:{kind}:{uuid.uuid4().hex[:6]}"


class Executor(Protocol):
    def submit(self, campaign_id: int) -> bool:
        """Start running ``campaign_id``; False when it is already running here or we shut down."""

    def active(self, campaign_id: int) -> bool:
        """Whether some worker is (or is about to be) working on ``campaign_id``."""

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking work and ask running campaigns to stop after their current batch."""


class Heartbeat:
    """Renews the run leases of the campaigns a process is working on, from a thread of its own.

    A separate thread (and connection) so the beat never waits on the runner's transaction, and
    stops exactly when the process dies, which is the point.
    """

    def __init__(self, engine: Any, holder: str, *, interval: float = HEARTBEAT_SECONDS) -> None:
        self.engine = engine
        self.holder = holder
        self.interval = interval
        self.ttl = max(HEARTBEAT_TTL, 3 * interval)
        self._ids: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, campaign_id: int) -> None:
        with self._lock:
            self._ids[campaign_id] = self._ids.get(campaign_id, 0) + 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="marketing-heartbeat", daemon=True)
                self._thread.start()
        self._beat([campaign_id])

    def remove(self, campaign_id: int) -> None:
        with self._lock:
            left = self._ids.get(campaign_id, 0) - 1
            if left > 0:
                self._ids[campaign_id] = left
                return
            self._ids.pop(campaign_id, None)
        try:
            leases.release(self.engine, run_lease_name(campaign_id), self.holder)
        except Exception:  # the lease simply expires
            log.exception("could not release the run lease of campaign %s", campaign_id)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 1)

    def _beat(self, ids: list[int]) -> None:
        try:
            leases.touch(self.engine, [run_lease_name(i) for i in ids], self.holder, self.ttl)
        except Exception:
            log.exception("heartbeat failed")

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = list(self._ids)
            if ids:
                self._beat(ids)


def run_in_app(app: Flask, campaign_id: int, *, worker_id: str, should_stop: Callable[[], bool]) -> str:
    """Run one campaign to its next stop inside a fresh app context and session (both backends)."""
    from .campaigns import runner
    from .extension import get_state

    with app.app_context():
        state = get_state()
        session = state.session
        ctx = runner.context_from_app(app)
        if worker_id:
            ctx.worker_id = f"{worker_id}:{threading.get_ident()}"
        batches = 0
        inner = ctx.on_step

        def count_batches(step: str) -> None:
            nonlocal batches
            if step == "batch:after_send":
                batches += 1
            if inner is not None:
                inner(step)

        ctx.on_step = count_batches
        try:
            outcome = runner.run_campaign(session, campaign_id, ctx, should_stop=should_stop)
            # One line per run: which worker sent how much (several may share a campaign).
            log.info(
                "campaign %s: %s sent %d batches here, then %s", campaign_id, ctx.worker_id, batches, outcome
            )
            return outcome
        except Exception:
            session.rollback()
            log.exception("campaign %s: the run stopped on an error", campaign_id)
            return "error"
        finally:
            ctx.close()  # the provider's keep-alive connections
            session.remove() if hasattr(session, "remove") else session.close()


def runners_for(app: Flask, campaign_id: int, wanted: int, *, postgres_only: bool = False) -> int:
    """How many runners may share a campaign: ``wanted`` for a SendCloud campaign sent without a
    rate limit, else one (each runner paces itself at the campaign's rate, so several would
    send faster than asked; an SMTP account has one connection and its own rate)."""
    if wanted <= 1:
        return 1
    from sqlalchemy import select

    from .extension import get_state
    from .models import Campaign, ProviderAccount

    with app.app_context():
        state = get_state()
        if postgres_only and state.db.engine.dialect.name != "postgresql":
            return 1
        session = state.session
        try:
            row = session.execute(
                select(Campaign.send_rate, ProviderAccount.kind)
                .join(ProviderAccount, ProviderAccount.id == Campaign.account_id)
                .where(Campaign.id == campaign_id)
            ).first()
        finally:
            session.remove() if hasattr(session, "remove") else session.close()
        default_rate = float(state.settings.send_rate)
    if row is None or row.kind != "sendcloud":
        return 1
    rate = row.send_rate if row.send_rate is not None else default_rate  # as the runner reads it
    return 1 if rate > 0 else wanted


def threads_per_campaign(configured: int | None, dialect: str) -> int:
    """``MARKETING_CAMPAIGN_THREADS``, or when unset what measured best for the database: one
    thread on SQLite (in-process, nothing to wait for but the provider, which the batches in
    flight cover), three on PostgreSQL (each also waits for the server's answers)."""
    if configured:
        return max(1, int(configured))
    return 1 if dialect == "sqlite" else 3


class ThreadExecutor:
    """``threads`` backend: one campaign runs in this process at most once at a time.

    A SendCloud campaign without a rate limit gets ``MARKETING_CAMPAIGN_THREADS`` threads (the
    runner's claims let several workers share a campaign, on SQLite as on PostgreSQL; see
    ``threads_per_campaign``); each keeps ``MARKETING_CAMPAIGN_IN_FLIGHT`` batches in flight
    and claims, builds and records the next ones while SendCloud answers (``run_campaign``).
    """

    def __init__(self, app: Flask, *, max_workers: int = 4) -> None:
        from .extension import get_state

        self.app = app
        self.worker_id = worker_identity("threads")
        with app.app_context():
            state = get_state()
            engine = state.db.engine
            self.threads_per_campaign = threads_per_campaign(
                getattr(state.settings, "campaign_threads", None), engine.dialect.name
            )
        self.heartbeat = Heartbeat(engine, self.worker_id)
        self._pool = ThreadPoolExecutor(
            max_workers=max_workers * self.threads_per_campaign, thread_name_prefix="marketing-run"
        )
        self._running: dict[int, int] = {}  # campaign id -> threads still running it here
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.results: dict[int, str] = {}

    def submit(self, campaign_id: int) -> bool:
        with self._lock:
            if self._stop.is_set() or campaign_id in self._running:
                return False
            self._running[campaign_id] = 0
        threads = self._threads_for(campaign_id)
        with self._lock:
            self._running[campaign_id] = threads
            self.results.pop(campaign_id, None)
        self.heartbeat.add(campaign_id)
        for started in range(threads):
            try:
                self._pool.submit(self._run, campaign_id)
            except RuntimeError:  # pool shut down meanwhile
                for _ in range(threads - started):
                    self._finish(campaign_id, None)
                return started > 0
        return True

    def _threads_for(self, campaign_id: int) -> int:
        """Several threads only where they help and cannot break a limit (see the class doc)."""
        return runners_for(self.app, campaign_id, self.threads_per_campaign)

    def active(self, campaign_id: int) -> bool:
        with self._lock:
            if campaign_id in self._running:
                return True
        return bool(leases.alive(self.heartbeat.engine, [run_lease_name(campaign_id)]))

    def running_here(self) -> set[int]:
        with self._lock:
            return set(self._running)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no campaign runs here (tests, benchmarks, the ``send`` command)."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running_here():
                return True
            time.sleep(0.02)
        return not self.running_here()

    def shutdown(self, wait: bool = True) -> None:
        self._stop.set()
        self._pool.shutdown(wait=wait, cancel_futures=True)
        if wait:
            self.heartbeat.stop()

    def _run(self, campaign_id: int) -> None:
        outcome = None
        try:
            outcome = run_in_app(
                self.app, campaign_id, worker_id=self.worker_id, should_stop=self._stop.is_set
            )
        finally:
            self._finish(campaign_id, outcome)

    def _finish(self, campaign_id: int, outcome: str | None) -> None:
        with self._lock:
            # Threads sharing a campaign end one after the other; "idle" (nothing left for this
            # one) says less than what another of them saw (done, blocked, ...).
            if outcome is not None and (outcome != "idle" or campaign_id not in self.results):
                self.results[campaign_id] = outcome
            left = self._running.get(campaign_id, 1) - 1
            if left > 0:
                self._running[campaign_id] = left
                return
            self._running.pop(campaign_id, None)
        self.heartbeat.remove(campaign_id)


# --------------------------------------------------------------------------------------- celery


def celery_queue(app: Flask) -> str:
    return str(app.config.get("MARKETING_CELERY_QUEUE") or "marketing")


def make_celery(app: Flask | None = None, *, app_factory: Callable[[], Flask] | None = None) -> Any:
    """A Celery app with the task ``marketing.run_campaign``.

    With ``app`` (the ``flask marketing worker`` command and the sending side) the task runs in that
    Flask app; with ``app_factory`` the worker builds the app on its first task.
    """
    from celery import Celery

    if app is None and app_factory is None:
        raise ValueError("make_celery needs the Flask app or a factory")
    if app is not None:
        from .extension import get_state

        with app.app_context():
            broker = get_state().settings.celery_broker_url
        queue = celery_queue(app)
    else:
        broker = os.environ.get("MARKETING_CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
        queue = os.environ.get("MARKETING_CELERY_QUEUE", "marketing")
    celery = Celery("marketing", broker=broker, set_as_current=False)
    celery.conf.update(
        task_default_queue=queue,
        task_ignore_result=True,
        # A task is acknowledged after it ran: a worker killed mid-campaign leaves the message to
        # another worker, and the runner's claims make the repeat safe.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
    )
    from celery.signals import worker_shutting_down

    stopping = threading.Event()
    # A warm shutdown (SIGTERM) lets the running batch finish, then the loop returns; the
    # campaign stays ``running`` and the scheduler hands it to a live worker when the lease ends.
    worker_shutting_down.connect(lambda **_: stopping.set(), weak=False)
    holder: dict[str, Any] = {"app": app, "heartbeat": None}
    holder_lock = threading.Lock()

    def flask_app() -> tuple[Flask, Heartbeat]:
        with holder_lock:
            if holder["app"] is None:
                holder["app"] = app_factory()  # type: ignore[misc]
            if holder["heartbeat"] is None:
                from .extension import get_state

                with holder["app"].app_context():
                    engine = get_state().db.engine
                holder["heartbeat"] = Heartbeat(engine, worker_identity("celery"))
            return holder["app"], holder["heartbeat"]

    @celery.task(name="marketing.run_campaign", bind=True)
    def run_campaign_task(self: Any, campaign_id: int) -> str:
        flask, beat = flask_app()
        beat.add(campaign_id)
        try:
            return run_in_app(flask, int(campaign_id), worker_id=beat.holder, should_stop=stopping.is_set)
        finally:
            beat.remove(campaign_id)

    celery.marketing_run_campaign = run_campaign_task  # type: ignore[attr-defined]
    return celery


class CeleryExecutor:
    """``celery`` backend: hand the campaign to the broker; workers anywhere run it."""

    def __init__(self, app: Flask) -> None:
        from .extension import get_state

        self.app = app
        self.celery = make_celery(app)
        self.holder = worker_identity("queued")
        with app.app_context():
            self.engine = get_state().db.engine
            self.workers_per_campaign = max(1, int(getattr(get_state().settings, "campaign_workers", 1)))
        self._closed = False

    def submit(self, campaign_id: int, *, parallel: int | None = None) -> bool:
        """Queue ``parallel`` tasks for the campaign (several workers share it on PostgreSQL);
        by default ``MARKETING_CAMPAIGN_WORKERS`` where several may share it (``runners_for``)."""
        if self._closed:
            return False
        if parallel is None:
            parallel = runners_for(self.app, campaign_id, self.workers_per_campaign, postgres_only=True)
        # Counts as alive while it waits in the queue, so the next tick does not queue it again.
        leases.touch(self.engine, [run_lease_name(campaign_id)], self.holder, QUEUED_TTL)
        for _ in range(max(1, parallel)):
            self.celery.send_task("marketing.run_campaign", args=[campaign_id], queue=celery_queue(self.app))
        return True

    def active(self, campaign_id: int) -> bool:
        return bool(leases.alive(self.engine, [run_lease_name(campaign_id)]))

    def shutdown(self, wait: bool = True) -> None:
        self._closed = True


def get_executor(app: Flask) -> Executor:
    """The app's executor (one per app, created on first use, by ``execution_backend``)."""
    from .extension import get_state

    executor = app.extensions.get("marketing_executor")
    if executor is None:
        with app.app_context():
            backend = get_state().settings.execution_backend
        executor = CeleryExecutor(app) if backend == "celery" else ThreadExecutor(app)
        app.extensions["marketing_executor"] = executor
    return executor


def shutdown_executor(app: Flask, wait: bool = True) -> None:
    executor = app.extensions.pop("marketing_executor", None)
    if executor is not None:
        executor.shutdown(wait=wait)


def _factory_from_env() -> Callable[[], Flask]:
    spec = os.environ.get("MARKETING_CELERY_APP_FACTORY")
    if not spec or ":" not in spec:
        raise RuntimeError(
            "set MARKETING_CELERY_APP_FACTORY=module:factory (e.g. plugin.demo.app:create_app) "
            "or start workers with `flask marketing worker`"
        )
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


_env_celery: Any = None


def __getattr__(name: str) -> Any:
    """``celery -A plugin.tasks worker`` finds ``plugin.tasks.celery``, built from the environment."""
    global _env_celery
    if name == "celery":
        if _env_celery is None:
            _env_celery = make_celery(app_factory=_factory_from_env())
        return _env_celery
    raise AttributeError(name)
