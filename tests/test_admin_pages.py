"""Admin pages under /marketing: login and role required, dashboard counts, API tokens (shown
once, revoked with CSRF), the language switch and its redirect guard."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from plugin import contacts as service
from plugin.demo.models import User
from plugin.models import ApiToken

PAGES = ["/marketing/", "/marketing/tokens"]
TOKEN_RE = re.compile(r'id="new-token">(mkt_[^<]+)<')


@pytest.fixture
def guest(session):
    """A CRM user whose role means nothing to the plugin."""
    user = User(username="guest", display_name="Guest", role="support", organization="default")
    user.set_password("guest")
    session.add(user)
    session.commit()
    return user


@pytest.mark.parametrize("url", PAGES)
def test_pages_need_login(app, url):
    response = app.test_client().get(url)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/crm/login")


def test_posts_need_login(app, users):
    client = app.test_client()
    for url in ("/marketing/tokens", "/marketing/tokens/1/revoke"):
        response = client.post(url, data={"name": "x"})
        assert response.status_code == 302
        assert "/crm/login" in response.headers["Location"]


@pytest.mark.parametrize("url", PAGES)
def test_pages_need_a_marketing_role(login, guest, url):
    assert login("guest").get(url).status_code == 403


@pytest.mark.parametrize("role", ["admin", "marketer", "sales"])
def test_every_role_sees_the_dashboard(login, role):
    response = login(role).get("/marketing/")
    assert response.status_code == 200
    assert "data-count" in response.get_data(as_text=True)


def test_static_files_need_no_login(app):
    """The host's login page uses the plugin's stylesheet."""
    response = app.test_client().get("/marketing/static/marketing.css")
    assert response.status_code == 200
    assert "text/css" in response.headers["Content-Type"]


def test_dashboard_counts(login, session, workspace):
    for n in range(3):
        service.create_contact(session, workspace.id, {"email": f"c{n}@example.com", "tags": ["A", "B"]})
    service.create_view(session, workspace.id, name="All", rules={"match": "all", "rules": []})
    session.commit()
    page = login("sales").get("/marketing/").get_data(as_text=True)
    assert 'data-count="contacts">3<' in page
    assert 'data-count="tags">2<' in page
    assert 'data-count="views">1<' in page


def test_token_is_shown_once_and_works(app, login, session):
    browser = login("marketer")
    created = browser.post("/marketing/tokens", data={"name": " nightly   sync "})
    assert created.status_code == 200
    assert created.headers["Cache-Control"] == "no-store"
    token = TOKEN_RE.search(created.get_data(as_text=True)).group(1)
    row = session.scalar(select(ApiToken))
    assert row.name == "nightly sync"
    assert row.token_hash != token

    again = browser.get("/marketing/tokens").get_data(as_text=True)
    assert token not in again
    assert row.prefix in again
    assert "nightly sync" in again

    me = app.test_client().get("/marketing/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.get_json()["role"] == "marketer"


@pytest.mark.parametrize("name", ["", "   ", "x" * 121])
def test_token_name_error_is_beside_the_field(login, session, name):
    response = login("marketer").post("/marketing/tokens", data={"name": name})
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert 'class="field has-error"' in page
    assert 'id="token-name-error"' in page
    assert session.scalar(select(func.count()).select_from(ApiToken)) == 0


def test_token_create_needs_csrf(login, session):
    browser = login("marketer")
    response = browser.client.post("/marketing/tokens", data={"name": "no csrf"})
    assert response.status_code == 400
    assert session.scalar(select(func.count()).select_from(ApiToken)) == 0


def test_revoke_needs_csrf_and_ends_the_token(app, login, session):
    browser = login("admin")
    page = browser.post("/marketing/tokens", data={"name": "to revoke"}).get_data(as_text=True)
    token = TOKEN_RE.search(page).group(1)
    row_id = session.scalar(select(ApiToken.id))
    headers = {"Authorization": f"Bearer {token}"}

    refused = browser.client.post(f"/marketing/tokens/{row_id}/revoke", data={})
    assert refused.status_code == 400
    assert app.test_client().get("/marketing/api/v1/me", headers=headers).status_code == 200

    revoked = browser.post(f"/marketing/tokens/{row_id}/revoke", data={})
    assert revoked.status_code == 302
    assert revoked.headers["Location"].endswith("/marketing/tokens")
    assert app.test_client().get("/marketing/api/v1/me", headers=headers).status_code == 401
    listing = browser.get("/marketing/tokens").get_data(as_text=True)
    assert "Revoked" in listing or "已吊销" in listing


def test_cannot_revoke_someone_elses_token(login, session, users, api_token):
    api_token("admin")
    row_id = session.scalar(select(ApiToken.id))
    response = login("marketer").post(f"/marketing/tokens/{row_id}/revoke", data={})
    assert response.status_code == 404
    session.expire_all()
    assert session.get(ApiToken, row_id).revoked_at is None


def test_revoke_of_unknown_or_huge_id_is_404(login):
    browser = login("admin")
    assert browser.post("/marketing/tokens/999/revoke", data={}).status_code == 404
    assert browser.post(f"/marketing/tokens/{2**70}/revoke", data={}).status_code == 404


def test_language_switch(login):
    browser = login("marketer")
    response = browser.post("/marketing/preferences", data={"locale": "zh_CN", "next": "/marketing/tokens"})
    assert response.status_code == 302
    assert response.headers["Location"] == "/marketing/tokens"
    assert 'lang="zh-CN"' in browser.get("/marketing/").get_data(as_text=True)
    browser.post("/marketing/preferences", data={"locale": "en", "next": "/marketing/"})
    assert 'lang="en"' in browser.get("/marketing/").get_data(as_text=True)


def test_language_switch_works_on_the_login_page(app):
    client = app.test_client()
    page = client.get("/crm/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    response = client.post(
        "/marketing/preferences", data={"locale": "zh_CN", "next": "/crm/login", "csrf_token": csrf}
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/crm/login"
    assert 'lang="zh-CN"' in client.get("/crm/login").get_data(as_text=True)
    assert client.post("/marketing/preferences", data={"locale": "en"}).status_code == 400  # no CSRF


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example",
        "https://evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "/\t/evil.example",
        "https:evil.example",
        "evil.example",
        "",
    ],
)
def test_language_switch_never_redirects_off_site(login, target):
    response = login("marketer").post("/marketing/preferences", data={"locale": "en", "next": target})
    assert response.status_code == 302
    assert response.headers["Location"] == "/marketing/"


def test_unknown_locale_or_time_zone_is_refused(login):
    browser = login("marketer")
    assert browser.post("/marketing/preferences", data={"locale": "xx_YY"}).status_code == 400
    assert browser.post("/marketing/preferences", data={"timezone": "Mars/Olympus"}).status_code == 400
    ok = browser.post("/marketing/preferences", data={"timezone": "Europe/Berlin"})
    assert ok.status_code == 302


def test_every_page_offers_the_time_zone_its_times_are_shown_in(login):
    """The header's picker: Shanghai by default, labelled with its offset and place in the page's
    language; a zone picked there (any valid one, also outside the list) is selected afterwards."""
    browser = login("marketer")
    page = browser.get("/marketing/").get_data(as_text=True)
    picker = re.search(r'<select name="timezone" id="timezone-select".*?</select>', page, re.S).group(0)
    assert re.search(r'<option value="Asia/Shanghai" selected>UTC\+08:00 Shanghai</option>', picker)
    assert '<option value="America/New_York"' in picker
    browser.post("/marketing/preferences", data={"timezone": "Africa/Nairobi", "next": "/marketing/"})
    page = browser.get("/marketing/").get_data(as_text=True)
    assert re.search(r'<option value="Africa/Nairobi" selected>UTC\+03:00 Nairobi</option>', page)
    browser.post("/marketing/preferences", data={"locale": "zh_CN", "next": "/marketing/"})
    chinese = browser.get("/marketing/").get_data(as_text=True)
    assert "UTC+08:00 上海</option>" in chinese


def test_a_zone_babel_cannot_name_still_renders_and_can_be_left(login):
    """ "Factory" is in the tz database but not in Babel's data: pages used to answer 500 for that
    user, header included, so they could not even switch back."""
    browser = login("marketer")
    browser.post("/marketing/preferences", data={"timezone": "Factory", "next": "/marketing/"})
    page = browser.get("/marketing/")
    assert page.status_code == 200
    assert '<option value="Factory" selected>' in page.get_data(as_text=True)
    browser.post("/marketing/preferences", data={"timezone": "Asia/Shanghai", "next": "/marketing/"})
    assert '<option value="Asia/Shanghai" selected>' in browser.get("/marketing/").get_data(as_text=True)
