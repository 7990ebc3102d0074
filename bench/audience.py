"""Audience freeze benchmark: 1,000,000 contacts (100,000 quick), on PostgreSQL and SQLite.

    python -m bench.audience --profile quick|full --db sqlite|postgres|both [--explain]

Data (the shape of reference/performance.md §2.6): every contact has 3 of 20 tags, a country (8
values) and an owner (4 values); 2 % work at a "competitor".  The campaign includes tags 1 and 2
and the view "country in (CN, DE) and owner in (u1, u2)", excludes tag 3 and the view "company
contains competitor", and 50,000 addresses (5,000 quick) are on the suppression list.

Subject: ``audience.freeze`` plus the commit (the live counts, ``count_audience``, are reported
too).  Floor, in the same run: a plain streamed scan of the contacts table (id, email, name),
server-side cursor on PostgreSQL.  Targets: ≤ 4× the scan and under 5 s, on both databases.
The frozen rows are checked against a Python set-algebra oracle computed while generating.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from plugin.campaigns import audience
from plugin.directory import SqlDirectory
from plugin.models import Campaign, CampaignRecipient, SavedView, Tag, Workspace

from .harness import (
    Verdict,
    analyze,
    best_of,
    bulk_insert,
    empty_database,
    migrated_engine,
    peak_rss_mb,
    report,
    say,
)

SIZES = {"quick": 100_000, "full": 1_000_000}
SUPPRESSED = {"quick": 5_000, "full": 50_000}
TAGS = 20
TAGS_PER_CONTACT = 3
COUNTRIES = ["CN", "DE", "US", "FR", "JP", "GB", "BR", "IN"]
OWNERS = ["u1", "u2", "u3", "u4"]
DOMAINS = ["qq.com", "163.com", "126.com", "sina.com", "gmail.com", "outlook.com", "example.de", "corp.cn"]
MAX_RATIO = 4.0
MAX_SECONDS = 5.0
REPEAT = 3


@dataclass
class Oracle:
    """What the freeze must produce, computed in Python from the generated data."""

    audience: int = 0
    excluded: int = 0
    suppressed: int = 0
    final: int = 0


@dataclass(frozen=True)
class Setup:
    workspace_id: int
    include_tags: tuple[int, int]
    include_view: int
    exclude_tag: int
    exclude_view: int


def _contacts(n: int, rng: random.Random, workspace_id: int, dialect: str) -> Iterator[tuple[Any, ...]]:
    now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    stamp: Any = now.replace(tzinfo=None) if dialect == "sqlite" else now
    for i in range(1, n + 1):
        local = f"user{i}"
        domain = DOMAINS[i % len(DOMAINS)]
        company = "Competitor Ltd" if rng.random() < 0.02 else f"Company {i % 997}"
        yield (
            i,
            workspace_id,
            f"{local}@{domain}",
            domain,
            local,
            f"Name {i}",
            company,
            COUNTRIES[rng.randrange(len(COUNTRIES))],
            OWNERS[rng.randrange(len(OWNERS))],
            "{}",
            stamp,
            stamp,
        )


def generate(engine: sa.Engine, n: int, suppressed_n: int, seed: int = 7) -> tuple[Setup, Oracle]:
    """Load the data set with bulk inserts; returns the ids to use and the oracle's counts."""
    rng = random.Random(seed)
    dialect = engine.dialect.name
    with Session(engine) as session:
        ws = Workspace(key="bench", name="Bench", timezone="Asia/Shanghai")
        session.add(ws)
        session.flush()
        tags = [Tag(workspace_id=ws.id, name=f"tag {t}") for t in range(1, TAGS + 1)]
        session.add_all(tags)
        include_view = SavedView(
            workspace_id=ws.id,
            name="CN/DE of u1/u2",
            rules={
                "match": "all",
                "rules": [
                    {"field": "country", "op": "in", "value": ["CN", "DE"]},
                    {"field": "owner", "op": "in", "value": ["u1", "u2"]},
                ],
            },
        )
        exclude_view = SavedView(
            workspace_id=ws.id,
            name="competitors",
            rules={"match": "all", "rules": [{"field": "company", "op": "contains", "value": "competitor"}]},
        )
        session.add_all([include_view, exclude_view])
        session.commit()
        setup = Setup(ws.id, (tags[0].id, tags[1].id), include_view.id, tags[2].id, exclude_view.id)
        tag_ids = [t.id for t in tags]

    # Contacts, remembering what the oracle needs (a bytearray of flags per contact id).
    started = time.perf_counter()
    in_view = bytearray(n + 1)
    excluded_by_view = bytearray(n + 1)

    def contact_rows() -> Iterator[tuple[Any, ...]]:
        for row in _contacts(n, rng, setup.workspace_id, dialect):
            cid = row[0]
            if row[7] in ("CN", "DE") and row[8] in ("u1", "u2"):
                in_view[cid] = 1
            if "competitor" in row[6].lower():
                excluded_by_view[cid] = 1
            yield row

    columns = [
        "id",
        "workspace_id",
        "email",
        "email_domain",
        "email_local",
        "name",
        "company",
        "country",
        "owner_id",
        "custom",
        "created_at",
        "updated_at",
    ]
    bulk_insert(engine, "marketing_contacts", columns, contact_rows())
    if dialect == "postgresql":
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT setval('marketing_contacts_id_seq', :n)"), {"n": n})

    included = bytearray(n + 1)
    excluded = bytearray(n + 1)
    inc_tags = set(setup.include_tags)

    def tag_rows() -> Iterator[tuple[int, int]]:
        for cid in range(1, n + 1):
            for tag in rng.sample(tag_ids, TAGS_PER_CONTACT):
                if tag in inc_tags:
                    included[cid] = 1
                if tag == setup.exclude_tag:
                    excluded[cid] = 1
                yield (cid, tag)

    bulk_insert(engine, "marketing_contact_tags", ["contact_id", "tag_id"], tag_rows())
    suppressed_ids = rng.sample(range(1, n + 1), suppressed_n)
    now = dt.datetime(2024, 2, 1, tzinfo=dt.UTC)
    stamp: Any = now.replace(tzinfo=None) if dialect == "sqlite" else now
    bulk_insert(
        engine,
        "marketing_suppressions",
        ["workspace_id", "email", "reason", "source", "created_at"],
        (
            (setup.workspace_id, f"user{cid}@{DOMAINS[cid % len(DOMAINS)]}", "unsubscribed", "bench", stamp)
            for cid in suppressed_ids
        ),
    )
    analyze(engine)
    say(
        f"  loaded {n:,} contacts, {n * TAGS_PER_CONTACT:,} taggings in {time.perf_counter() - started:.1f} s"
    )

    suppressed = set(suppressed_ids)
    oracle = Oracle()
    for cid in range(1, n + 1):
        if not (included[cid] or in_view[cid]):
            continue
        oracle.audience += 1
        if excluded[cid] or excluded_by_view[cid]:
            oracle.excluded += 1
        elif cid in suppressed:
            oracle.suppressed += 1
        else:
            oracle.final += 1
    return setup, oracle


@dataclass(frozen=True)
class _Settings:
    mx_check: bool = False
    mx_check_budget_seconds: float = 0.0


def scan(engine: sa.Engine) -> int:
    """The floor: stream every contact (id, email, name) to Python."""
    rows = 0
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=5000).execute(
            sa.text("SELECT id, email, name FROM marketing_contacts")
        )
        for _ in result:
            rows += 1
    return rows


def run_one(kind: str, profile: str, explain: bool) -> list[Verdict]:
    n = SIZES[profile]
    say(f"[{kind}] {profile}: {n:,} contacts")
    with empty_database(kind) as database:
        engine = migrated_engine(database.url)
        try:
            setup, oracle = generate(engine, n, SUPPRESSED[profile])
            directory = SqlDirectory()
            spec_json = {
                "include_tags": list(setup.include_tags),
                "include_views": [setup.include_view],
                "exclude_tags": [setup.exclude_tag],
                "exclude_views": [setup.exclude_view],
            }
            floor_s, rows = best_of(lambda: scan(engine), REPEAT)
            assert rows == n, rows

            spec = audience.AudienceSpec(
                include_tags=setup.include_tags,
                include_views=(setup.include_view,),
                exclude_tags=(setup.exclude_tag,),
                exclude_views=(setup.exclude_view,),
            )

            def live_count() -> audience.AudienceCounts:
                with Session(engine) as session:
                    return audience.count_audience(session, directory, setup.workspace_id, spec)

            count_s, counts = best_of(live_count, REPEAT)
            campaign_ids: list[int] = []

            def new_campaign() -> None:
                with Session(engine) as session:
                    session.execute(sa.delete(CampaignRecipient))
                    campaign = Campaign(
                        workspace_id=setup.workspace_id,
                        name=f"bench {len(campaign_ids)}",
                        audience=spec_json,
                        template_ids=[1, 2],
                        sender_ids=[1],
                    )
                    session.add(campaign)
                    session.commit()
                    campaign_ids.append(campaign.id)
                if kind == "postgres":
                    analyze(engine)

            def do_freeze() -> audience.AudienceCounts:
                with Session(engine) as session:
                    campaign = session.get(Campaign, campaign_ids[-1])
                    assert campaign is not None
                    result = audience.freeze(session, directory, campaign, settings=_Settings())
                    session.commit()
                    return result

            freeze_s, frozen = best_of(do_freeze, REPEAT, setup=new_campaign)
            if explain:
                show_plans(engine, directory, setup, spec, campaign_ids[-1])
        finally:
            engine.dispose()
    expected = audience.AudienceCounts(oracle.audience, oracle.excluded, oracle.suppressed, 0, oracle.final)
    ok = frozen == expected and counts == expected
    say(f"  oracle {expected.as_dict()}")
    say(f"  frozen {frozen.as_dict()}  {'(matches the oracle)' if ok else 'MISMATCH'}")
    say(f"  live count_audience: {count_s:.3f} s ({count_s / floor_s:.2f}× the scan)")
    say(f"  peak RSS {peak_rss_mb():.0f} MB")
    verdict = Verdict(
        f"audience freeze [{kind}, {profile}, {n:,} contacts]",
        freeze_s,
        floor_s,
        MAX_RATIO,
        MAX_SECONDS,
        notes={"recipients": f"{frozen.final:,}"},
    )
    if not ok:
        verdict.max_ratio = 0.0  # a wrong answer fails whatever its speed
    return [verdict]


def show_plans(engine: sa.Engine, directory: SqlDirectory, setup: Setup, spec: Any, campaign_id: int) -> None:
    """EXPLAIN ANALYZE (PostgreSQL) / EXPLAIN QUERY PLAN (SQLite) of the freeze's INSERT ... SELECT."""
    with Session(engine) as session:
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None
        q = audience._build(session, directory, setup.workspace_id, spec)
        assert q is not None
        if engine.dialect.name == "postgresql" and not spec.windowed:
            statement = audience._counting_insert(q, spec, campaign)  # what freeze runs there
        else:
            statement = audience._insert_statement(q, spec, campaign)
        compiled = statement.compile(engine, compile_kwargs={"literal_binds": True})
        sql = str(compiled)
        # SQLite renders OFFSET without LIMIT as ``LIMIT ? OFFSET n`` even with literal binds.
        leftover = tuple(compiled.params[name] for name in compiled.positiontup or ())
        session.execute(sa.delete(CampaignRecipient))
        conn = session.connection()
        if engine.dialect.name == "postgresql":
            plan = [r[0] for r in conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + sql)]
        else:
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, leftover)
            plan = [" | ".join(map(str, r)) for r in rows]
        session.rollback()
    say("  plan of the INSERT ... SELECT:")
    for line in plan:
        say("    " + line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=sorted(SIZES), default="quick")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--explain", action="store_true", help="print the query plan of the freeze")
    args = parser.parse_args(argv)
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    verdicts: list[Verdict] = []
    for kind in kinds:
        verdicts += run_one(kind, args.profile, args.explain)
    say("")
    return report(verdicts)


if __name__ == "__main__":
    sys.exit(main())
