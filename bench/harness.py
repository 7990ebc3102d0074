"""Shared pieces of the dispatch, SMTP and memory benchmarks.

What lives here and why:

* **A real app on a throw-away database.** ``bench_database`` makes a temporary SQLite file or
  its own PostgreSQL database (created and dropped here), migrated with the plugin's Alembic
  history exactly as the tests do, and ``bench_app`` builds the demo CRM app on it, so the
  runner reads the same settings, secrets and directory as in production.
* **Fast fixtures.** 1,000,000 contacts through the ORM would take minutes and measure nothing
  we care about: contacts and their tag go in with one ``executemany`` transaction on SQLite
  and ``COPY`` on PostgreSQL.
* **The simulator in another process** (``bench.simserver``), started and stopped here.
* **One report format**: engine, floor, ratio, absolute rate, PASS/FAIL, printed the same way by
  every benchmark so the numbers can be pasted into a closing note.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get("BENCH_PG_URL") or os.environ.get(
    "MARKETING_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
PROFILES = {"quick": 100_000, "full": 1_000_000}

#: A typical 3 KB newsletter: greeting, company line, a few offers with links, date; the plugin
#: adds the unsubscribe link and the postal address footer.  Variables in the notations users know.
NEWSLETTER_SUBJECT = "{name|Friend}, our June offers for {company|your team}"
NEWSLETTER_HTML = (
    """<!doctype html><html><head><style>
body{font-family:Arial,sans-serif;color:#222;margin:0;padding:0}
.wrap{max-width:600px;margin:0 auto;padding:24px}
h1{font-size:22px;color:#0b5cab}.offer{border:1px solid #ddd;border-radius:6px;padding:12px;margin:12px 0}
.btn{display:inline-block;background:#0b5cab;color:#fff;padding:8px 16px;border-radius:4px;
text-decoration:none}
.muted{color:#888;font-size:12px}
</style></head><body><div class="wrap">
<h1>Hello {name|Friend},</h1>
<p>Thank you for being a customer of ours. Here is what is new for {company|your company} in
{country|your country} this month ({date}).</p>
"""
    + "".join(
        f"""<div class="offer"><h2>Offer {i}: save {5 * i}% on plan {i}</h2>
<p>Upgrade before the end of the month and keep the price for a full year. Your account
{{email}} is eligible; quote reference {{random_number}} when you call us.</p>
<a class="btn" href="https://shop.example.com/offers/{i}?utm_source=newsletter">See offer {i}</a></div>
"""
        for i in range(1, 7)
    )
    + """<p class="muted">You receive this mail because {email} subscribed to our news.</p>
</div></body></html>"""
)


# --------------------------------------------------------------------------- command line


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    p.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("-n", type=int, default=None, help="recipients (overrides the profile)")
    p.add_argument(
        "--durability",
        choices=("default", "relaxed"),
        default="default",
        help="relaxed: commits do not wait for fsync (see harness.relax_durability)",
    )
    return p


# --------------------------------------------------------------------------- database and app


@dataclasses.dataclass
class BenchDatabase:
    url: str
    kind: str
    _cleanup: Any = None
    #: A scratch folder of the run (the demo app's instance folder), removed with the database.
    folder: str = ""

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup()
            self._cleanup = None


@contextlib.contextmanager
def empty_database(kind: str) -> Iterator[BenchDatabase]:
    """A fresh, empty database of this run's own (SQLite file or PostgreSQL database); removed
    afterwards.  ``bench_database`` adds the plugin's schema and the demo's tables."""
    folder = tempfile.TemporaryDirectory(prefix="mkt-bench-")
    if kind == "postgres":
        name = f"mkt_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name

        def drop() -> None:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
            folder.cleanup()

        database = BenchDatabase(url, kind, drop, folder.name)
    else:
        url = f"sqlite:///{Path(folder.name) / 'bench.sqlite'}"
        database = BenchDatabase(url, kind, folder.cleanup, folder.name)
    try:
        yield database
    finally:
        database.close()


@contextlib.contextmanager
def bench_database(kind: str) -> Iterator[BenchDatabase]:
    """A fresh, migrated database of this run's own (plugin schema and demo tables); removed afterwards."""
    from plugin import migrate
    from plugin.demo.app import create_app
    from plugin.demo.models import db

    with empty_database(kind) as database:
        app = create_app(app_config(database.url, database.folder))
        with app.app_context():
            db.create_all()
            migrate.upgrade(db.engine)
            db.engine.dispose()
        yield database


def migrated_engine(url: str) -> sa.Engine:
    """An engine on ``url`` with the plugin's schema at the newest revision (no demo tables)."""
    from plugin import migrate

    engine = sa.create_engine(url)
    migrate.upgrade(engine)
    return engine


def analyze(engine: sa.Engine) -> None:
    """Planner statistics after a bulk load (autovacuum would get there, later)."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))


def bulk_insert(engine: sa.Engine, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Load ``rows`` into ``table`` at the driver's speed; returns the row count.

    Why: a benchmark at 1,000,000 contacts must not spend minutes building its data through the
    ORM.  PostgreSQL: ``COPY ... FROM STDIN`` through psycopg 3 (rows streamed one by one);
    SQLite: ``executemany`` in one transaction.  Values must already be what the column stores
    (JSON as text, timestamps as the dialect stores them).
    """
    count = 0
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        names = ", ".join(f'"{c}"' for c in columns)
        if engine.dialect.name == "postgresql":
            with cursor.copy(f'COPY "{table}" ({names}) FROM STDIN') as copy:  # type: ignore[attr-defined]
                for row in rows:
                    copy.write_row(row)
                    count += 1
        else:
            marks = ", ".join("?" for _ in columns)

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


def app_config(url: str, instance: str, **extra: Any) -> dict[str, Any]:
    from cryptography.fernet import Fernet

    os.environ.setdefault("CRM_INSTANCE_PATH", instance)
    # One key per run, inherited by child processes (they decrypt the account's API key).
    key = os.environ.setdefault("BENCH_FERNET_KEY", Fernet.generate_key().decode())
    return {
        "SECRET_KEY": "bench-secret-key",
        "MARKETING_SECRET_KEYS": [key],
        "SQLALCHEMY_DATABASE_URI": url,
        "MARKETING_PUBLIC_BASE_URL": "https://crm.example.com",
        **extra,
    }


def bench_app(url: str, **config: Any):
    """The demo CRM app on ``url`` (secret keys fixed for the run; instance folder temporary)."""
    from plugin.demo.app import create_app

    instance = os.environ.get("CRM_INSTANCE_PATH") or tempfile.mkdtemp(prefix="mkt-bench-instance-")
    return create_app(app_config(url, instance, **config))


# --------------------------------------------------------------------------- fixtures


def bulk_contacts(session, workspace_id: int, n: int, *, tag: str = "bench") -> int:
    """``n`` contacts ``user<i>@example<i%50>.com`` with a name and company, all tagged ``tag``.

    One transaction: ``executemany`` on SQLite, ``COPY`` on PostgreSQL.  Returns the tag id.
    """
    from plugin.models import Contact, ContactTag, Tag

    tag_row = Tag(workspace_id=workspace_id, name=tag)
    session.add(tag_row)
    session.commit()
    tag_id = tag_row.id
    now = dt.datetime.now(dt.UTC)
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        with raw.cursor() as cur:
            with cur.copy(
                "COPY marketing_contacts (workspace_id, email, email_domain, email_local, name, company, "
                "country, custom, created_at, updated_at) FROM STDIN"
            ) as copy:
                for i in range(n):
                    domain = f"example{i % 50}.com"
                    copy.write_row(
                        (
                            workspace_id,
                            f"user{i}@{domain}",
                            domain,
                            f"user{i}",
                            f"Name {i}",
                            f"Company {i % 997}",
                            "China",
                            "{}",
                            now,
                            now,
                        )
                    )
            cur.execute(
                "INSERT INTO marketing_contact_tags (contact_id, tag_id) "
                "SELECT id, %s FROM marketing_contacts WHERE workspace_id = %s",
                (tag_id, workspace_id),
            )
        session.commit()
        session.execute(sa.text("ANALYZE"))
        session.commit()
        return tag_id
    naive = now.replace(tzinfo=None)
    table, tags = Contact.__table__, ContactTag.__table__
    step = 50_000
    for start in range(0, n, step):
        rows = []
        for i in range(start, min(n, start + step)):
            domain = f"example{i % 50}.com"
            rows.append(
                {
                    "workspace_id": workspace_id,
                    "email": f"user{i}@{domain}",
                    "email_domain": domain,
                    "email_local": f"user{i}",
                    "name": f"Name {i}",
                    "company": f"Company {i % 997}",
                    "country": "China",
                    "custom": {},
                    "created_at": naive.replace(tzinfo=dt.UTC),
                    "updated_at": naive.replace(tzinfo=dt.UTC),
                }
            )
        conn.execute(table.insert(), rows)
    conn.execute(
        tags.insert().from_select(
            ["contact_id", "tag_id"],
            sa.select(table.c.id, sa.literal(tag_id)).where(table.c.workspace_id == workspace_id),
        )
    )
    session.commit()
    session.execute(sa.text("ANALYZE"))
    session.commit()
    return tag_id


def contact_records(session, workspace_id: int, n: int) -> list[Any]:
    """The first ``n`` contacts of the workspace as the directory reads them (peers' input)."""
    from sqlalchemy import select

    from plugin.directory import SqlDirectory
    from plugin.models import Contact

    first = select(Contact.id).where(Contact.workspace_id == workspace_id).order_by(Contact.id).limit(n)
    return [r for chunk in SqlDirectory().contacts(session, workspace_id, first, chunk=n) for r in chunk]


def sender_and_template(session, workspace_id: int):
    from plugin.models import Sender, Template

    sender = Sender(
        workspace_id=workspace_id,
        from_address="news@mail.example.com",
        from_name="Example News",
        reply_to="reply@example.com",
        company_name="Example Ltd",
        postal_address="1 Example Road, Shanghai",
        is_default=True,
    )
    template = Template(
        workspace_id=workspace_id, name="Bench newsletter", subject=NEWSLETTER_SUBJECT, html=NEWSLETTER_HTML
    )
    session.add_all([sender, template])
    session.commit()
    return sender, template


def sendcloud_account(session, workspace_id: int, api_user: str, api_key: str):
    from plugin.extension import get_state
    from plugin.models import ProviderAccount

    secrets = get_state().secrets
    account = ProviderAccount(
        workspace_id=workspace_id,
        kind="sendcloud",
        name="SendCloud",
        api_user=api_user,
        api_key_encrypted=secrets.encrypt(api_key),
        batch_api_user=api_user,
        batch_api_key_encrypted=secrets.encrypt(api_key),
    )
    session.add(account)
    session.commit()
    return account


def smtp_account(session, workspace_id: int, host: str, port: int):
    from plugin.models import ProviderAccount

    account = ProviderAccount(
        workspace_id=workspace_id,
        kind="smtp",
        name="Mailbox",
        smtp_host=host,
        smtp_port=port,
        smtp_security="none",
        from_address="news@mail.example.com",
        send_rate=0,
    )
    session.add(account)
    session.commit()
    return account


def campaign(session, workspace_id: int, *, account, sender, template, tag_id: int, tracking: bool = True):
    from plugin.models import Campaign

    row = Campaign(
        workspace_id=workspace_id,
        name="Bench campaign",
        status="scheduled",
        account_id=account.id,
        audience={"include_tags": [tag_id], "include_views": [], "exclude_tags": [], "exclude_views": []},
        template_ids=[template.id],
        sender_ids=[sender.id],
        send_rate=0,
        tracking=tracking,
    )
    session.add(row)
    session.commit()
    return row


# --------------------------------------------------------------------------- simulator process


class SimulatorProcess:
    """``bench.simserver`` in a child process; ``url`` for the client, ``stats(api_user)``."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.simserver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(Path(__file__).resolve().parents[1]),
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the simulator process did not start")
        info = json.loads(line)
        self.url: str = info["url"]
        self.root: str = info["root"]
        self.pid = self._proc.pid

    def add_account(self, api_user: str, api_key: str) -> None:
        response = requests.post(
            f"{self.root}/_bench/account", data={"apiUser": api_user, "apiKey": api_key}, timeout=10
        )
        response.raise_for_status()

    def stats(self, api_user: str) -> dict[str, int]:
        response = requests.get(f"{self.root}/_bench/stats", params={"apiUser": api_user}, timeout=10)
        response.raise_for_status()
        return response.json()

    def cpu_seconds(self) -> float:
        """User + system CPU the simulator process used so far (from /proc)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def stop(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> SimulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- measuring and reporting


def peak_rss_mb() -> float:
    """This process's RSS high-water mark (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _postgres_jiffies() -> int:
    """User + system jiffies of every process named ``postgres`` (server and backends)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text.split("(", 1)[1].rsplit(")", 1)
        if name == "postgres":
            fields = rest.split()
            total += int(fields[11]) + int(fields[12])
    return total


class MachineCpu:
    """How busy the whole machine was inside the block, and how much of it was PostgreSQL.

    Why: on two cores the engine, the simulator and the database share the CPUs; a run whose
    machine is near 100 % busy is bound by CPU (less work per batch helps), one with idle CPU
    by waiting (locks, round trips).  Backends that exit inside the block are not counted."""

    def __enter__(self) -> MachineCpu:
        self._busy, self._total = _machine_jiffies()
        self._pg = _postgres_jiffies()
        self.busy_share = self.postgres_seconds = float("nan")
        return self

    def __exit__(self, *exc: object) -> None:
        busy, total = _machine_jiffies()
        self.busy_share = (busy - self._busy) / max(1, total - self._total)
        self.postgres_seconds = (_postgres_jiffies() - self._pg) / os.sysconf("SC_CLK_TCK")


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


@dataclasses.dataclass
class SqlCount:
    statements: int = 0
    commits: int = 0


@contextlib.contextmanager
def count_sql(engine) -> Iterator[SqlCount]:
    """Count statements and commits sent to ``engine`` inside the block (all threads)."""
    from sqlalchemy import event

    counts = SqlCount()

    def on_execute(*_args: Any, **_kw: Any) -> None:
        counts.statements += 1

    def on_commit(*_args: Any) -> None:
        counts.commits += 1

    from plugin import bulk_sql

    driver_before = next(bulk_sql.DRIVER_STATEMENTS)
    event.listen(engine, "before_cursor_execute", on_execute)
    event.listen(engine, "commit", on_commit)
    try:
        yield counts
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)
        event.remove(engine, "commit", on_commit)
        # and those the plugin runs straight on the driver (``bulk_sql.Hot``, bulk JSON forms)
        counts.statements += next(bulk_sql.DRIVER_STATEMENTS) - driver_before - 1


def relax_durability(engine) -> None:
    """Commits that do not wait for the disk, on every new connection of ``engine``.

    SQLite: the plugin runs WAL with the default ``synchronous=FULL`` (an fsync per commit);
    ``NORMAL`` keeps the database consistent through any crash and loses nothing when a process
    dies, only an OS crash or power cut can lose the last commits.  PostgreSQL:
    ``synchronous_commit=off`` likewise loses at most the last few hundred milliseconds of
    commits if the *database server* crashes, never on a worker crash.  The runner's
    per-recipient SMTP commit protects against worker crashes, so this is the setting that
    shows what the fsync per commit costs; the benchmarks report both.
    """
    from sqlalchemy import event

    engine.dispose()
    statement = (
        "PRAGMA synchronous=NORMAL" if engine.dialect.name == "sqlite" else "SET synchronous_commit TO off"
    )

    @event.listens_for(engine, "connect")
    def _relaxed(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(statement)
        cursor.close()
        if engine.dialect.name != "sqlite":
            dbapi_connection.commit()


def header(name: str, **facts: Any) -> None:
    import sqlalchemy

    line = ", ".join(f"{k}={v}" for k, v in facts.items())
    print(f"== {name}: {line}")
    versions = f"python {platform.python_version()}, sqlalchemy {sqlalchemy.__version__}"
    print(f"   {versions}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}")


def verdict(checks: dict[str, bool]) -> bool:
    ok = all(checks.values())
    for label, passed in checks.items():
        print(f"   {'PASS' if passed else 'FAIL'}  {label}")
    print(f"== {'PASS' if ok else 'FAIL'}")
    return ok


# --------------------------------------------------------------------------- ratio verdicts (audience, stats)


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


@dataclasses.dataclass
class Verdict:
    """One line of the report: subject against floor, and the targets it must meet."""

    name: str
    subject_s: float
    floor_s: float
    max_ratio: float
    max_seconds: float | None = None
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)

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
