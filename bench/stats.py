"""Statistics benchmark: the campaign statistics page of a 1,000,000-recipient campaign.

Subject: ``GET /marketing/campaigns/<id>/stats`` through the real app (login, guard, every query
of :mod:`plugin.stats`, Jinja), best of several runs, plus the service calls alone.

Data: the counter cells such a campaign leaves behind (no recipient rows and no events: the
page must not read those).  1,000,000 recipients sent over three days; 60 % at 50 large
mailbox providers, 40 % at ~133,000 company domains of three recipients each (the long tail a
B2B list really has); opens, clicks and replies trickling in for a week; three templates, two
senders, ten links.  That is about 750,000 counter rows, most of them per-domain cells.

Floor, same database and run: one counter row read by primary key.

Target (issue 6, item 4): page < 1 s.  The ratio to the floor is printed for the record.

    python -m bench.stats --profile quick [--db postgres]
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import random
import re
from collections.abc import Iterator, Sequence
from typing import Any

#: Columns of ``marketing_stat_counters`` the generator fills, in order.
COLUMNS = ("workspace_id", "campaign_id", "metric", "dimension", "key", "bucket", "count")
BIG_DOMAINS = 50
SEND_HOURS = 72
#: Hours over which opens/clicks/replies keep arriving after a mail is delivered.
TAIL_HOURS = 168


def _decay(hours: int, half_life: float) -> list[float]:
    weights = [math.exp(-h * math.log(2) / half_life) for h in range(hours)]
    total = sum(weights)
    return [w / total for w in weights]


def counter_cells(
    *,
    recipients: int = 1_000_000,
    template_ids: Sequence[int] = (1, 2, 3),
    sender_ids: Sequence[int] = (1, 2),
    link_ids: Sequence[int] = tuple(range(1, 11)),
    start: dt.datetime | None = None,
    seed: int = 6,
) -> dict[tuple[str, str, str, int], int]:
    """``{(metric, dimension, key, hour offset): count}`` for one campaign, as events would leave them.

    Fractions per delivered mail: 20 % open (1.5 opens each), 5 % machine opens, 3 % click
    (1.5 clicks each), 0.5 % reply, 0.2 % unsubscribe; 3 % invalid and 2 % bounced per sent mail.
    """
    rng = random.Random(seed)
    cells: dict[tuple[str, str, str, int], int] = {}

    def add(metric: str, domain: str, hour: int, n: int) -> None:
        if n > 0:
            key = (metric, "domain", domain, hour)
            cells[key] = cells.get(key, 0) + n

    engage = _decay(TAIL_HOURS, 8.0)
    zipf = [1 / (i + 1) ** 1.1 for i in range(BIG_DOMAINS)]
    zsum = sum(zipf)
    big_share = int(recipients * 0.6)
    tail = recipients - big_share
    for i, weight in enumerate(zipf):
        domain = f"mail{i}.example.com"
        per_hour = big_share * weight / zsum / SEND_HOURS
        for hour in range(SEND_HOURS):
            n = int(per_hour) + (1 if rng.random() < per_hour % 1 else 0)
            _mailbox(add, domain, hour, n, engage, rng)
    assigned = sum(n for (metric, _d, _k, _h), n in cells.items() if metric == "submitted")
    _mailbox(add, "mail0.example.com", 0, big_share - assigned, engage, rng)
    per_domain = 3
    domains = tail // per_domain
    for d in range(domains):
        n = per_domain if d < domains - 1 else tail - per_domain * (domains - 1)
        _mailbox(add, f"co{d}.example", d * SEND_HOURS // domains, n, engage, rng, exact=True)
    _roll_up(cells, template_ids, sender_ids, link_ids, rng)
    return cells


def _mailbox(
    add: Any, domain: str, hour: int, n: int, engage: list[float], rng: random.Random, *, exact: bool = False
) -> None:
    """Cells of ``n`` mails to one domain sent in ``hour``."""
    if n <= 0:
        return
    add("submitted", domain, hour, n)
    add("sent", domain, hour, n)
    if exact:  # a handful of recipients: decide each one
        invalid = sum(rng.random() < 0.03 for _ in range(n))
        bounced = sum(rng.random() < 0.02 for _ in range(n - invalid))
        delivered = n - invalid - bounced
        add("invalid", domain, hour, invalid)
        add("bounced", domain, hour + 1, bounced)
        add("delivered", domain, hour, delivered)
        for _ in range(delivered):
            _engagement(add, domain, hour, rng)
        return
    invalid, bounced = round(n * 0.03), round(n * 0.02)
    delivered = n - invalid - bounced
    add("invalid", domain, hour, invalid)
    add("bounced", domain, hour + 1, bounced)
    add("delivered", domain, hour, delivered)
    for metric, per_mail in (
        ("unique_opened", 0.2),
        ("opened", 0.3),
        ("machine_opened", 0.05),
        ("unique_clicked", 0.03),
        ("clicked", 0.045),
        ("replied", 0.005),
        ("unsubscribed", 0.002),
    ):
        expected = delivered * per_mail
        for lag, weight in enumerate(engage):
            share = expected * weight
            k = int(share) + (1 if rng.random() < share % 1 else 0)
            add(metric, domain, hour + lag, k)


def _engagement(add: Any, domain: str, hour: int, rng: random.Random) -> None:
    """One delivered mail to a small domain: maybe opened, clicked, replied, unsubscribed."""
    if rng.random() < 0.05:
        add("machine_opened", domain, hour, 1)
    if rng.random() >= 0.2:
        return
    at = hour + min(TAIL_HOURS - 1, int(rng.expovariate(1 / 10)))
    add("unique_opened", domain, at, 1)
    add("opened", domain, at, 1 + (rng.random() < 0.5))
    if rng.random() < 0.15:
        add("unique_clicked", domain, at, 1)
        add("clicked", domain, at, 1 + (rng.random() < 0.5))
    if rng.random() < 0.025:
        add("replied", domain, at + 1, 1)
    elif rng.random() < 0.01:
        add("unsubscribed", domain, at, 1)


def _roll_up(
    cells: dict[tuple[str, str, str, int], int],
    template_ids: Sequence[int],
    sender_ids: Sequence[int],
    link_ids: Sequence[int],
    rng: random.Random,
) -> None:
    """Add the campaign-wide, per-template, per-sender and per-link cells the domain cells imply."""
    overall: dict[tuple[str, int], int] = {}
    for (metric, _dim, _key, hour), n in cells.items():
        overall[(metric, hour)] = overall.get((metric, hour), 0) + n
    for (metric, hour), n in overall.items():
        cells[(metric, "all", "", hour)] = n
        for dimension, ids in (("template", template_ids), ("sender", sender_ids)):
            for i, share in enumerate(_split(n, len(ids))):
                if share:
                    cells[(metric, dimension, str(ids[i]), hour)] = share
        if metric == "clicked":
            weights = [1 / (i + 1) for i in range(len(link_ids))]
            left = n
            for i, link in enumerate(link_ids):
                share = left if i == len(link_ids) - 1 else min(left, round(n * weights[i] / sum(weights)))
                left -= share
                if share:
                    cells[(metric, "link", str(link), hour)] = share


def _split(n: int, parts: int) -> list[int]:
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def counter_rows(
    cells: dict[tuple[str, str, str, int], int],
    *,
    workspace_id: int,
    campaign_id: int,
    start: dt.datetime,
    sqlite: bool,
) -> Iterator[tuple[Any, ...]]:
    """Rows for :func:`bench.harness.bulk_insert` (SQLite stores naive UTC text)."""
    first = start.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    for (metric, dimension, key, hour), n in cells.items():
        bucket = first + dt.timedelta(hours=hour)
        stored: Any = (
            bucket.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds") if sqlite else bucket
        )
        yield (workspace_id, campaign_id, metric, dimension, key, stored, n)


def load(engine: Any, cells: dict, *, workspace_id: int, campaign_id: int, start: dt.datetime) -> int:
    """Bulk-load the cells for one campaign (COPY on PostgreSQL); returns the row count."""
    from .harness import analyze, bulk_insert

    rows = counter_rows(
        cells,
        workspace_id=workspace_id,
        campaign_id=campaign_id,
        start=start,
        sqlite=engine.dialect.name == "sqlite",
    )
    count = bulk_insert(engine, "marketing_stat_counters", COLUMNS, rows)
    analyze(engine)
    return count


# --------------------------------------------------------------------------- the benchmark


def main() -> int:
    import time

    from sqlalchemy import select

    from plugin import stats
    from plugin.demo.models import User, db
    from plugin.models import Campaign, Sender, StatCounter, Template, TrackedLink

    from . import harness

    args = harness.parser(__doc__.splitlines()[0]).parse_args()
    recipients = args.n or 1_000_000
    with harness.bench_database(args.db) as database:
        app = harness.bench_app(database.url, TESTING=True)
        with app.app_context():
            session = db.session
            user = User(username="bench", display_name="Bench", role="sales", organization="default")
            user.set_password("bench")
            session.add(user)
            from plugin.access import ensure_workspace

            ws = ensure_workspace(session, "default").id
            templates = [Template(workspace_id=ws, name=f"Template {i}") for i in range(3)]
            senders = [Sender(workspace_id=ws, from_address=f"news{i}@mail.example.com") for i in range(2)]
            session.add_all([*templates, *senders])
            campaign = Campaign(
                workspace_id=ws, name="A million", status="completed", total=recipients, sent=recipients
            )
            session.add(campaign)
            session.flush()
            links = [
                TrackedLink(
                    workspace_id=ws,
                    campaign_id=campaign.id,
                    url=f"https://shop.example.com/{i}",
                    url_hash=hashlib.sha256(f"https://shop.example.com/{i}".encode()).hexdigest(),
                )
                for i in range(10)
            ]
            session.add_all(links)
            session.commit()
            started = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
            with harness.Stopwatch() as gen:
                cells = counter_cells(
                    recipients=recipients,
                    template_ids=[t.id for t in templates],
                    sender_ids=[s.id for s in senders],
                    link_ids=[link.id for link in links],
                )
                rows = load(db.engine, cells, workspace_id=ws, campaign_id=campaign.id, start=started)
            harness.header(
                "stats", db=args.db, recipients=recipients, counter_rows=rows, load_s=f"{gen.seconds:.1f}"
            )

            one_id = session.scalar(select(StatCounter.id).limit(1))
            floor, _ = harness.best_of(
                lambda: session.execute(select(StatCounter.count).where(StatCounter.id == one_id)).all(),
                repeat=20,
            )

            def service() -> Any:
                session.expire_all()
                stats.campaign_stats(session, ws, campaign.id)
                stats.time_series(session, ws, campaign.id, by="day", tz="Asia/Shanghai")
                for dimension in ("template", "sender", "link"):
                    stats.breakdown(session, ws, campaign.id, dimension)
                return stats.breakdown(session, ws, campaign.id, "domain", limit=stats.DOMAIN_ROWS)

            service_s, _ = harness.best_of(service, repeat=3)
            client = app.test_client()
            form = client.get("/crm/login").get_data(as_text=True)
            token = re.search(r'name="csrf_token" value="([^"]+)"', form)
            client.post(
                "/crm/login",
                data={
                    "username": "bench",
                    "password": "bench",
                    "csrf_token": token.group(1) if token else "",
                },
            )
            url = f"/marketing/campaigns/{campaign.id}/stats"

            def page() -> int:
                response = client.get(url)
                assert response.status_code == 200, response.status_code
                return len(response.data)

            started_at = time.perf_counter()
            page_s, size = harness.best_of(page, repeat=3)
            harness.say(f"   page bytes={size}, measured in {time.perf_counter() - started_at:.1f} s")
            verdicts = [
                harness.Verdict(
                    f"stats service ({recipients:,} recipients)",
                    service_s,
                    floor,
                    max_ratio=float("inf"),
                    max_seconds=1.0,
                ),
                harness.Verdict(
                    f"stats page render ({recipients:,} recipients)",
                    page_s,
                    floor,
                    max_ratio=float("inf"),
                    max_seconds=1.0,
                ),
            ]
            return harness.report(verdicts)


if __name__ == "__main__":
    raise SystemExit(main())
