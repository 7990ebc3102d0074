"""Memory benchmark: peak RSS of the process that runs a campaign of N recipients.

The parent prepares everything (database, N contacts by bulk insert, account, template,
campaign) and starts the SendCloud simulator in its own process; then a fresh child process
(``--child``) builds the app, records its RSS with the plugin loaded (the floor: what any
worker costs before it sends anything), runs ``runner.start`` (audience freeze) and
``runner.run_campaign`` to completion, and reports its RSS high-water mark
(``getrusage(RUSAGE_SELF).ru_maxrss``).  Running in a fresh process keeps the fixture
generation out of the high-water mark.

Target (issue 5, item 8): peak under 200 MB for 1,000,000 recipients (full profile; quick:
100,000).  A runner that loaded the audience or kept ORM objects alive would grow with N.

    python -m bench.memory --profile quick|full [--db postgres]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from . import harness

TARGET_MB = 200.0
API_KEY = "bench-key-0123456789abcdef"


def child(url: str, sim_url: str, campaign_id: int, durability: str) -> None:
    """Run the campaign in this process and print one JSON line with the measurements."""
    from plugin.campaigns import runner
    from plugin.demo.models import db
    from plugin.models import Campaign

    app = harness.bench_app(url, MARKETING_SENDCLOUD_API_BASE=sim_url)
    with app.app_context():
        if durability == "relaxed":
            harness.relax_durability(db.engine)
        db.session.execute(db.select(Campaign.id).limit(1))  # connect: the pool is part of the floor
        db.session.remove()
        floor_current = harness.current_rss_mb()
        floor_peak = harness.peak_rss_mb()
        ctx = runner.context_from_app(app)
        started = time.perf_counter()
        runner.start(db.session, campaign_id, ctx)
        frozen = time.perf_counter()
        outcome = runner.run_campaign(db.session, campaign_id, ctx)
        finished = time.perf_counter()
        ctx.close()
        campaign = db.session.get(Campaign, campaign_id)
        result = {
            "floor_mb": floor_current,
            "floor_peak_mb": floor_peak,
            "peak_mb": harness.peak_rss_mb(),
            "end_mb": harness.current_rss_mb(),
            "freeze_seconds": frozen - started,
            "send_seconds": finished - frozen,
            "outcome": outcome,
            "status": campaign.status,
            "sent": campaign.sent,
        }
    print(json.dumps(result), flush=True)


def main() -> int:
    p = harness.parser(__doc__.split("\n\n")[0])
    p.add_argument("--child", nargs=3, metavar=("URL", "SIM_URL", "CAMPAIGN_ID"), help=argparse_hidden())
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), args.durability)
        return 0
    n = args.n or harness.PROFILES[args.profile]

    from plugin.access import ensure_workspace
    from plugin.demo.models import db

    harness.header("memory", recipients=n, db=args.db, profile=args.profile)
    with harness.SimulatorProcess() as sim, harness.bench_database(args.db) as database:
        sim.add_account("bench_memory", API_KEY)
        app = harness.bench_app(database.url, MARKETING_SENDCLOUD_API_BASE=sim.url)
        with app.app_context():
            session = db.session
            ws = ensure_workspace(session, "default")
            session.commit()
            with harness.Stopwatch() as setup:
                tag_id = harness.bulk_contacts(session, ws.id, n)
            sender, template = harness.sender_and_template(session, ws.id)
            account = harness.sendcloud_account(session, ws.id, "bench_memory", API_KEY)
            campaign = harness.campaign(
                session, ws.id, account=account, sender=sender, template=template, tag_id=tag_id
            )
            campaign_id = campaign.id
            session.remove()
            db.engine.dispose()
        print(f"   {n:,} contacts inserted in {setup.seconds:.1f} s")
        completed = subprocess.run(  # noqa: S603 - our own module with our own arguments
            [
                sys.executable,
                "-m",
                "bench.memory",
                "--child",
                database.url,
                sim.url,
                str(campaign_id),
                "--durability",
                args.durability,
            ],
            capture_output=True,
            text=True,
            cwd=str(Path(__file__).resolve().parents[1]),
            env=os.environ.copy(),
            check=False,
        )
        if completed.returncode != 0:
            print(completed.stderr[-3000:])
            return 1
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        stats = sim.stats("bench_memory")
    rate = stats["mails"] / result["send_seconds"]
    growth = result["peak_mb"] - result["floor_mb"]
    print(
        "   floor (worker with the app loaded and connected, before sending): "
        f"{result['floor_mb']:.0f} MB RSS"
    )
    print(
        f"   campaign run: freeze {result['freeze_seconds']:.1f} s, send {result['send_seconds']:.1f} s "
        f"({rate:,.0f} recipients/s), outcome {result['outcome']}, campaign {result['status']}, "
        f"sent {result['sent']:,}"
    )
    print(
        f"   peak RSS {result['peak_mb']:.0f} MB (growth over the floor {growth:.0f} MB, "
        f"ratio {result['peak_mb'] / result['floor_mb']:.2f}); RSS at the end {result['end_mb']:.0f} MB"
    )
    ok = harness.verdict(
        {
            f"peak RSS {result['peak_mb']:.0f} MB < {TARGET_MB:.0f} MB": result["peak_mb"] < TARGET_MB,
            f"simulator saw each of {n:,} recipients once ({stats['mails']:,} mails, "
            f"{stats['unique']:,} distinct)": stats["mails"] == stats["unique"] == n,
            f"campaign completed ({result['status']})": result["status"] == "completed"
            and result["sent"] == n,
        }
    )
    return 0 if ok else 1


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
