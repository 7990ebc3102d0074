"""Dispatch benchmark: recipients per second through the real runner to the SendCloud simulator.

Subject: a campaign of N recipients (quick and full: 100,000, as the issue says) started and run
by ``plugin.campaigns.runner`` exactly as a worker does (``context_from_app`` on the demo app,
``start`` then ``run_campaign``), against the simulator in its own process on loopback.

Floor, in the same run and against the same simulator: a bare loop posting the same
100-recipient ``mail/send`` requests (the engine's own batches of the frozen campaign, built
and form-encoded beforehand by the runner's ``_build_message`` and the client's encoding, see
``floor_batches``) over one keep-alive urllib3 connection (the transport of the engine's
client).  The floor is measured before and after the engine and the faster of the two is kept
(the conservative choice for the ratio).

Target (issue 5, item 8): engine / floor >= 0.5 and >= 5,000 recipients/s.  The simulator's own
CPU time is printed: when it is close to the floor's wall time, the simulator is the ceiling of
both numbers, not the client.

    python -m bench.dispatch --profile quick [--db postgres] [--durability relaxed] [--workers 2]
        [--profile-engine out.prof]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import threading
import time

import urllib3

from . import harness

TARGET_RATIO = 0.5
TARGET_RATE = 5_000.0
API_KEY = "bench-key-0123456789abcdef"
PROFILES = {"quick": 100_000, "full": 100_000}


def floor_batches(session, app, campaign_id: int) -> list[dict]:
    """The engine's own batches of the frozen campaign, built before timing by the runner's own
    code (``_build_message``: the recipients' values, their open, click and unsubscribe tokens,
    the tracked links, the List-Unsubscribe headers), 100 recipients each in the order the
    runner claims them.  Only the idempotency key and the batch header differ.

    Why not a simpler message: the simulator substitutes every variable of every recipient in
    the subject, HTML and headers, so lighter batches would make the floor faster than "the
    same batches" the issue measures against (an earlier floor without tokens and headers cost
    the simulator ~20 % less CPU per call than the engine's batches)."""
    from sqlalchemy import select

    from plugin.campaigns import runner
    from plugin.models import CampaignRecipient as R
    from plugin.providers.sendcloud import build_send_params

    ctx = runner.context_from_app(app)
    row = session.execute(runner._BATCH_FACTS, {"cid": campaign_id}).one()
    facts = runner._CampaignFacts.of(campaign_id, row)
    account = runner._AccountFacts(
        row.account_id, row.account_kind, row.account_from_address, row.account_daily_limit
    )
    members = session.execute(
        select(R.id, R.contact_id, R.email, R.template_id, R.sender_id)
        .where(R.campaign_id == campaign_id, R.status == "pending")
        .order_by(R.id)
    ).all()
    now = dt.datetime.now(dt.UTC)
    bodies = []
    for start in range(0, len(members), 100):
        chunk = members[start : start + 100]
        n = start // 100
        batch = runner._Batch(
            10**9 + n, n, f"floor-{n}", "sending", chunk[0].template_id, chunk[0].sender_id, None, None
        )
        rows = [(m.id, m.contact_id, m.email, 0) for m in chunk]
        message = runner._build_message(session, facts, account, batch, rows, ctx, now)
        bodies.append(build_send_params(message))
    session.commit()  # the tracked links the engine will find registered
    ctx.close()
    return bodies


def run_floor(sim: harness.SimulatorProcess, api_user: str, bodies: list[dict], run: int) -> float:
    """Post every body over one keep-alive session; returns recipients per second (and prints
    how much of the wall time the simulator spent on CPU: near 100 % means it is the ceiling)."""
    from plugin.providers.sendcloud import form_body

    url = urllib3.util.parse_url(f"{sim.url}/mail/send")
    pool = urllib3.HTTPConnectionPool(url.host, url.port, maxsize=1, retries=False)
    forms = []
    for i, params in enumerate(bodies):  # encoded before timing: the loop only posts bytes
        data = {"apiUser": api_user, "apiKey": API_KEY}
        for key, value in params.items():
            if value is None:
                continue
            data[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        data["sendRequestId"] = f"floor-r{run}-{i}"
        forms.append(form_body(data))
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    recipients = 0
    sim_cpu = sim.cpu_seconds()
    with harness.Stopwatch() as watch:
        ports = set()  # local TCP ports used: one if the connection was kept alive throughout
        for data in forms:
            response = pool.request(
                "POST", url.path, body=data, headers=headers, timeout=30, preload_content=False
            )
            sock = response.connection.sock if response.connection is not None else None
            ports.add(sock.getsockname()[1] if sock is not None else None)
            body = json.loads(response.read())
            response.release_conn()
            if body.get("result") is not True:
                raise RuntimeError(f"the simulator refused a floor batch: {body}")
            recipients += len(body["info"]["emailIdList"])
    if len(ports) != 1 or None in ports:  # urllib3 reconnects silently when the server closes
        raise RuntimeError("the simulator closed connections: the floor was not one keep-alive loop")
    pool.close()
    sim_cpu = sim.cpu_seconds() - sim_cpu
    rate = recipients / watch.seconds
    print(
        f"   floor run {run}: {rate:,.0f} recipients/s; simulator CPU {sim_cpu:.1f} s of "
        f"{watch.seconds:.1f} s wall ({100 * sim_cpu / watch.seconds:.0f} %), "
        f"{1000 * sim_cpu / len(forms):.1f} ms per call"
    )
    return rate


def run_engine(app, campaign_id: int, workers: int, profile_to: str | None) -> str:
    """``run_campaign`` in ``workers`` threads, each with its own app context, session and context."""
    from plugin.campaigns import runner
    from plugin.demo.models import db

    outcomes: list[str] = []

    def work() -> None:
        with app.app_context():
            ctx = runner.context_from_app(app)
            try:
                outcomes.append(runner.run_campaign(db.session, campaign_id, ctx))
            finally:
                ctx.close()
                db.session.remove()

    if workers == 1 and profile_to:
        import cProfile

        profiler = cProfile.Profile()
        profiler.runcall(work)
        profiler.dump_stats(profile_to)
    elif workers == 1:
        work()
    else:
        threads = [threading.Thread(target=work) for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return ",".join(sorted(set(outcomes)))


def child(url: str, sim_url: str, campaign_id: int, threads: int, durability: str) -> None:
    """One worker process (as a Celery worker would be): build the app, connect, say "ready",
    wait for "go" on stdin, run the campaign in ``threads`` threads, print its CPU seconds."""
    import sys

    from plugin.demo.models import db
    from plugin.models import Campaign

    app = harness.bench_app(url, MARKETING_SENDCLOUD_API_BASE=sim_url, **_in_flight_config())
    with app.app_context():
        if durability == "relaxed":
            harness.relax_durability(db.engine)
        db.session.execute(db.select(Campaign.id).limit(1))
        db.session.remove()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":  # the parent went away: do not send anything
        raise SystemExit(1)
    cpu = time.process_time()
    outcome = run_engine(app, campaign_id, threads, None)
    print(json.dumps({"cpu": time.process_time() - cpu, "outcome": outcome}), flush=True)


def run_processes(
    database_url: str, sim_url: str, campaign_id: int, processes: int, threads: int, durability: str
):
    """``processes`` worker processes sharing the campaign; returns (outcome, their CPU seconds)
    and is timed by the caller from the moment every worker was told to go."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    procs = [
        subprocess.Popen(  # noqa: S603 - our own module with our own arguments
            [
                *(sys.executable, "-m", "bench.dispatch", "--child", database_url, sim_url),
                *(str(campaign_id), "--workers", str(threads), "--durability", durability),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(Path(__file__).resolve().parents[1]),
            env=os.environ.copy(),
        )
        for _ in range(processes)
    ]
    for proc in procs:
        if proc.stdout.readline().strip() != "ready":
            _kill(procs)
            raise RuntimeError("a worker process did not start")
    return procs


def _kill(procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def finish_processes(procs) -> tuple[str, float]:
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            _kill(procs)
            raise RuntimeError(f"a worker process failed ({proc.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    outcomes = ",".join(sorted({o for r in results for o in r["outcome"].split(",")}))
    return outcomes, sum(r["cpu"] for r in results)


def _in_flight_config() -> dict:
    """``--in-flight N`` reaches worker processes through the environment they inherit."""
    import os

    value = os.environ.get("BENCH_IN_FLIGHT")
    return {"MARKETING_CAMPAIGN_IN_FLIGHT": int(value)} if value else {}


def main() -> int:
    p = harness.parser(__doc__.split("\n\n")[0])
    p.add_argument("--child", nargs=3, metavar=("URL", "SIM_URL", "CAMPAIGN_ID"), help=argparse.SUPPRESS)
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="worker processes sharing the campaign (PostgreSQL; as several Celery workers would), "
        "each running --workers threads (default 1, as a Celery task)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="runner threads sharing the campaign (default: what the threads backend gives an "
        "unlimited SendCloud campaign, MARKETING_CAMPAIGN_THREADS)",
    )
    p.add_argument("--profile-engine", metavar="FILE", help="cProfile the engine run (1 worker) to FILE")
    p.add_argument(
        "--in-flight",
        type=int,
        default=None,
        help="batches each runner keeps in flight (default: MARKETING_CAMPAIGN_IN_FLIGHT's default)",
    )
    args = p.parse_args()
    if args.in_flight is not None:
        import os

        os.environ["BENCH_IN_FLIGHT"] = str(args.in_flight)
    n = args.n or PROFILES[args.profile]
    if args.workers is None:  # what each backend gives a campaign: threads, or one per task
        from plugin.config import DEFAULTS
        from plugin.tasks import threads_per_campaign

        dialect = "sqlite" if args.db == "sqlite" else "postgresql"
        threads = threads_per_campaign(DEFAULTS["CAMPAIGN_THREADS"], dialect)
        args.workers = 1 if args.processes > 1 else threads
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), args.workers, args.durability)
        return 0
    if args.processes > 1 and args.db != "postgres":
        p.error("--processes needs --db postgres (workers share a campaign through its claim cursor)")
    if args.processes > 1 and args.profile_engine:
        p.error("--profile-engine profiles one runner in this process; leave out --processes")

    from plugin.access import ensure_workspace
    from plugin.campaigns import runner
    from plugin.demo.models import db
    from plugin.models import Campaign

    harness.header(
        "dispatch",
        recipients=n,
        db=args.db,
        workers=args.workers,
        in_flight=args.in_flight or "default",
        processes=args.processes,
        profile=args.profile,
        durability=args.durability,
    )
    with harness.SimulatorProcess() as sim, harness.bench_database(args.db) as database:
        sim.add_account("bench_engine", API_KEY)
        sim.add_account("bench_floor", API_KEY)
        app = harness.bench_app(database.url, MARKETING_SENDCLOUD_API_BASE=sim.url, **_in_flight_config())
        with app.app_context():
            if args.durability == "relaxed":
                harness.relax_durability(db.engine)
            session = db.session
            ws = ensure_workspace(session, "default")
            session.commit()
            with harness.Stopwatch() as setup:
                tag_id = harness.bulk_contacts(session, ws.id, n)
            sender, template = harness.sender_and_template(session, ws.id)
            account = harness.sendcloud_account(session, ws.id, "bench_engine", API_KEY)
            campaign = harness.campaign(
                session, ws.id, account=account, sender=sender, template=template, tag_id=tag_id
            )
            campaign_id = campaign.id  # the ORM row expires at the runner's commits
            print(f"   {n:,} contacts inserted in {setup.seconds:.1f} s")
            ctx = runner.context_from_app(app)
            with harness.Stopwatch() as freeze:
                runner.start(session, campaign_id, ctx)
            ctx.close()
            bodies = floor_batches(session, app, campaign_id)
            floor_1 = run_floor(sim, "bench_floor", bodies, 1)
            session.remove()
            procs = None
            if args.processes > 1:
                procs = run_processes(
                    database.url, sim.url, campaign_id, args.processes, args.workers, args.durability
                )
            sim_cpu_before = sim.cpu_seconds()
            with (
                harness.count_sql(db.engine) as sql,
                harness.MachineCpu() as machine,
                harness.Stopwatch() as engine,
            ):
                if procs is not None:
                    for proc in procs:
                        proc.stdin.write("go\n")
                        proc.stdin.flush()
                    outcome, engine_cpu = finish_processes(procs)
                else:
                    cpu_before = time.process_time()
                    outcome = run_engine(app, campaign_id, args.workers, args.profile_engine)
                    engine_cpu = time.process_time() - cpu_before
            sim_cpu = sim.cpu_seconds() - sim_cpu_before
            floor_2 = run_floor(sim, "bench_floor", bodies, 2)

            stats = sim.stats("bench_engine")
            done = db.session.get(Campaign, campaign_id)
            sent, status = done.sent, done.status
        floor = max(floor_1, floor_2)
        rate = stats["mails"] / engine.seconds
        ratio = rate / floor
        print(f"   freeze (runner.start): {freeze.seconds:.2f} s")
        print(
            f"   engine: {stats['mails']:,} recipients in {engine.seconds:.2f} s = {rate:,.0f} recipients/s "
            f"({stats['calls']} calls; outcome {outcome}, campaign {status}, sent {sent:,})"
        )
        print(
            f"   simulator CPU during the engine run: {sim_cpu:.1f} s of {engine.seconds:.1f} s wall "
            f"({100 * sim_cpu / engine.seconds:.0f} %)"
        )
        batches = max(1, stats["calls"])
        print(
            f"   machine during the engine run: {100 * machine.busy_share:.0f} % of all CPUs busy; "
            f"PostgreSQL CPU {1000 * machine.postgres_seconds / batches:.1f} ms per batch"
        )
        print(
            f"   per batch: {1000 * engine.seconds / batches:.1f} ms wall, engine CPU "
            f"{1000 * engine_cpu / batches:.1f} ms, simulator CPU {1000 * sim_cpu / batches:.1f} ms, "
            + (
                f"{sql.statements / batches:.1f} SQL statements, {sql.commits / batches:.1f} commits"
                if procs is None
                else "(statements counted in this process only)"
            )
        )
        print(f"   floor (bare keep-alive loop, best of 2): {floor:,.0f} recipients/s")
        print(f"   efficiency engine/floor: {ratio:.2f}")
        ok = harness.verdict(
            {
                f"efficiency {ratio:.2f} >= {TARGET_RATIO}": ratio >= TARGET_RATIO,
                f"rate {rate:,.0f}/s >= {TARGET_RATE:,.0f}/s": rate >= TARGET_RATE,
                f"simulator saw each of {n:,} recipients once ({stats['mails']:,} mails, "
                f"{stats['unique']:,} distinct)": stats["mails"] == stats["unique"] == n,
                f"campaign completed ({status})": status == "completed" and sent == n,
            }
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
