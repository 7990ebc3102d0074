"""SMTP benchmark: personalized mails per second through the runner's SMTP channel.

Everyone sends the same personalized newsletter (the plugin's compiled content: CSS inlined,
text part, unsubscribe link and postal address) to the same N contacts through the same
discarding aiosmtpd sink (``bench.smtpsink``, its own process), in one run:

* **floor**: a bare ``smtplib`` loop over one connection sending messages built beforehand
  (with the plugin's own ``build_message``), best of a run before and after the others;
* **engine**: ``runner.start`` + ``runner.run_campaign`` on an SMTP account with send rate 0,
  with the runner's per-recipient commit (only the mail in flight may be sent twice after a
  crash);
* **peers**: django-post-office (queue + send), Flask-Mailman and mailmerge, each in its own
  process (``bench.smtp_peers``) with the same values.

Target (issue 5, item 8): engine / floor >= 0.7 and ahead of every peer.

Profiles: quick 2,000 mails, full 20,000 (an SMTP sink on loopback does hundreds to a few
thousand mails per second, so 100,000 would take minutes per contender without telling more).

    python -m bench.smtp --profile quick [--db postgres] [--durability relaxed]
"""

from __future__ import annotations

import datetime as dt
import json
import random
import smtplib
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import harness

TARGET_RATIO = 0.7
PROFILES = {"quick": 2_000, "full": 20_000}


class Sink:
    """``bench.smtpsink`` in a child process; ``count()`` = messages accepted so far."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.smtpsink"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(Path(__file__).resolve().parents[1]),
        )
        assert self._proc.stdout is not None
        self.port: int = json.loads(self._proc.stdout.readline())["port"]

    def count(self) -> int:
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._proc.stdin.write("count\n")
        self._proc.stdin.flush()
        return int(json.loads(self._proc.stdout.readline())["messages"])

    def stop(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()


def prepared_mails(
    app, workspace_id: int, sender, template, contacts
) -> tuple[dict, list[tuple[str, bytes]]]:
    """The peers' content file and the floor's wire messages, built from the same values."""
    from plugin import tracking
    from plugin.campaigns import rendering
    from plugin.providers.base import BatchMessage, Recipient
    from plugin.providers.smtp import SmtpSettings, _prepare, build_message

    settings = app.extensions["marketing"].settings
    content = rendering.compile_content(
        template,
        sender=sender,
        company_name=sender.company_name,
        postal_address=sender.postal_address,
        tracking=True,
    )
    now = dt.datetime.now(dt.UTC)
    rng = random.Random(1)
    recipients = [
        Recipient(
            email=c.email,
            variables=rendering.recipient_values(
                content,
                c,
                email=c.email,
                unsubscribe_url=tracking.unsubscribe_url(settings, workspace_id, c.id),
                now=now,
                rng=rng,
            ),
            message_id=f"<floor.{c.id}@mail.example.com>",
        )
        for c in contacts
    ]
    peer_content = {
        "subject": content.subject,
        "html": content.html,
        "text": content.text,
        "from": sender.from_address,
        "from_name": sender.from_name,
        "reply_to": sender.reply_to,
        "recipients": [{"email": r.email, "values": dict(r.variables)} for r in recipients],
    }
    wire = []
    smtp_settings = SmtpSettings(host="127.0.0.1", port=25, security="none", from_address=sender.from_address)
    for start in range(0, len(recipients), 100):
        message = BatchMessage(
            from_address=sender.from_address,
            from_name=sender.from_name,
            subject=content.subject,
            html=content.html,
            text=content.text or None,
            recipients=recipients[start : start + 100],
            idempotency_key=f"floor-{start}",
            reply_to=sender.reply_to,
            headers={"SC-Custom-campaign": "1"},
            kind="batch",
        )
        prepared = _prepare(message, smtp_settings)
        for r in message.recipients:
            assert r.message_id is not None
            wire.append(
                (r.email, build_message(message, r, prepared, to_address=r.email, message_id=r.message_id))
            )
    return peer_content, wire


def run_floor(sink: Sink, envelope_from: str, wire: list[tuple[str, bytes]]) -> float:
    before = sink.count()
    with harness.Stopwatch() as watch:
        smtp = smtplib.SMTP("127.0.0.1", sink.port)
        smtp.ehlo()
        for to, data in wire:
            smtp.sendmail(envelope_from, [to], data)
        smtp.quit()
    delivered = sink.count() - before
    if delivered != len(wire):
        raise RuntimeError(f"the sink got {delivered} of {len(wire)} floor messages")
    return len(wire) / watch.seconds


def run_peer(name: str, sink: Sink, workdir: Path, n: int) -> dict[str, Any]:
    before = sink.count()
    completed = subprocess.run(  # noqa: S603 - our own module with our own arguments
        [
            sys.executable,
            "-m",
            "bench.smtp_peers",
            "--peer",
            name,
            "--port",
            str(sink.port),
            "--workdir",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        cwd=str(Path(__file__).resolve().parents[1]),
        check=False,
    )
    if completed.returncode != 0:
        return {"error": completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else "failed"}
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["delivered"] = sink.count() - before
    result["rate"] = n / result["seconds"]
    return result


def main() -> int:
    p = harness.parser(__doc__.split("\n\n")[0])
    p.add_argument("--peers", default="django-post-office,flask-mailman,mailmerge")
    p.add_argument("--profile-engine", metavar="FILE", help="cProfile the engine run to FILE")
    args = p.parse_args()
    n = args.n or PROFILES[args.profile]

    from plugin.access import ensure_workspace
    from plugin.campaigns import runner
    from plugin.demo.models import db
    from plugin.models import Campaign

    harness.header("smtp", mails=n, db=args.db, profile=args.profile, durability=args.durability)
    sink = Sink()
    workdir = Path(tempfile.mkdtemp(prefix="mkt-bench-smtp-"))
    try:
        with harness.bench_database(args.db) as database:
            app = harness.bench_app(database.url)
            with app.app_context():
                if args.durability == "relaxed":
                    harness.relax_durability(db.engine)
                session = db.session
                ws = ensure_workspace(session, "default")
                session.commit()
                tag_id = harness.bulk_contacts(session, ws.id, n)
                sender, template = harness.sender_and_template(session, ws.id)
                account = harness.smtp_account(session, ws.id, "127.0.0.1", sink.port)
                campaign = harness.campaign(
                    session, ws.id, account=account, sender=sender, template=template, tag_id=tag_id
                )
                campaign_id = campaign.id  # the ORM row expires at the runner's commits
                peer_content, wire = prepared_mails(
                    app, ws.id, sender, template, harness.contact_records(session, ws.id, n)
                )
                (workdir / "content.json").write_text(json.dumps(peer_content), encoding="utf-8")
                envelope_from = sender.from_address
                floor_1 = run_floor(sink, envelope_from, wire)
                print(f"   floor run 1: {floor_1:,.0f} mails/s")

                ctx = runner.context_from_app(app)
                runner.start(session, campaign_id, ctx)
                ctx.close()
                session.remove()
                before = sink.count()
                with harness.count_sql(db.engine) as sql, harness.Stopwatch() as engine:
                    ctx = runner.context_from_app(app)
                    if args.profile_engine:
                        import cProfile

                        profiler = cProfile.Profile()
                        outcome = profiler.runcall(runner.run_campaign, db.session, campaign_id, ctx)
                        profiler.dump_stats(args.profile_engine)
                    else:
                        outcome = runner.run_campaign(db.session, campaign_id, ctx)
                    ctx.close()
                delivered = sink.count() - before
                done = db.session.get(Campaign, campaign_id)
                status, sent = done.status, done.sent
                db.session.remove()
            rate = delivered / engine.seconds
            print(
                f"   engine: {delivered:,} mails in {engine.seconds:.2f} s = {rate:,.0f} mails/s "
                f"(outcome {outcome}, campaign {status}, sent {sent:,}); per mail "
                f"{sql.statements / max(1, delivered):.1f} SQL statements and "
                f"{sql.commits / max(1, delivered):.2f} commits through SQLAlchemy, plus the mail's own "
                "UPDATE and commit on the runner's driver connection"
            )
            peers: dict[str, dict[str, Any]] = {}
            for name in [x for x in args.peers.split(",") if x]:
                peers[name] = result = run_peer(name, sink, workdir, n)
                if "error" in result:
                    print(f"   peer {name}: ERROR {result['error']}")
                    continue
                extra = ""
                if "enqueue_seconds" in result:
                    extra = (
                        f" (enqueue {n / result['enqueue_seconds']:,.0f}/s, "
                        f"deliver {n / result['deliver_seconds']:,.0f}/s)"
                    )
                print(
                    f"   peer {name}: {result['rate']:,.0f} mails/s{extra}, sink got {result['delivered']:,}"
                )
            floor_2 = run_floor(sink, envelope_from, wire)
            print(f"   floor run 2: {floor_2:,.0f} mails/s")
        floor = max(floor_1, floor_2)
        ratio = rate / floor
        print(f"   floor (pre-built bytes, one smtplib connection, best of 2): {floor:,.0f} mails/s")
        print(f"   efficiency engine/floor: {ratio:.2f}")
        for name, result in peers.items():
            if "rate" in result:
                print(
                    f"   {name}: {result['rate'] / floor:.2f} of the floor; "
                    f"engine/peer {rate / result['rate']:.2f}"
                )
        checks = {
            f"efficiency {ratio:.2f} >= {TARGET_RATIO}": ratio >= TARGET_RATIO,
            f"sink got all {n:,} engine mails ({delivered:,}), campaign {status}": delivered == n
            and status == "completed",
        }
        for name, result in peers.items():
            if "rate" in result:
                checks[f"ahead of {name} ({rate:,.0f} vs {result['rate']:,.0f} mails/s)"] = (
                    rate > result["rate"]
                )
                checks[f"{name} delivered all {n:,} ({result['delivered']:,})"] = result["delivered"] == n
            else:
                checks[f"{name} ran"] = False
        ok = harness.verdict(checks)
    finally:
        sink.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
