"""10,000 generated SendCloud webhook posts through the Flask test client, and a real campaign whose
events the simulator posts to the app served over HTTP.

The posts mix valid events — each delivered one to four times, all shuffled, so ``deliver`` often
comes after ``open`` and ``request`` after the events it announces — with forged signatures,
posts signed with another key, stale and future timestamps, malformed fields, posts for another
workspace, and replays of observed tokens with swapped bodies.  Afterwards the database must hold
exactly what the valid events mean, computed by a small order-free model: nothing forged was
accepted, nothing valid applied twice.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
import secrets
import string
import time
from collections import Counter
from decimal import Decimal

import campaign_kit as kit
import requests
from sqlalchemy import func, insert, select, update
from werkzeug.datastructures import MultiDict

from plugin import counters
from plugin.campaigns import runner
from plugin.channels import provider_factory
from plugin.extension import get_state
from plugin.models import Campaign, CampaignRecipient, Event, ProviderAccount, Suppression
from plugin.providers.sendcloud import sign_webhook
from plugin.sandbox.sendcloud import SendCloudSimulator, SimulatorServer
from plugin.webhooks import webhook_url, workspace_token

APP_KEY = "fuzz-app-key-0000000000000001"
OTHER_KEY = "fuzz-app-key-0000000000000002"
ALNUM = string.ascii_letters + string.digits


def _account(session, workspace_id: int, key: str) -> ProviderAccount:
    account = ProviderAccount(
        workspace_id=workspace_id,
        kind="sendcloud",
        name="fuzz",
        api_user="fuzz_batch",
        webhook_app_key_encrypted=get_state().secrets.encrypt(key),
    )
    session.add(account)
    session.commit()
    return account


def _recipients(session, workspace_id: int, campaign: Campaign, n: int, *, with_ids: bool, prefix: str):
    sent_at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    rows = [
        {
            "workspace_id": workspace_id,
            "campaign_id": campaign.id,
            "email": f"{prefix}{i}@d{i % 7}.example.org",
            "template_id": 11 + i % 2,
            "sender_id": 21,
            "status": "accepted",
            "attempts": 1,
            "sent_at": sent_at,
            "provider_message_id": _email_id(prefix, i) if with_ids else None,
        }
        for i in range(n)
    ]
    session.execute(insert(CampaignRecipient), rows)
    session.commit()
    return list(
        session.scalars(
            select(CampaignRecipient)
            .where(CampaignRecipient.campaign_id == campaign.id)
            .order_by(CampaignRecipient.id)
        )
    )


def _email_id(prefix: str, i: int) -> str:
    return f"1700000000000_{prefix}_{i // 100}.sc-inbound{i % 100}${prefix}{i}@d{i % 7}.example.org"


def _campaign(session, workspace_id: int) -> Campaign:
    c = Campaign(workspace_id=workspace_id, name="fuzz", status="running", tracking=False)
    session.add(c)
    session.commit()
    return c


class Factory:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def token(self) -> str:
        return "".join(self.rng.choice(ALNUM) for _ in range(50))

    def post(
        self, event: str, fields: dict, *, key: str = APP_KEY, age_s: float = 0.0
    ) -> list[tuple[str, str]]:
        timestamp = str(int((time.time() - age_s) * 1000))
        token = self.token()
        body = [
            ("event", event),
            ("message", event),
            ("apiUser", "fuzz_batch"),
            ("category", "fuzz_batch"),
            ("timestamp", timestamp),
            ("token", token),
            ("signature", sign_webhook(key, timestamp, token)),
        ]
        for name, value in fields.items():
            if isinstance(value, list):
                body.extend((name, v) for v in value)
            else:
                body.append((name, value))
        return body


def _headers(campaign_id: int) -> str:
    return json.dumps({"SC-Custom-campaign": str(campaign_id), "SC-Custom-batch": "1"})


def _plan(rng: random.Random, recipients, campaign_id: int, factory: Factory):
    """Valid posts and the model of what they mean."""
    posts: list[list[tuple[str, str]]] = []
    model = {
        "status": {},
        "metrics": Counter(),
        "suppressed": {},
        "flags": {},
    }
    for index, r in enumerate(recipients):
        mid = r.provider_message_id or f"1700000000000_dup_0.sc-inbound{index}${r.email}"
        base = {"emailId": mid, "recipient": r.email}
        if rng.random() < 0.8:
            base["userHeaders"] = _headers(campaign_id)
        kind = rng.choices(["engaged", "quiet", "invalid", "soft", "spam", "unsub"], [5, 2, 1, 1, 1, 1])[0]
        events = []
        if kind == "invalid":
            events.append(("invalid", {**base, "substat": "406", "substatdesc": "no such user"}))
        elif kind == "soft":
            events.append(("deliver", base) if rng.random() < 0.5 else None)
            events.append(("soft_bounce", {**base, "substat": "503", "substatdesc": "mailbox busy"}))
        else:
            events.append(("deliver", base))
            opens = rng.randint(0, 3) if kind in ("engaged", "unsub", "spam") else 0
            clicks = rng.randint(0, 2) if kind == "engaged" else 0
            events += [("open", base)] * opens + [("click", {**base, "url": "https://x.example/p"})] * clicks
            if kind == "spam":
                events.append(("report_spam", base))
            if kind == "unsub":
                events.append(("unsubscribe", base))
        events = [e for e in events if e is not None]
        for event, fields in events:
            posts.append(factory.post(event, fields))
        types = Counter(e for e, _ in events)
        status = {"invalid": "invalid", "soft": "bounced"}.get(kind, "delivered")
        model["status"][r.id] = status
        m = model["metrics"]
        m[{"delivered": "delivered", "invalid": "invalid", "bounced": "bounced"}[status]] += 1
        m["soft_bounced"] += types["soft_bounce"]
        m["opened"] += types["open"]
        m["clicked"] += types["click"]
        m["unique_opened"] += 1 if types["open"] or types["click"] else 0
        m["unique_clicked"] += 1 if types["click"] else 0
        m["unsubscribed"] += types["unsubscribe"]
        m["complained"] += types["report_spam"]
        model["flags"][r.id] = (bool(types["open"] or types["click"]), bool(types["click"]))
        reason = {"invalid": "invalid", "spam": "complaint", "unsub": "unsubscribed"}.get(kind)
        if reason:
            model["suppressed"][r.email] = reason
    return posts, model


def _request_posts(factory: Factory, recipients, campaign_id: int) -> list[list[tuple[str, str]]]:
    """``request`` events naming the email ids of a batch accepted as a duplicate request."""
    posts = []
    for start in range(0, len(recipients), 25):
        part = recipients[start : start + 25]
        ids = [f"1700000000000_dup_0.sc-inbound{start + i}${r.email}" for i, r in enumerate(part)]
        posts.append(
            factory.post(
                "request",
                {
                    "messageId": "1700000000000_dup_0.sc-inbound",
                    "recipientArray": [r.email for r in part],
                    "emailIds": ids,
                    "recipientSize": str(len(part)),
                    "userHeaders": _headers(campaign_id),
                },
            )
        )
    return posts


def _bad(rng: random.Random, factory: Factory, valid: list, n: int):
    """Posts that must all be refused (403/404), never stored."""
    out = []
    kinds = [
        "forged",
        "wrong_key",
        "stale",
        "future",
        "short_token",
        "no_signature",
        "bad_hex",
        "upper_forged",
    ]
    for _ in range(n):
        kind = rng.choice(kinds)
        template = dict(rng.choice(valid))
        fields = {k: v for k, v in template.items() if k not in ("timestamp", "token", "signature")}
        event = fields.pop("event")
        if kind == "wrong_key":
            body = factory.post(event, fields, key=OTHER_KEY)
        elif kind == "stale":
            body = factory.post(event, fields, age_s=46 * 60 + rng.random() * 10_000)
        elif kind == "future":
            body = factory.post(
                event, fields, age_s=-(60 * 60 + rng.random() * 10_000)
            )  # stays > 45 min ahead
        else:
            body = factory.post(event, fields)
            d = dict(body)
            if kind == "forged":
                d["signature"] = secrets.token_hex(32)
            elif kind == "upper_forged":
                d["signature"] = sign_webhook(APP_KEY, d["timestamp"], d["token"][::-1]).upper()
            elif kind == "short_token":
                d["token"] = d["token"][:49]
                d["signature"] = sign_webhook(APP_KEY, d["timestamp"], d["token"])
            elif kind == "no_signature":
                del d["signature"]
            elif kind == "bad_hex":
                d["signature"] = "z" * 64
            body = list(d.items())
        out.append((kind, body))
    return out


def _swapped(rng: random.Random, valid: list, recipients, n: int):
    """Replays of observed tokens (timestamp, token and signature kept) with another body."""
    out = []
    for _ in range(n):
        seen = dict(rng.choice(valid))
        victim = rng.choice(recipients)
        body = dict(seen)
        body["event"] = rng.choice(["unsubscribe", "report_spam", "invalid", "click", "open", "deliver"])
        body["recipient"] = victim.email
        body["emailId"] = victim.provider_message_id or "x$" + victim.email
        body["substat"] = "406"
        out.append((seen["token"], list(body.items())))
    return out


def _state(session, campaign_id: int):
    session.expire_all()
    rows = session.execute(
        select(
            CampaignRecipient.id,
            CampaignRecipient.status,
            CampaignRecipient.opened_at,
            CampaignRecipient.clicked_at,
            CampaignRecipient.provider_message_id,
        ).where(CampaignRecipient.campaign_id == campaign_id)
    ).all()
    return {r.id: r for r in rows}


def test_ten_thousand_webhook_posts_none_forged_accepted_each_valid_applied_once(
    app, session, workspace, other_workspace
):
    rng = random.Random(20260601)
    factory = Factory(rng)
    _account(session, workspace.id, APP_KEY)
    _account(session, other_workspace.id, OTHER_KEY)
    campaign = _campaign(session, workspace.id)
    known = _recipients(session, workspace.id, campaign, 900, with_ids=True, prefix="k")
    dup = _recipients(
        session, workspace.id, _campaign(session, workspace.id), 100, with_ids=False, prefix="q"
    )
    dup_campaign_id = dup[0].campaign_id

    posts_known, model_known = _plan(rng, known, campaign.id, factory)
    posts_dup, model_dup = _plan(rng, dup, dup_campaign_id, factory)
    # events of the duplicate-request batch can only be mapped through the header until the
    # request event arrives: give all of them the header
    posts_dup = [
        [(k, v) for k, v in p if k != "userHeaders"] + [("userHeaders", _headers(dup_campaign_id))]
        for p in posts_dup
    ]
    requests_ = _request_posts(factory, dup, dup_campaign_id)
    valid = posts_known + posts_dup + requests_

    deliveries = [p for p in valid for _ in range(rng.choice([1, 1, 2, 3, 4]))]
    rng.shuffle(deliveries)
    swapped = _swapped(rng, [dict(p) for p in valid], known + dup, 600)
    bad = _bad(rng, factory, [dict(p) for p in posts_known], 10_000 - len(deliveries) - len(swapped) - 300)
    cross = [dict(p) for p in rng.sample(valid, 300)]  # valid for us, posted to the other workspace
    assert len(deliveries) + len(swapped) + len(bad) + len(cross) == 10_000

    # swapped bodies arrive after their genuine token was seen (that is how they were observed):
    # every post gets a sort key; a swapped one a key after its genuine token's first delivery
    first_at: dict[str, int] = {}
    for i, p in enumerate(deliveries):
        first_at.setdefault(dict(p)["token"], i)
    end = len(deliveries)
    keyed: list[tuple[float, str, list]] = [(float(i), "valid", p) for i, p in enumerate(deliveries)]
    keyed += [(rng.uniform(first_at[token] + 0.5, end), "swapped", body) for token, body in swapped]
    keyed += [(rng.uniform(0, end), f"bad:{kind}", body) for kind, body in bad]
    keyed += [(rng.uniform(0, end), "cross", list(body.items())) for body in cross]
    keyed.sort(key=lambda item: item[0])
    schedule = [(kind, body) for _, kind, body in keyed]

    client = app.test_client()
    settings = get_state().settings
    ours = f"/m/webhooks/sendcloud/{workspace_token(settings, workspace.id)}"
    theirs = f"/m/webhooks/sendcloud/{workspace_token(settings, other_workspace.id)}"
    outcomes: Counter = Counter()
    stored_tokens: set[str] = set()
    for kind, body in schedule:
        answer = client.post(theirs if kind == "cross" else ours, data=MultiDict(body))
        status = answer.status_code
        verdict = (answer.get_json() or {}).get("status") if status == 200 else None
        outcomes[(kind, status, verdict)] += 1
        if kind == "valid":
            assert status == 200
            token = dict(body)["token"]
            assert verdict == ("duplicate" if token in stored_tokens else "stored")
            stored_tokens.add(token)
        elif kind == "swapped":
            assert (status, verdict) == (200, "duplicate")
        else:
            assert status == 403, (kind, body, answer.get_data(as_text=True))

    assert len(stored_tokens) == len(valid)
    assert session.scalar(
        select(func.count()).select_from(Event).where(Event.workspace_id == workspace.id)
    ) == len(valid)
    assert (
        session.scalar(
            select(func.count()).select_from(Event).where(Event.workspace_id == other_workspace.id)
        )
        == 0
    )

    for c_id, model in ((campaign.id, model_known), (dup_campaign_id, model_dup)):
        state = _state(session, c_id)
        assert {rid: row.status for rid, row in state.items()} == model["status"]
        flags = {rid: (row.opened_at is not None, row.clicked_at is not None) for rid, row in state.items()}
        assert flags == model["flags"]
        totals = counters.totals(session, c_id)
        for metric in (
            "delivered",
            "invalid",
            "bounced",
            "soft_bounced",
            "opened",
            "unique_opened",
            "clicked",
            "unique_clicked",
            "unsubscribed",
            "complained",
        ):
            assert totals[metric] == model["metrics"][metric], (c_id, metric)
    assert all(row.provider_message_id for row in _state(session, dup_campaign_id).values())

    suppressed = dict(
        session.execute(
            select(Suppression.email, Suppression.reason).where(Suppression.workspace_id == workspace.id)
        ).all()
    )
    assert suppressed == {**model_known["suppressed"], **model_dup["suppressed"]}
    assert outcomes[("valid", 200, "duplicate")] == len(deliveries) - len(valid)


# --------------------------------------------------------------------------- end to end over HTTP


def test_simulator_posts_a_campaigns_events_to_the_live_app(app, session, workspace, live_server):
    sim = SendCloudSimulator(webhook_app_key=APP_KEY, deliver_delay=0.05, webhook_time_scale=0.001)
    sim.add_account("e2e_user", kit.API_KEY, quota=1000, balance=Decimal("100"))
    with SimulatorServer(sim) as server:
        state = app.extensions["marketing"]
        settings = dataclasses.replace(
            state.settings, sendcloud_api_base=server.url, public_base_url=live_server
        )
        account = kit.sendcloud_account(session, workspace.id, api_user="e2e_user")
        account.webhook_app_key_encrypted = state.secrets.encrypt(APP_KEY)
        session.commit()
        sim.suppress("e2e_user", "user3@example.net", "bounce")
        kit.contacts(session, workspace.id, 8, tags=["all"])
        c = kit.campaign(
            session,
            workspace.id,
            account=account,
            template=kit.template(session, workspace.id),
            sender=kit.sender(session, workspace.id),
            include_tags=[kit.tag_id(session, workspace.id, "all")],
        )
        sim.set_webhook_target(webhook_url(settings, workspace.id))
        ctx = runner.context_from_app(
            app,
            settings=settings,
            provider_factory=provider_factory(app.extensions, secrets=state.secrets, settings=settings),
            backoff_base=0.01,
        )
        runner.start(session, c.id, ctx)
        assert runner.run_campaign(session, c.id, ctx) == runner.DONE
        ctx.close()
        mails = {m.recipient: m for m in sim.mails() if m.api_user == "e2e_user"}
        assert len(mails) == 8
        _wait(session, c.id, lambda s: s.get("delivered", 0) == 7 and s.get("invalid", 0) == 1)
        session.execute(  # opens seconds after the send count as machine opens: read an hour later
            update(CampaignRecipient)
            .where(CampaignRecipient.campaign_id == c.id)
            .values(sent_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
        )
        session.commit()
        sim.emit_event(mails["user1@example.net"].email_id, "open")
        sim.emit_event(mails["user2@example.net"].email_id, "unsubscribe")
        sim.emit_event(mails["user4@example.net"].email_id, "report_spam")
        _wait_for(lambda: _engaged(session, c.id), session)
        log = sim.webhook_log()
    assert all(d.delivered for d in log)
    for delivery in log[:5]:  # SendCloud retries: answered 200, nothing changes
        again = requests.post(delivery.url, data=list(delivery.fields), timeout=5)
        assert again.json()["status"] == "duplicate"
    totals = counters.totals(session, c.id)
    assert (totals["delivered"], totals["invalid"], totals["opened"], totals["unique_opened"]) == (7, 1, 1, 1)
    suppressed = dict(session.execute(select(Suppression.email, Suppression.reason)).all())
    assert suppressed == {
        "user3@example.net": "hard_bounce",  # the simulator's substat 401: on a blacklist
        "user2@example.net": "unsubscribed",
        "user4@example.net": "complaint",
    }
    assert session.scalar(select(func.count()).select_from(Event)) == len(log)


def _engaged(session, campaign_id) -> bool:
    totals = counters.totals(session, campaign_id)
    return (totals["complained"], totals["unsubscribed"], totals["opened"]) == (1, 1, 1)


def _wait(session, campaign_id, ready, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        session.expire_all()
        statuses = kit.recipient_statuses(session, campaign_id)
        if ready(statuses):
            return statuses
        time.sleep(0.05)
    raise AssertionError(kit.recipient_statuses(session, campaign_id))


def _wait_for(check, session, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        session.expire_all()
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")
