"""100,000 random and mutated tracking and unsubscribe tokens: none is accepted, and no request ever
redirects to a URL that is not stored for the token's campaign.

The bulk goes through the token readers (what every endpoint calls first); a sample of every kind
goes through HTTP against the open, click and unsubscribe endpoints, and each valid click token is
tried against every link id there is.
"""

from __future__ import annotations

import random
import string

import pytest
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import func, insert, select

from plugin import tracking
from plugin.errors import InvalidInput
from plugin.extension import get_state
from plugin.models import Campaign, CampaignRecipient, Event, Suppression, TrackedLink

URL_ALPHABET = string.ascii_letters + string.digits + "-_."
READERS = {"open": tracking.read_open, "click": tracking.read_click, "unsubscribe": tracking.read_unsubscribe}


@pytest.fixture
def app_config(app_config):
    for group in ("TRACKING", "UNSUBSCRIBE"):
        app_config[f"MARKETING_RATE_LIMIT_{group}"] = "0"
    return app_config


def _world(session, workspace_id: int, other_workspace_id: int):
    """Two campaigns (one in another workspace), recipients and their stored links."""
    out = {}
    for name, ws in (("mine", workspace_id), ("theirs", other_workspace_id)):
        c = Campaign(workspace_id=ws, name=name, status="running", tracking=True)
        session.add(c)
        session.flush()
        session.execute(
            insert(CampaignRecipient),
            [
                {
                    "workspace_id": ws,
                    "campaign_id": c.id,
                    "email": f"{name}{i}@example.org",
                    "status": "delivered",
                }
                for i in range(5)
            ],
        )
        for i in range(4):
            url = f"https://{name}.example.org/page/{i}"
            session.add(
                TrackedLink(workspace_id=ws, campaign_id=c.id, url=url, url_hash=tracking.url_hash(url))
            )
        session.flush()
        out[name] = c.id
    session.commit()
    return out


def _mutations(rng: random.Random, token: str):
    """Edits of a valid token: substitutions, insertions, deletions, swaps, truncation, case."""
    chars = list(token)
    kind = rng.randrange(7)
    if kind == 0:
        i = rng.randrange(len(chars))
        chars[i] = rng.choice([c for c in URL_ALPHABET if c != chars[i]])
    elif kind == 1:
        chars.insert(rng.randrange(len(chars) + 1), rng.choice(URL_ALPHABET))
    elif kind == 2:
        del chars[rng.randrange(len(chars))]
    elif kind == 3:
        i, j = sorted(rng.sample(range(len(chars)), 2))
        if chars[i] == chars[j]:
            chars[i] = "A" if chars[i] != "A" else "B"
        chars[i], chars[j] = chars[j], chars[i]
    elif kind == 4:
        chars = chars[: rng.randrange(len(chars))]
    elif kind == 5:
        chars = list(token.swapcase()) if token.swapcase() != token else [*chars, "x"]
    else:  # keep the payload and timestamp, graft a signature of another token
        head = token.rsplit(".", 1)[0]
        other = tracking.make_token("another-secret", "open", {"w": 1, "r": rng.randrange(10**6)})
        chars = list(head + "." + other.rsplit(".", 1)[1])
    return "".join(chars)


def _forged(rng: random.Random, secret: str) -> str:
    """Well-formed tokens that must still fail: wrong secret, wrong salt, wrong payload types."""
    kind = rng.randrange(4)
    if kind == 0:
        return tracking.make_token(
            "not-" + secret, rng.choice(["open", "click", "unsubscribe"]), {"w": 1, "r": 1}
        )
    if kind == 1:
        return URLSafeTimedSerializer(secret, salt=rng.choice(["", "marketing-unsubscribe", "x"])).dumps(
            {"w": 1, "r": 1}
        )
    if kind == 2:
        payload = rng.choice(
            [{"w": "1", "r": 1}, {"w": 1}, {"w": True, "r": 1}, [1, 1], "1", {"w": 1.0, "r": 2}]
        )
        return "BAD" + tracking.make_token(
            secret, "open", payload
        )  # also the payload itself is refused below
    return "".join(rng.choice(URL_ALPHABET) for _ in range(rng.randrange(1, 120)))


def test_a_hundred_thousand_random_and_mutated_tokens_are_all_refused(
    app, session, workspace, other_workspace
):
    settings = get_state().settings
    ids = _world(session, workspace.id, other_workspace.id)
    recipients = list(session.scalars(select(CampaignRecipient)))
    rng = random.Random(8058)
    valid = {
        (purpose, r.id): tracking.make_token(settings.token_secret, purpose, {"w": r.workspace_id, "r": r.id})
        for purpose in READERS
        for r in recipients
    }
    every_valid = set(valid.values())
    refused = 0
    tried = 0
    samples: list[str] = []
    for n in range(100_000):
        if n % 5 == 4:
            token = _forged(rng, settings.token_secret)
        else:
            token = _mutations(rng, rng.choice(list(every_valid)))
        if token in every_valid:
            continue  # an edit that happened to give back a real token
        tried += 1
        purpose = rng.choice(list(READERS))
        try:
            READERS[purpose](settings, token)
        except InvalidInput:
            refused += 1
        else:
            raise AssertionError(f"accepted an edited token for {purpose}: {token}")
        if n % 50 == 0:
            samples.append(token)
    assert tried > 99_000
    assert refused == tried

    # wrong payload shapes under a valid signature are refused too
    for payload in ({"w": "1", "r": 1}, {"w": 1}, {"w": True, "r": 1}, {"w": 1.0, "r": 2}):
        with pytest.raises(InvalidInput):
            tracking.read_open(settings, tracking.make_token(settings.token_secret, "open", payload))
    for payload in ([1, 2], "text", 7):
        with pytest.raises(InvalidInput):
            tracking.read_unsubscribe(
                settings, tracking.make_token(settings.token_secret, "unsubscribe", payload)
            )

    # a token of one purpose never works for another
    for (purpose, _rid), token in valid.items():
        for other, reader in READERS.items():
            if other != purpose:
                with pytest.raises(InvalidInput):
                    reader(settings, token)

    # over HTTP: a sample of every kind, on every endpoint; nothing recorded, no redirect at all
    client = app.test_client()
    links = list(session.scalars(select(TrackedLink.id)))
    for token in [*samples, valid["open", recipients[0].id]]:
        for method, path in (
            ("GET", f"/m/o/{token}.gif"),
            ("GET", f"/m/c/{rng.choice(links)}/{token}"),
            ("GET", f"/m/u/{token}"),
            ("POST", f"/m/u/{token}"),
        ):
            if path.startswith("/m/o/") and token in every_valid:
                continue
            answer = client.open(path, method=method, data={"List-Unsubscribe": "One-Click"})
            assert answer.status_code == 404, (method, path)
            assert "Location" not in answer.headers
    assert session.scalar(select(func.count()).select_from(Event)) == 0
    assert session.scalar(select(func.count()).select_from(Suppression)) == 0
    assert ids["mine"] != ids["theirs"]


def test_valid_click_tokens_only_ever_redirect_to_their_own_campaigns_links(
    app, session, workspace, other_workspace
):
    settings = get_state().settings
    ids = _world(session, workspace.id, other_workspace.id)
    stored = {link.id: (link.campaign_id, link.url) for link in session.scalars(select(TrackedLink)).all()}
    client = app.test_client()
    recipients = list(session.scalars(select(CampaignRecipient)))
    for r in recipients:
        token = tracking.click_token(settings, r.workspace_id, r.id)
        for link_id in range(0, max(stored) + 20):
            answer = client.get(f"/m/c/{link_id}/{token}", headers={"User-Agent": "Mozilla/5.0"})
            if link_id in stored and stored[link_id][0] == r.campaign_id:
                assert answer.status_code == 302
                assert answer.headers["Location"] == stored[link_id][1]
            else:
                assert answer.status_code == 404
                assert "Location" not in answer.headers
        # a token naming a recipient of another workspace under our workspace id does not exist
        forged = tracking.make_token(settings.token_secret, "click", {"w": workspace.id, "r": r.id})
        if r.workspace_id != workspace.id:
            some_link = next(i for i, (c, _) in stored.items() if c == r.campaign_id)
            assert client.get(f"/m/c/{some_link}/{forged}").status_code == 404
    assert set(ids.values()) == {c for c, _ in stored.values()}


def test_links_keep_working_after_a_year(app, session, workspace, other_workspace):
    """No ``max_age``: a token minted 400 days ago still opens its page."""
    settings = get_state().settings
    _world(session, workspace.id, other_workspace.id)
    r = session.scalar(select(CampaignRecipient).where(CampaignRecipient.workspace_id == workspace.id))

    class LongAgo(URLSafeTimedSerializer):
        def get_timestamp(self) -> int:
            return super().get_timestamp() - 400 * 86400

    old = LongAgo(settings.token_secret, salt=tracking.SALT_PREFIX + "unsubscribe").dumps(
        {"w": workspace.id, "r": r.id}
    )
    assert tracking.read_unsubscribe(settings, old) == (workspace.id, r.id)
    page = app.test_client().get(f"/m/u/{old}")
    assert page.status_code == 200
    assert r.email.encode() in page.data
