"""Workspace (tenant) isolation: a user or token of one organization can neither see nor change
another organization's records, through any route the plugin serves under ``/marketing``.

The routes are read from ``app.url_map``, so a route added later is attacked automatically: its
path parameters get the ids of the victim workspace's records (``ID_SOURCES``), and its JSON
body comes from ``PAYLOADS``; a write route whose body is not listed there makes the test fail
with a message saying what to add, rather than pass without testing anything.  Writes without
a record in their path (create, settings forms) are sent with an empty body unless listed; the
victim's rows are compared before and after all of it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from plugin import contacts as service
from plugin.access import issue_token
from plugin.models import (
    ApiToken,
    Base,
    Campaign,
    Contact,
    ContactTag,
    ProviderAccount,
    QuotaAllocation,
    SavedView,
    Sender,
    Tag,
    Template,
    TriggerMail,
)

PREFIX = "/marketing"
API = "/marketing/api/v1"
SKIPPED_ENDPOINTS = {"marketing.static", "marketing-api-docs.openapi_json"}

#: Which table a path parameter points into (by name); the attack uses the victim's row.
ID_SOURCES = {
    "contact_id": Contact,
    "tag_id": Tag,
    "view_id": SavedView,
    "token_id": ApiToken,
    "template_id": Template,
    "campaign_id": Campaign,
    "account_id": ProviderAccount,
    "cap_id": QuotaAllocation,
    "mail_id": TriggerMail,
    "sender_id": Sender,
}

RULES = {"match": "all", "rules": [{"field": "email", "op": "contains", "value": "@"}]}
#: A valid body per (method, endpoint), so a write is refused for its target, not its input.
PAYLOADS: dict[tuple[str, str], dict] = {
    ("POST", "marketing_api_contacts.Contacts"): {"email": "intruder@example.com"},
    ("PATCH", "marketing_api_contacts.ContactItem"): {"name": "Hijacked", "tags": ["Hijacked"]},
    ("POST", "marketing_api_contacts.BulkTags"): {"contact_ids": "<victim contacts>", "add": ["Hijacked"]},
    ("POST", "marketing_api_contacts.BulkDelete"): {"contact_ids": "<victim contacts>"},
    ("POST", "marketing_api_tags.Tags"): {"name": "Intruder tag"},
    ("PATCH", "marketing_api_tags.TagItem"): {"name": "Hijacked"},
    ("POST", "marketing_api_views.Views"): {"name": "Intruder view", "rules": RULES},
    ("PATCH", "marketing_api_views.ViewItem"): {"name": "Hijacked", "rules": RULES},
    ("POST", "marketing_api_views.PreviewCount"): {"rules": RULES},
    # pages (form posts)
    ("POST", "marketing.tokens"): {"name": "intruder"},
    ("POST", "marketing.preferences"): {"locale": "en"},
    ("POST", "marketing.revoke_token"): {},
    ("POST", "marketing_quota.edit_cap"): {"scope": "user", "subject": "hijacked", "daily_limit": "1"},
}


@dataclass
class Org:
    key: str
    workspace_id: int
    user: str
    contacts: list[int]
    tag: int
    view: int
    token_row: int
    marker: str


def _seed(session, workspace, user, marker: str) -> Org:
    contacts = [
        service.create_contact(
            session,
            workspace.id,
            {"email": f"{marker}-{n}@example.com", "name": f"{marker} person {n}", "tags": [f"{marker} tag"]},
        )
        for n in range(3)
    ]
    tag = session.scalar(select(Tag).where(Tag.workspace_id == workspace.id, Tag.name == f"{marker} tag"))
    view = service.create_view(
        session, workspace.id, name=f"{marker} view", rules=RULES, user_id=str(user.id)
    )
    issue_token(session, workspace_id=workspace.id, user_id=str(user.id), name=f"{marker} token")
    account = ProviderAccount(
        workspace_id=workspace.id,
        kind="smtp",
        name=f"{marker} mailbox",
        smtp_host="127.0.0.1",
        smtp_port=2525,
        smtp_security="none",
        from_address=f"{marker}@example.com",
        daily_limit=10,
    )
    template = Template(
        workspace_id=workspace.id, name=f"{marker} template", subject=f"{marker}", html="<p>x</p>"
    )
    sender = Sender(
        workspace_id=workspace.id,
        from_address=f"news@{marker}.example.com",
        from_name=f"{marker} news",
        company_name=f"{marker} Ltd.",
        postal_address="1 Example Road",
    )
    session.add_all([account, template, sender])
    session.flush()
    session.add_all(
        [
            Campaign(
                workspace_id=workspace.id,
                name=f"{marker} campaign",
                status="draft",
                account_id=account.id,
                audience={"include_tags": [tag.id]},
                template_ids=[template.id],
            ),
            QuotaAllocation(workspace_id=workspace.id, scope="user", subject=f"{marker}-user", daily_limit=5),
            TriggerMail(
                workspace_id=workspace.id,
                idempotency_key=f"{marker}-key",
                to_email=f"{marker}@example.com",
                subject=f"{marker}",
                status="sent",
                account_id=account.id,
            ),
        ]
    )
    session.flush()
    token_row = session.scalar(select(ApiToken.id).where(ApiToken.workspace_id == workspace.id))
    session.commit()
    return Org(
        key=workspace.key,
        workspace_id=workspace.id,
        user=user.username,
        contacts=[c.id for c in contacts],
        tag=tag.id,
        view=view.id,
        token_row=token_row,
        marker=marker,
    )


@pytest.fixture
def orgs(session, users, workspace, other_workspace) -> dict[str, Org]:
    return {
        "default": _seed(session, workspace, users["admin"], "homeorg"),
        "acme": _seed(session, other_workspace, users["other"], "acmeorg"),
    }


def snapshot(session, workspace_id: int) -> dict[str, list]:
    """Every plugin row of one workspace (and the tag links of its contacts), for comparison."""
    session.expire_all()
    state: dict[str, list] = {}
    for table in Base.metadata.sorted_tables:
        if "workspace_id" not in table.c:
            continue
        rows = session.execute(select(table).where(table.c.workspace_id == workspace_id)).all()
        state[table.name] = sorted((tuple(str(v) for v in row) for row in rows), key=repr)
    links = session.execute(
        select(ContactTag.contact_id, ContactTag.tag_id)
        .join(Contact, Contact.id == ContactTag.contact_id)
        .where(Contact.workspace_id == workspace_id)
    ).all()
    state["marketing_contact_tags"] = sorted(map(tuple, links))
    return state


def _routes(app):
    """(rule, endpoint, method) of every plugin route under /marketing, static files excepted."""
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(PREFIX) or rule.endpoint in SKIPPED_ENDPOINTS:
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            found.append((rule, method))
    return found


def _victim_id(session, victim: Org, name: str) -> int:
    model = ID_SOURCES.get(name)
    if model is None:  # a route added later: guess the table from the parameter's name
        table = f"marketing_{name.removesuffix('_id')}s"
        model = next((m.class_ for m in Base.registry.mappers if m.class_.__tablename__ == table), None)
    if model is None or not hasattr(model, "workspace_id"):
        pytest.fail(f"path parameter {name!r}: add its model to ID_SOURCES in {__name__}")
    found = session.scalar(select(model.id).where(model.workspace_id == victim.workspace_id).limit(1))
    if found is None:
        pytest.fail(f"path parameter {name!r}: seed a {model.__name__} in _seed() so it can be attacked")
    return found


def _url(session, rule, victim: Org) -> str:
    url = rule.rule
    for name in rule.arguments:
        url = re.sub(rf"<(?:[^:<>]+:)?{name}>", str(_victim_id(session, victim, name)), url)
    return url


def _payload(rule, method: str, victim: Org) -> dict | None:
    """The body to send; a write to a record must have a valid one (a 422 would hide whether
    the record was found), a write without a record in its path may go with an empty one."""
    endpoint = rule.endpoint
    if method in ("GET", "DELETE"):
        return None
    if (method, endpoint) not in PAYLOADS:
        if not rule.arguments or not rule.rule.startswith(API):
            # Page forms look their record up before reading the form: an empty post must 404.
            return {}
        pytest.fail(f"{method} {endpoint}: add a valid body to PAYLOADS in {__name__}")
    body = dict(PAYLOADS[(method, endpoint)])
    if body.get("contact_ids") == "<victim contacts>":
        body["contact_ids"] = victim.contacts
    return body


def _leaks(text: str, victim: Org) -> bool:
    return victim.marker in text


def _attack(app, session, browser, token, victim: Org) -> list[str]:
    """Call every route as the attacker; return what went wrong (empty if isolation held)."""
    problems = []
    for rule, method in _routes(app):
        url = _url(session, rule, victim)
        body = _payload(rule, method, victim)
        is_api = url.startswith(API)
        attempts = []
        if is_api:
            attempts.append(
                (
                    "token",
                    app.test_client().open(
                        url, method=method, json=body, headers={"Authorization": f"Bearer {token}"}
                    ),
                )
            )
            attempts.append(
                (
                    "session",
                    browser._send(method.lower(), url, json=body) if method != "GET" else browser.get(url),
                )
            )
        else:
            attempts.append(
                (
                    "page",
                    browser.get(url) if method == "GET" else browser._send(method.lower(), url, data=body),
                )
            )
        for how, response in attempts:
            text = response.get_data(as_text=True)
            where = f"{method} {url} ({how}) -> {response.status_code}"
            if response.status_code >= 500:
                problems.append(f"{where}: server error")
            elif rule.arguments:
                if response.status_code != 404:
                    problems.append(f"{where}: expected 404 for the other workspace's record")
                elif is_api and response.get_json().get("code") != 404:
                    problems.append(f"{where}: 404 without a JSON body")
            if _leaks(text, victim):
                problems.append(f"{where}: shows the other workspace's data")
    return problems


@pytest.mark.parametrize(("attacker", "victim_key"), [("other", "default"), ("admin", "acme")])
def test_no_route_crosses_workspaces(app, session, login, api_token, orgs, attacker, victim_key):
    victim = orgs[victim_key]
    before = snapshot(session, victim.workspace_id)
    browser = login(attacker)
    token = api_token(attacker)
    problems = _attack(app, session, browser, token, victim)
    assert problems == []
    assert snapshot(session, victim.workspace_id) == before


def test_every_plugin_route_is_attacked(app):
    """Guards the test above: the url_map walk really reaches the API and the pages."""
    endpoints = {rule.endpoint for rule, _ in _routes(app)}
    assert {
        "marketing.dashboard",
        "marketing.revoke_token",
        "marketing_api_contacts.ContactItem",
    } <= endpoints
    assert len(endpoints) >= 12


def test_acme_token_acts_only_in_acme(app, session, api_token, orgs):
    acme, home = orgs["acme"], orgs["default"]
    client, headers = app.test_client(), {"Authorization": f"Bearer {api_token('other')}"}
    assert client.get(f"{API}/me", headers=headers).get_json()["workspace"] == "acme"
    listed = client.get(f"{API}/contacts?per_page=500", headers=headers).get_json()
    assert sorted(c["id"] for c in listed["items"]) == sorted(acme.contacts)
    assert listed["total"] == 3
    assert [t["id"] for t in client.get(f"{API}/tags", headers=headers).get_json()] == [acme.tag]
    assert [v["id"] for v in client.get(f"{API}/views", headers=headers).get_json()] == [acme.view]
    # the view's count covers acme's contacts only, though its rules match every address
    assert client.get(f"{API}/views/{acme.view}/count", headers=headers).get_json() == {"count": 3}
    preview = client.post(f"{API}/views/preview-count", json={"rules": RULES}, headers=headers)
    assert preview.get_json() == {"count": 3}
    # filtering by the other workspace's tag or view is "not found", not "empty"
    assert client.get(f"{API}/contacts?tag_id={home.tag}", headers=headers).status_code == 404
    assert client.get(f"{API}/contacts?view_id={home.view}", headers=headers).status_code == 404
    # a create lands in acme
    created = client.post(f"{API}/contacts", json={"email": "homeorg-0@example.com"}, headers=headers)
    assert created.status_code == 201  # the same address may exist in both workspaces
    assert session.get(Contact, created.get_json()["id"]).workspace_id == acme.workspace_id


def test_bulk_operations_with_foreign_ids_change_nothing(app, session, api_token, orgs):
    home, acme = orgs["default"], orgs["acme"]
    before = snapshot(session, home.workspace_id)
    client, headers = app.test_client(), {"Authorization": f"Bearer {api_token('other')}"}
    mixed = home.contacts + acme.contacts[:1]
    tagged = client.post(
        f"{API}/contacts/bulk-tags",
        json={"contact_ids": mixed, "add": ["homeorg tag", "New"]},
        headers=headers,
    )
    assert tagged.get_json() == {"added": 2, "removed": 0}  # acme's contact only, into acme's tags
    untagged = client.post(
        f"{API}/contacts/bulk-tags",
        json={"contact_ids": home.contacts, "remove": ["homeorg tag"]},
        headers=headers,
    )
    assert untagged.get_json() == {"added": 0, "removed": 0}
    deleted = client.post(f"{API}/contacts/bulk-delete", json={"contact_ids": home.contacts}, headers=headers)
    assert deleted.get_json() == {"deleted": 0}
    assert snapshot(session, home.workspace_id) == before
    acme_tags = set(session.scalars(select(Tag.name).where(Tag.workspace_id == acme.workspace_id)))
    assert acme_tags == {"acmeorg tag", "homeorg tag", "New"}


def test_dashboard_counts_only_own_workspace(app, session, login, orgs):
    service.create_contact(session, orgs["acme"].workspace_id, {"email": "extra@example.com"})
    session.commit()
    page = login("other").get(f"{PREFIX}/").get_data(as_text=True)
    assert 'data-count="contacts">4<' in page
    assert 'data-count="tags">1<' in page
    home_page = login("admin").get(f"{PREFIX}/").get_data(as_text=True)
    assert 'data-count="contacts">3<' in home_page


def test_token_pages_list_only_own_tokens(app, login, orgs):
    page = login("other").get(f"{PREFIX}/tokens").get_data(as_text=True)
    assert "acmeorg token" in page
    assert "homeorg token" not in page


def test_token_follows_its_user_out_of_the_workspace(app, session, users, api_token, orgs):
    token = api_token("other")
    headers = {"Authorization": f"Bearer {token}"}
    assert app.test_client().get(f"{API}/contacts", headers=headers).status_code == 200
    users["other"].organization = "default"
    session.commit()
    response = app.test_client().get(f"{API}/contacts", headers=headers)
    assert response.status_code == 401
    assert json.loads(response.get_data())["code"] == 401
