"""The campaign runner against the SendCloud simulator over HTTP: every recipient exactly once,
within quota, through provider faults, quota pauses and resumption, SMTP per-recipient records."""

from __future__ import annotations

import datetime as dt
import os
from collections import Counter
from decimal import Decimal

import campaign_kit as kit
import pytest
from flask_babel import force_locale
from sqlalchemy import select

from plugin import quota, suppression
from plugin.campaigns import lifecycle, runner
from plugin.errors import InvalidTransition
from plugin.models import Campaign, CampaignRecipient, QuotaLedger, SendBatch
from plugin.sandbox.sendcloud import SendCloudSimulator, SimulatorServer
from plugin.sandbox.smtp_sink import SmtpSink


@pytest.fixture(scope="module")
def simulator():
    sim = SendCloudSimulator(deliver_delay=3600, price_per_mail=Decimal("0.001"))
    with SimulatorServer(sim) as server:
        yield server


@pytest.fixture
def sim(simulator):
    simulator.simulator.clear()
    simulator.simulator.faults.update(
        {
            "error_rate": 0.0,
            "fail_next": 0,
            "timeout_after_accept": 0.0,
            "throttle": False,
            "quota_exhausted": False,
        }
    )
    return simulator.simulator


@pytest.fixture
def app_config(app_config, simulator):
    app_config["MARKETING_SENDCLOUD_API_BASE"] = simulator.url
    app_config["MARKETING_PROVIDER_TIMEOUT"] = 2.0
    app_config["MARKETING_MAX_CONSECUTIVE_FAILURES"] = 50
    return app_config


_users = iter(range(10_000))


@pytest.fixture
def setup(app, session, workspace, sim):
    """A SendCloud account (fresh API_USER on the simulator), sender and template."""
    user = f"run_{next(_users)}"
    sim.add_account(user, kit.API_KEY, quota=10_000, balance=Decimal("1000"))
    account = kit.sendcloud_account(session, workspace.id, api_user=user)
    sender = kit.sender(session, workspace.id)
    template = kit.template(session, workspace.id)
    return {"account": account, "sender": sender, "template": template, "api_user": user}


@pytest.fixture
def tagged_campaign(session, workspace, setup):
    """``tagged_campaign(n, **options)``: ``n`` contacts tagged "all" and a campaign to them through
    the setup's account, sender and template (``options`` go to ``kit.campaign``)."""

    def make(n: int, **options) -> Campaign:
        return kit.tagged_campaign(
            session,
            workspace.id,
            n,
            account=setup["account"],
            template=setup["template"],
            sender=setup["sender"],
            **options,
        )

    return make


def _ctx(app, **kw):
    return runner.context_from_app(app, backoff_base=0.01, **kw)


def _sync(session, workspace_id, account, ctx):
    from plugin import quota_sync

    quota_sync.sync_account(session, workspace_id, account, ctx.provider(account, "batch"))


def _batch_ledger(session, account_id: int) -> int:
    """The id of the account's whole-account campaign ledger (today's)."""
    return session.scalar(
        select(QuotaLedger.id).where(
            QuotaLedger.account_id == account_id, QuotaLedger.channel == "batch", QuotaLedger.owner == ""
        )
    )


def _mails_to(sim, api_user):
    return [m for m in sim.mails() if m.api_user == api_user]


def test_a_campaign_sends_each_included_recipient_once_with_its_own_values(
    app, session, workspace, setup, sim
):
    kit.contacts(session, workspace.id, 250, tags=["vip"])
    kit.contacts(session, workspace.id, 40, tags=["vip", "blocked"], start=1000)
    kit.contacts(session, workspace.id, 30, tags=["other"], start=2000)
    vip, blocked = kit.tag_id(session, workspace.id, "vip"), kit.tag_id(session, workspace.id, "blocked")
    suppression.add(session, workspace.id, "user7@example.net", "unsubscribed", source="test")
    session.commit()
    c = kit.campaign(
        session,
        workspace.id,
        include_tags=[vip],
        exclude_tags=[blocked],
        **{k: setup[k] for k in ("account", "template", "sender")},
    )
    ctx = _ctx(app)
    runner.start(session, c.id, ctx)
    assert runner.run_campaign(session, c.id, ctx) == runner.DONE

    mails = _mails_to(sim, setup["api_user"])
    counts = Counter(m.recipient for m in mails)
    assert len(counts) == 249
    assert set(counts.values()) == {1}
    assert "user7@example.net" not in counts
    assert all(r.endswith("@example.net") and int(r[4:].split("@")[0]) < 250 for r in counts)
    one = next(m for m in mails if m.recipient == "user42@example.net")
    assert one.subject == "Hello Name42"
    assert "Dear Name42, your mail is user42@example.net." in one.html
    assert "1 Example Road, Shanghai" in one.html  # postal address footer
    session.expire_all()
    campaign = session.get(Campaign, c.id)
    assert campaign.status == "completed"
    assert campaign.sent == 249
    assert kit.recipient_statuses(session, c.id) == {"accepted": 249, "skipped": 1}  # the suppressed one
    assert all(
        m is not None
        for m in session.scalars(
            select(CampaignRecipient.provider_message_id).where(
                CampaignRecipient.campaign_id == c.id, CampaignRecipient.status == "accepted"
            )
        )
    )
    assert session.scalar(select(SendBatch.id).where(SendBatch.status != "sent")) is None


def test_provider_faults_never_duplicate_or_lose_a_recipient(
    app, app_config, session, workspace, setup, tagged_campaign, sim
):
    c = tagged_campaign(1200)
    ctx = _ctx(app)
    runner.start(session, c.id, ctx)
    sim.faults.update({"error_rate": 0.3})
    # 5 % timeouts after acceptance: emulate by alternating the fault between runs of batches
    outcome = None
    for round_ in range(400):
        sim.faults.update(
            {"timeout_after_accept": 3.0 if round_ % 20 == 7 else 0.0, "throttle": round_ % 25 == 3}
        )
        outcome = runner.run_batch(session, c.id, ctx)
        if outcome == runner.DONE:
            break
        if outcome == runner.RETRY:
            session.execute(Campaign.__table__.update().where(Campaign.id == c.id).values(retry_at=None))
            session.commit()
    assert outcome == runner.DONE
    counts = Counter(m.recipient for m in _mails_to(sim, setup["api_user"]))
    assert len(counts) == 1200
    assert max(counts.values()) == 1, [r for r, n in counts.items() if n > 1][:5]
    session.expire_all()
    assert session.get(Campaign, c.id).sent == 1200


def _run_to_the_end(session, campaign_id: int, ctx, *, rounds: int) -> str:
    """``run_campaign`` again after each back-off (cut short) until done or ``rounds`` runs."""
    outcome = ""
    for _ in range(rounds):
        outcome = runner.run_campaign(session, campaign_id, ctx)
        if outcome == runner.DONE:
            break
        session.execute(Campaign.__table__.update().where(Campaign.id == campaign_id).values(retry_at=None))
        session.commit()
    return outcome


def _in_flight_counter():
    """A step hook counting batches sent and not yet answered; ``peak`` is the most at once."""
    state = {"out": 0, "peak": 0, "sent": 0}

    def hook(name: str) -> None:
        if name == "batch:before_send":
            state["out"] += 1
            state["sent"] += 1
            state["peak"] = max(state["peak"], state["out"])
        elif name == "batch:after_send":
            state["out"] -= 1

    return state, hook


def test_a_runner_keeps_three_batches_in_flight_and_sends_each_recipient_once(
    app, session, workspace, setup, tagged_campaign, sim
):
    c = tagged_campaign(1000)
    state, hook = _in_flight_counter()
    ctx = _ctx(app, on_step=hook)
    assert ctx.settings.campaign_in_flight == 3
    runner.start(session, c.id, ctx)
    assert runner.run_campaign(session, c.id, ctx) == runner.DONE
    assert state["peak"] == 3, "the provider had three batches at once"
    assert state["out"] == 0
    assert state["sent"] == 10
    counts = Counter(m.recipient for m in _mails_to(sim, setup["api_user"]))
    assert len(counts) == 1000
    assert set(counts.values()) == {1}
    session.expire_all()
    assert session.get(Campaign, c.id).sent == 1000
    assert session.scalar(select(SendBatch.id).where(SendBatch.status != "sent")) is None


def test_a_campaign_with_a_rate_sends_one_batch_at_a_time(
    app, session, workspace, setup, tagged_campaign, sim
):
    c = tagged_campaign(300, send_rate=100_000)
    state, hook = _in_flight_counter()
    ctx = _ctx(app, on_step=hook)
    runner.start(session, c.id, ctx)
    assert runner.run_campaign(session, c.id, ctx) == runner.DONE
    assert state["peak"] == 1
    assert state["sent"] == 3


def test_batches_in_flight_ride_through_provider_faults_without_duplicates(
    app, session, workspace, setup, tagged_campaign, sim
):
    """30 % HTTP 500, answers that time out after the send was accepted, throttling: while
    other batches are in flight; every recipient exactly once in the end."""
    c = tagged_campaign(1500)
    sends = Counter()

    def hook(name: str) -> None:
        if name == "batch:before_send":  # vary the faults the next requests meet
            sends["n"] += 1
            n = sends["n"]
            sim.faults.update({"timeout_after_accept": 3.0 if n % 9 == 4 else 0.0, "throttle": n % 13 == 6})

    ctx = _ctx(app, on_step=hook)
    runner.start(session, c.id, ctx)
    sim.faults.update({"error_rate": 0.3})
    assert _run_to_the_end(session, c.id, ctx, rounds=50) == runner.DONE
    assert sends["n"] > 15, "faults made batches go again"
    counts = Counter(m.recipient for m in _mails_to(sim, setup["api_user"]))
    assert len(counts) == 1500
    assert max(counts.values()) == 1, [r for r, n in counts.items() if n > 1][:5]
    session.expire_all()
    assert session.get(Campaign, c.id).sent == 1500


def test_an_error_while_batches_are_in_flight_still_records_what_they_sent(
    app, session, workspace, setup, tagged_campaign, sim
):
    c = tagged_campaign(1000)
    claims = Counter()

    def hook(name: str) -> None:
        if name == "batch:claimed":
            claims["n"] += 1
            if claims["n"] == 3:  # two batches are out: the run breaks before the third goes
                raise RuntimeError("worker trouble")

    ctx = _ctx(app, on_step=hook, batch_lease=dt.timedelta(seconds=0))
    runner.start(session, c.id, ctx)
    with pytest.raises(RuntimeError, match="worker trouble"):
        runner.run_campaign(session, c.id, ctx)
    session.rollback()
    statuses = Counter(session.scalars(select(SendBatch.status).where(SendBatch.campaign_id == c.id)))
    assert statuses == {"sent": 2, "sending": 1}, statuses  # claimed, committed, never sent
    assert kit.recipient_statuses(session, c.id) == {"accepted": 200, "sending": 100, "pending": 700}
    assert len(_mails_to(sim, setup["api_user"])) == 200
    # the next run takes the left batch over (its lease is over) and finishes, each mail once
    ctx2 = _ctx(app)
    assert runner.run_campaign(session, c.id, ctx2) == runner.DONE
    counts = Counter(m.recipient for m in _mails_to(sim, setup["api_user"]))
    assert len(counts) == 1000
    assert set(counts.values()) == {1}


def test_a_batch_awaited_past_its_lease_is_not_taken_over_by_its_own_runner(
    app, session, workspace, setup, tagged_campaign, sim
):
    """Slow answers and a short lease (over several of the runner's looks for stale batches,
    ``STALE_CHECK``): its own batches in flight stay its own (taken over, they would be sent
    again under their key and counted twice)."""
    c = tagged_campaign(3000)
    ctx = _ctx(app, batch_lease=dt.timedelta(seconds=0.3))
    runner.start(session, c.id, ctx)
    sim.faults.update({"latency": 0.4})
    try:
        assert runner.run_campaign(session, c.id, ctx) == runner.DONE
    finally:
        sim.faults.update({"latency": 0.0})
    session.expire_all()
    assert session.get(Campaign, c.id).sent == 3000
    counts = Counter(m.recipient for m in _mails_to(sim, setup["api_user"]))
    assert len(counts) == 3000
    assert set(counts.values()) == {1}
    assert len(sim.requests("mail/send")) == 30, "no batch went out twice"


def test_one_outage_counts_once_however_many_batches_were_in_flight(
    app, session, workspace, setup, tagged_campaign, sim, monkeypatch
):
    """Three batches out when the provider fails all three: one failure towards the automatic
    pause, not three."""
    import dataclasses

    state = app.extensions["marketing"]
    monkeypatch.setattr(state, "settings", dataclasses.replace(state.settings, max_consecutive_failures=2))
    c = tagged_campaign(800)
    ctx = _ctx(app)
    runner.start(session, c.id, ctx)
    sim.faults.update({"fail_next": 3})
    outcome = _run_to_the_end(session, c.id, ctx, rounds=20)
    session.expire_all()
    campaign = session.get(Campaign, c.id)
    assert outcome == runner.DONE, campaign.status
    assert campaign.sent == 800
    counts = Counter(m.recipient for m in _mails_to(sim, setup["api_user"]))
    assert len(counts) == 800
    assert set(counts.values()) == {1}


def test_quota_pause_shows_a_reason_and_resumes_the_next_provider_day(
    app, session, workspace, setup, tagged_campaign, sim
):
    sim.set_account(setup["api_user"], quota=250, used=0)
    c = tagged_campaign(400)
    day1 = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)  # 18:00 in Beijing
    clock = [day1]
    ctx = _ctx(app, clock=lambda: clock[0])
    runner.start(session, c.id, ctx)
    assert runner.run_campaign(session, c.id, ctx) == runner.BLOCKED
    session.expire_all()
    campaign = session.get(Campaign, c.id)
    assert campaign.status == "paused"
    assert campaign.pause_reason == "quota"
    assert campaign.retry_at == dt.datetime(2026, 11, 23, 16, 0, tzinfo=dt.UTC)  # 00:00 Beijing
    with force_locale("en"):
        assert "resumes automatically" in lifecycle.pause_reason_text(campaign.pause_reason)
    assert "自动" in lifecycle.pause_reason_text(
        campaign.pause_reason
    )  # zh_CN when no request says otherwise
    assert len(_mails_to(sim, setup["api_user"])) == 250  # the whole quota, the last batch partial
    # Not yet the next day: stays paused.
    clock[0] = day1 + dt.timedelta(hours=5)
    assert runner.resume_if_possible(session, c.id, ctx) is False
    # The provider's day rolls over: sync, then it resumes and finishes without duplicates.
    sim.roll_day()
    clock[0] = day1 + dt.timedelta(hours=6, minutes=1)
    _sync(session, workspace.id, setup["account"], ctx)
    assert runner.resume_if_possible(session, c.id, ctx) is True
    assert runner.run_campaign(session, c.id, ctx) == runner.DONE
    counts = Counter(m.recipient for m in _mails_to(sim, setup["api_user"]))
    assert len(counts) == 400
    assert set(counts.values()) == {1}
    # Batches numbered without gaps or repeats, each key made of its number, whichever way it
    # was claimed (on PostgreSQL a claim the ledger could not cover is rolled back and redone
    # reserve-first: its number must not be used up).
    batches = session.execute(
        select(SendBatch.seq, SendBatch.idempotency_key, SendBatch.size).where(SendBatch.campaign_id == c.id)
    ).all()
    assert sorted(b.seq for b in batches) == list(range(1, len(batches) + 1))
    assert all(b.idempotency_key == f"mkt-w{workspace.id}-c{c.id}-b{b.seq}" for b in batches)
    assert sorted(b.size for b in batches) == [50, 50, 100, 100, 100]


def test_provider_quota_answer_pauses_at_once(app, session, workspace, setup, tagged_campaign, sim):
    c = tagged_campaign(150)
    ctx = _ctx(app)
    runner.start(session, c.id, ctx)
    sim.faults.update({"quota_exhausted": True})
    assert runner.run_batch(session, c.id, ctx) == runner.BLOCKED
    session.expire_all()
    campaign = session.get(Campaign, c.id)
    assert (campaign.status, campaign.pause_reason) == ("paused", "quota")
    assert _mails_to(sim, setup["api_user"]) == []
    held = session.scalar(
        select(QuotaLedger.reserved).where(
            QuotaLedger.account_id == setup["account"].id, QuotaLedger.owner == ""
        )
    )
    assert held == 0  # the refused batch gave its quota back
    sim.faults.update({"quota_exhausted": False})
    runner.resume(session, c.id)
    assert runner.run_campaign(session, c.id, ctx) == runner.DONE
    assert len({m.recipient for m in _mails_to(sim, setup["api_user"])}) == 150


def test_balance_too_low_pauses_with_the_balance_reason(app, session, workspace, setup, tagged_campaign, sim):
    sim.set_account(setup["api_user"], available=Decimal("0.0001"), balance=Decimal("0.0001"))
    c = tagged_campaign(20)
    ctx = _ctx(app)
    runner.start(session, c.id, ctx)  # syncs: the snapshot shows the empty balance
    assert runner.run_batch(session, c.id, ctx) == runner.BLOCKED
    session.expire_all()
    assert session.get(Campaign, c.id).pause_reason == "balance"
    assert _mails_to(sim, setup["api_user"]) == []


def test_a_batch_interrupted_after_the_provider_accepted_it_is_not_sent_twice(
    app, session, workspace, setup, tagged_campaign, sim
):
    """A worker dies between the provider's acceptance and our record: the next worker takes the
    batch over after its lease and re-sends it with the same key; SendCloud answers "duplicate"."""
    c = tagged_campaign(120)

    class Crash(Exception):
        pass

    def crash_after_send(step):
        if step == "batch:after_send":
            raise Crash

    clock = [dt.datetime.now(dt.UTC)]
    ctx = _ctx(app, on_step=crash_after_send, clock=lambda: clock[0])
    runner.start(session, c.id, ctx)
    with pytest.raises(Crash):
        runner.run_batch(session, c.id, ctx)
    session.rollback()
    assert len(_mails_to(sim, setup["api_user"])) == 100
    clock[0] += runner.BATCH_LEASE + dt.timedelta(seconds=1)
    ctx2 = _ctx(app, clock=lambda: clock[0])
    assert runner.run_campaign(session, c.id, ctx2) == runner.DONE
    counts = Counter(m.recipient for m in _mails_to(sim, setup["api_user"]))
    assert len(counts) == 120
    assert set(counts.values()) == {1}
    session.expire_all()
    assert session.get(Campaign, c.id).sent == 120


def test_user_pause_resume_and_cancel(app, session, workspace, setup, tagged_campaign, sim):
    c = tagged_campaign(300)
    ctx = _ctx(app)
    runner.start(session, c.id, ctx)
    assert runner.run_batch(session, c.id, ctx) == runner.SENT
    runner.pause(session, c.id, by="marketer")
    assert runner.run_batch(session, c.id, ctx) == runner.IDLE
    assert runner.resume_if_possible(session, c.id, ctx) is False  # a user's pause waits for a user
    runner.resume(session, c.id)
    assert runner.run_batch(session, c.id, ctx) == runner.SENT
    runner.cancel(session, c.id)
    assert runner.run_batch(session, c.id, ctx) == runner.IDLE
    with pytest.raises(InvalidTransition):
        runner.resume(session, c.id)
    assert len(_mails_to(sim, setup["api_user"])) == 200


def test_owner_cap_limits_a_marketer(app, session, workspace, setup, tagged_campaign, sim):
    from plugin.models import QuotaAllocation

    session.add(
        QuotaAllocation(workspace_id=workspace.id, scope="user", subject="marketer-1", daily_limit=150)
    )
    session.commit()
    c = tagged_campaign(300, owner_id="marketer-1")
    ctx = _ctx(app)
    runner.start(session, c.id, ctx)
    assert runner.run_campaign(session, c.id, ctx) == runner.BLOCKED
    session.expire_all()
    assert session.get(Campaign, c.id).pause_reason == "cap"
    assert len(_mails_to(sim, setup["api_user"])) == 150


def test_smtp_channel_records_each_recipient_and_resends_only_the_one_in_flight(app, session, workspace):
    sink = SmtpSink().start()
    try:
        account = kit.smtp_account(session, workspace.id, host="127.0.0.1", port=sink.port)
        snd = kit.sender(session, workspace.id)
        tpl = kit.template(session, workspace.id)
        c = kit.tagged_campaign(session, workspace.id, 30, account=account, template=tpl, sender=snd)

        class Crash(Exception):
            pass

        sent = {"n": 0}

        def crash_mid_batch(step):
            if step == "smtp:after_send":
                sent["n"] += 1
                if sent["n"] == 12:
                    raise Crash

        clock = [dt.datetime.now(dt.UTC)]
        ctx = _ctx(app, on_step=crash_mid_batch, clock=lambda: clock[0])
        runner.start(session, c.id, ctx)
        with pytest.raises(Crash):
            runner.run_batch(session, c.id, ctx)
        session.rollback()
        ctx.close()
        clock[0] += runner.BATCH_LEASE + dt.timedelta(seconds=1)
        ctx2 = _ctx(app, clock=lambda: clock[0])
        assert runner.run_campaign(session, c.id, ctx2) == runner.DONE
        ctx2.close()
        messages = sink.messages()
        received = Counter(m.envelope_to[0] for m in messages)
        assert len({m.message_id for m in messages}) == 30  # a resend keeps its Message-ID
        assert len(received) == 30
        duplicates = [r for r, n in received.items() if n > 1]
        assert len(duplicates) <= 1  # only the mail in flight at the crash
        flagged = set(
            session.scalars(
                select(CampaignRecipient.email).where(
                    CampaignRecipient.campaign_id == c.id, CampaignRecipient.possible_duplicate
                )
            )
        )
        assert set(duplicates) <= flagged
        assert len(flagged) == 1
        session.expire_all()
        assert session.get(Campaign, c.id).sent == 30
    finally:
        sink.stop()


def test_smtp_records_store_the_send_time_exactly_and_a_failed_record_stops_the_batch(
    app, session, workspace
):
    """The per-mail record (a pipelined prepared statement on PostgreSQL, an UPDATE and commit
    on SQLite) stores what the ORM reads back to the microsecond; a record the database refuses
    raises its own error and leaves the recipient as it was."""
    from plugin.campaigns.smtp_batch import _RecordConnection

    sink = SmtpSink().start()
    try:
        account = kit.smtp_account(session, workspace.id, host="127.0.0.1", port=sink.port)
        c = kit.tagged_campaign(
            session,
            workspace.id,
            7,
            account=account,
            template=kit.template(session, workspace.id),
            sender=kit.sender(session, workspace.id),
        )
        at = dt.datetime(2026, 12, 6, 21, 15, 30, 123456, tzinfo=dt.UTC)
        ctx = _ctx(app, clock=lambda: at)
        runner.start(session, c.id, ctx)
        assert runner.run_campaign(session, c.id, ctx) == runner.DONE
        ctx.close()
        session.expire_all()
        rows = session.scalars(select(CampaignRecipient).where(CampaignRecipient.campaign_id == c.id)).all()
        assert len(rows) == 7 == len(sink.messages())
        assert {(r.status, r.sent_at, r.attempts) for r in rows} == {("accepted", at, 1)}
        assert all(r.provider_message_id for r in rows)

        first = rows[0]

        def refused_record() -> None:
            with _RecordConnection(session) as conn:
                conn.final(first.id, None, None, 2, None, at)  # status is NOT NULL
                conn.confirm()

        with pytest.raises(Exception, match=r"(?i)null"):
            refused_record()
        session.expire_all()
        assert session.get(CampaignRecipient, first.id).status == "accepted"
        with _RecordConnection(session) as conn:  # the pool hands out a usable connection again
            conn.final(first.id, "unknown", "checked", 2, "<m@x>", at)
        session.expire_all()
        assert session.get(CampaignRecipient, first.id).reason == "checked"
    finally:
        sink.stop()


def test_recipients_a_temporary_failure_sent_back_to_the_queue_are_sent_once_after_the_rest(
    app, session, workspace
):
    """The claim starts above this worker's last claim (PostgreSQL's dead index entries stay
    behind it); rows a 451 sent back to the queue lie below, and are claimed once the forward
    scan comes up short: every recipient exactly once, the greylisted ones in the last batch."""
    import threading

    from aiosmtpd.controller import Controller

    from tests.conftest import free_port

    greylisted = {"user5@example.net", "user150@example.net"}

    class Greylist:
        def __init__(self) -> None:
            self.refused: set[str] = set()
            self.delivered: list[str] = []
            self.lock = threading.Lock()

        async def handle_RCPT(self, server, session_, envelope, address, rcpt_options):
            with self.lock:
                if address in greylisted and address not in self.refused:
                    self.refused.add(address)
                    return "451 4.7.1 Greylisted, try again later"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server, session_, envelope):
            with self.lock:
                self.delivered.extend(envelope.rcpt_tos)
            return "250 Message accepted"

    handler = Greylist()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        account = kit.smtp_account(session, workspace.id, host="127.0.0.1", port=port)
        c = kit.tagged_campaign(
            session,
            workspace.id,
            250,
            account=account,
            template=kit.template(session, workspace.id),
            sender=kit.sender(session, workspace.id),
        )
        ctx = _ctx(app)
        runner.start(session, c.id, ctx)
        assert runner.run_campaign(session, c.id, ctx) == runner.DONE
        ctx.close()
    finally:
        controller.stop()
    assert handler.refused == greylisted
    assert sorted(Counter(handler.delivered).values()) == [1] * 250
    # retried in the last batch, once the forward scan came up short
    # ... after the 198 others of the first two batches
    assert all(handler.delivered.index(address) >= 198 for address in greylisted)
    session.expire_all()
    assert session.get(Campaign, c.id).sent == 250
    attempts = dict(
        session.execute(
            select(CampaignRecipient.email, CampaignRecipient.attempts).where(
                CampaignRecipient.email.in_(sorted(greylisted))
            )
        ).all()
    )
    assert attempts == dict.fromkeys(greylisted, 2)


@pytest.mark.skipif(
    os.environ.get("MARKETING_TEST_DATABASE", "sqlite") != "postgres",
    reason="planner statistics are PostgreSQL's; SQLite plans these statements by index anyway",
)
def test_a_freeze_that_grows_the_recipients_table_refreshes_its_planner_statistics(app, session, workspace):
    from sqlalchemy import text

    def known_rows() -> float:
        return session.scalar(
            text("SELECT reltuples FROM pg_class WHERE oid = to_regclass('marketing_campaign_recipients')")
        )

    assert known_rows() < 300  # never analyzed (-1) or from an earlier, smaller state
    c = kit.tagged_campaign(
        session,
        workspace.id,
        300,
        account=kit.smtp_account(session, workspace.id, host="127.0.0.1", port=25),  # never called
        template=kit.template(session, workspace.id),
        sender=kit.sender(session, workspace.id),
    )
    runner.start(session, c.id, _ctx(app))
    assert known_rows() >= 300  # ANALYZEd right after the freeze


def test_reservations_are_settled_to_what_was_accepted(app, session, workspace, setup, tagged_campaign, sim):
    c = tagged_campaign(130)
    ctx = _ctx(app)
    runner.start(session, c.id, ctx)
    runner.run_campaign(session, c.id, ctx)
    ledger = _batch_ledger(session, setup["account"].id)
    _limit, reserved, committed = quota.ledger_totals(session, ledger)
    assert (reserved, committed) == (0, 130)


def test_a_reservation_that_expired_during_the_send_is_still_counted_once(
    app, session, workspace, setup, tagged_campaign, sim
):
    """The lease sweep expired the batch's reservation (giving its amount back) while the
    provider call was under way: recording takes the general settlement (on PostgreSQL inside
    the pipelined record transaction), so what the provider accepted counts once, nothing
    stays reserved, and every recipient got one mail."""
    from sqlalchemy.orm import Session as PlainSession

    from plugin.demo.models import db

    c = tagged_campaign(120)
    ledger_id = None
    expired = []

    def expire_during_send(step):
        if step != "batch:before_send" or expired:
            return
        with PlainSession(db.engine) as other:  # another worker's sweep, in its own transaction
            expired.append(
                quota.expire_stale(other, ledger_id, dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
            )
            other.commit()

    ctx = _ctx(app, on_step=expire_during_send)
    runner.start(session, c.id, ctx)
    ledger_id = _batch_ledger(session, setup["account"].id)
    assert runner.run_campaign(session, c.id, ctx) == runner.DONE
    assert expired == [100]  # the first batch's reservation, expired under it
    _limit, reserved, committed = quota.ledger_totals(session, ledger_id)
    assert (reserved, committed) == (0, 120)
    counts = Counter(m.recipient for m in _mails_to(sim, setup["api_user"]))
    assert len(counts) == 120
    assert set(counts.values()) == {1}
    session.expire_all()
    assert session.get(Campaign, c.id).sent == 120


def test_an_unexpected_error_building_a_claimed_batch_frees_it_for_the_next_run(
    app, session, workspace, setup, tagged_campaign, sim, monkeypatch
):
    """The message is built after the claim commits: an unexpected error there leaves a claimed
    batch, whose lease is freed at once so the next run takes it over (no new claim, no wait
    for the lease), and every recipient is still sent exactly once."""
    from plugin.campaigns import rendering

    c = tagged_campaign(150)
    ctx = _ctx(app)
    runner.start(session, c.id, ctx)
    real = rendering.recipient_values
    calls = {"n": 0}

    def fail_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("host directory returned garbage")
        return real(*args, **kwargs)

    monkeypatch.setattr(rendering, "recipient_values", fail_once)
    with pytest.raises(RuntimeError, match="garbage"):
        runner.run_batch(session, c.id, ctx)
    session.rollback()
    (batch,) = session.scalars(select(SendBatch).where(SendBatch.campaign_id == c.id)).all()
    assert batch.status == "sending"
    assert batch.lease_until <= dt.datetime.now(dt.UTC), "the lease is freed, not left to run out"
    assert not _mails_to(sim, setup["api_user"])
    assert runner.run_campaign(session, c.id, _ctx(app)) == runner.DONE
    counts = Counter(m.recipient for m in _mails_to(sim, setup["api_user"]))
    assert len(counts) == 150
    assert set(counts.values()) == {1}
    batches = session.scalars(select(SendBatch).where(SendBatch.campaign_id == c.id)).all()
    assert len(batches) == 2, "the failed batch was taken over, not left behind for a new claim"


def test_tracked_links_are_stored_before_the_first_batch_goes_out(app, session, workspace, setup, sim):
    """The first batch registers the campaign's tracked links; they are committed before the
    provider call, so a worker killed right after SendCloud accepted the batch leaves links
    whose ids the delivered mails carry (a click on them resolves)."""
    from plugin.models import TrackedLink

    template = kit.template(
        session,
        workspace.id,
        html='<p>Hi {name|friend}, <a href="https://shop.example.com/sale">sale</a></p>',
    )
    c = kit.tagged_campaign(
        session, workspace.id, 20, account=setup["account"], template=template, sender=setup["sender"]
    )
    c.tracking = True
    session.commit()

    class Crash(Exception):
        pass

    def crash_after_send(step):
        if step == "batch:after_send":
            raise Crash

    ctx = _ctx(app, on_step=crash_after_send)
    runner.start(session, c.id, ctx)
    with pytest.raises(Crash):
        runner.run_batch(session, c.id, ctx)
    session.rollback()  # what a dead worker's connection amounts to
    (mail, *_) = _mails_to(sim, setup["api_user"])
    links = session.scalars(select(TrackedLink).where(TrackedLink.campaign_id == c.id)).all()
    assert [link.url for link in links] == ["https://shop.example.com/sale"]
    assert f"/c/{links[0].id}/" in mail.html, "the delivered mail carries the stored link's id"


@pytest.mark.skipif(
    os.environ.get("MARKETING_TEST_DATABASE", "sqlite") != "postgres",
    reason="batches are claimed as ranges of recipients on PostgreSQL only",
)
def test_a_range_batch_keeps_its_members_until_recorded_and_is_taken_over_by_its_range(
    app, session, workspace, setup, tagged_campaign, sim
):
    """PostgreSQL's claim does not mark a batch's members: they stay ``pending`` in their rows
    until recorded.  The one-by-one claim must never take them (a worker still holding the
    batch would send them too), only what a record sent back to the queue; a worker that dies
    after the claim leaves a batch taken over by its range, under its key."""
    c = tagged_campaign(250)

    def die(name: str) -> None:
        if name == "batch:ranged":
            raise RuntimeError("worker died")

    dying = _ctx(app, on_step=die, batch_lease=dt.timedelta(seconds=0))
    runner.start(session, c.id, dying)
    with pytest.raises(RuntimeError, match="worker died"):
        runner.run_batch(session, c.id, dying)
    session.rollback()
    batch = session.execute(select(SendBatch).where(SendBatch.campaign_id == c.id)).scalar_one()
    assert (batch.status, batch.attempts, batch.range_after is not None) == ("sending", 1, True)
    members = session.scalars(
        select(CampaignRecipient.id)
        .where(
            CampaignRecipient.campaign_id == c.id,
            CampaignRecipient.id > batch.range_after,
            CampaignRecipient.id <= batch.range_upto,
        )
        .order_by(CampaignRecipient.id)
    ).all()
    assert len(members) == 100
    assert kit.recipient_statuses(session, c.id) == {"sending": 100, "pending": 150}

    row = session.execute(runner._BATCH_FACTS, {"cid": c.id}).one()
    facts = runner._CampaignFacts.of(c.id, row)
    look = _ctx(app)
    # where ranges are claimed, the one-by-one claim finds nothing: the 150 above the cursor are
    # the next ranges', the 100 below it the open batch's
    assert runner._next_pending(session, facts, 100, look, True, ranged=True) is None
    session.rollback()
    # elsewhere (an SMTP account, several contents) it starts above the open batch's range
    rows, _, _ = runner._next_pending(session, facts, 100, look, True, ranged=False)
    assert min(r.id for r in rows) > batch.range_upto
    session.rollback()
    # a recipient a record sent back to the queue (pending, naming its last batch) is claimable
    session.execute(
        CampaignRecipient.__table__.update()
        .where(CampaignRecipient.id == members[0])
        .values(batch_id=batch.id)
    )
    rows, _, _ = runner._next_pending(session, facts, 100, look, True, ranged=True)
    assert [r.id for r in rows] == [members[0]]
    session.rollback()

    # the provider's delivery report may come before the answer is recorded: it is applied
    from plugin import events

    emails = dict(
        session.execute(
            select(CampaignRecipient.id, CampaignRecipient.email).where(CampaignRecipient.id.in_(members[:2]))
        ).all()
    )
    assert events.record(
        session,
        workspace_id=workspace.id,
        type="deliver",
        dedupe_key="early-report",
        occurred_at=dt.datetime.now(dt.UTC),
        recipient_id=members[1],
        data={"recipient": emails[members[1]]},
    )
    # and an address suppressed after the claim, whose worker died before re-checking it, is
    # skipped by the take-over, not mailed
    suppression.add(session, workspace.id, emails[members[0]], "unsubscribed", source="test")
    session.commit()

    ctx = _ctx(app)
    assert runner.run_campaign(session, c.id, ctx) == runner.DONE
    ctx.close()
    counts = Counter(m.recipient for m in _mails_to(sim, setup["api_user"]))
    assert len(counts) == 248  # neither the suppressed one nor the one already delivered
    assert set(counts.values()) == {1}
    assert emails[members[0]] not in counts
    session.expire_all()
    taken = session.get(SendBatch, batch.id)
    assert (taken.status, taken.attempts, taken.range_upto, taken.size) == ("sent", 2, None, 98)
    assert kit.recipient_statuses(session, c.id) == {"accepted": 248, "delivered": 1, "skipped": 1}
    assert (session.get(Campaign, c.id).sent, session.get(Campaign, c.id).skipped) == (248, 1)


@pytest.mark.skipif(
    os.environ.get("MARKETING_TEST_DATABASE", "sqlite") != "postgres",
    reason="batches are claimed as ranges of recipients on PostgreSQL only",
)
def test_the_gate_refusing_while_another_worker_holds_the_last_range_does_not_pause(
    app, session, workspace, setup, tagged_campaign, sim
):
    """The last batch's members are pending in their rows while its worker sends it: a second
    worker whose gate is refused (the batch holds the day's last quota) has nothing left to
    claim and must not pause the campaign for quota; it ends when that batch is recorded."""
    c = tagged_campaign(100)
    held = {}

    def hold(name: str) -> None:
        if name == "batch:ranged":
            held["yes"] = True
            raise RuntimeError("still sending")

    first = _ctx(app, on_step=hold)
    runner.start(session, c.id, first)
    with pytest.raises(RuntimeError):
        runner.run_batch(session, c.id, first)
    session.rollback()
    assert held
    # the quota is used up by the batch in flight: the second worker's gate refuses
    ledger = _batch_ledger(session, setup["account"].id)
    session.execute(
        QuotaLedger.__table__.update().where(QuotaLedger.id == ledger).values(limit=QuotaLedger.reserved)
    )
    session.commit()
    second = _ctx(app)
    assert runner.run_batch(session, c.id, second) == runner.IDLE
    session.expire_all()
    campaign = session.get(Campaign, c.id)
    assert (campaign.status, campaign.pause_reason) == ("running", None)
