"""Template pages: list (search, sort, paging, empty state), editor with errors beside fields,
live preview JSON, import forms, test send and review buttons, roles, CSRF and workspaces."""

from __future__ import annotations

import functools
import io
import re

import campaign_kit as kit
import pytest
from campaign_kit import BATCH_USER, TRIGGER_USER

from plugin.models import Contact, Template


@pytest.fixture
def sim():
    with kit.acme_simulator(seed=5) as simulator:
        yield simulator


@pytest.fixture
def app_config(app_config, sim):
    app_config.update(MARKETING_SENDCLOUD_API_BASE=sim.url, MARKETING_PROVIDER_TIMEOUT=3.0)
    return app_config


@pytest.fixture
def account(session, workspace):
    return kit.acme_account(session, workspace.id)


# ``add_template(session, workspace_id, name=...)``: the kit's template with this module's content.
add_template = functools.partial(
    kit.template,
    name="Spring",
    subject="Hi {{name|there}}",
    html="<p>Dear {{name|friend}}</p>",
    variables=["name"],
)


def text(response) -> str:
    return response.get_data(as_text=True)


# --------------------------------------------------------------------------- list


def test_empty_state_says_what_to_do(login, workspace):
    marketer = login("marketer")
    page = text(marketer.get("/marketing/templates"))
    assert 'id="templates-empty"' in page
    assert 'id="create-first-template"' in page
    sales = text(login("sales").get("/marketing/templates"))
    assert 'id="templates-empty"' in sales
    assert "create-first-template" not in sales
    assert "Ask a marketer" in sales


def test_list_search_sort_and_paging(login, session, workspace, other_workspace):
    for n in range(55):
        add_template(session, workspace.id, name=f"Promo {n:02d}")
    add_template(session, workspace.id, name="Newsletter")
    add_template(session, other_workspace.id, name="Promo of acme")
    browser = login("marketer")
    first = text(browser.get("/marketing/templates?sort=name&order=asc"))
    names = re.findall(r'class="template-row" data-id="\d+" data-name="([^"]+)"', first)
    assert names[:3] == ["Newsletter", "Promo 00", "Promo 01"]
    assert len(names) == 50
    assert 'data-total="56"' in first
    second = text(browser.get("/marketing/templates?sort=name&order=asc&page=2"))
    assert re.findall(r'data-name="([^"]+)"', second) == [f"Promo {n}" for n in range(49, 55)]
    found = text(browser.get("/marketing/templates?q=news"))
    assert re.findall(r'data-name="([^"]+)"', found) == ["Newsletter"]
    none = text(browser.get("/marketing/templates?q=zzz"))
    assert 'id="templates-no-match"' in none
    assert "Promo of acme" not in first + second
    assert text(browser.get("/marketing/templates?sort=bogus&page=-3")).count("template-row") == 50


# --------------------------------------------------------------------------- editor


def test_create_with_errors_beside_the_fields_then_save(login, session, workspace):
    browser = login("marketer")
    assert browser.get("/marketing/templates/new").status_code == 200
    bad = browser.post(
        "/marketing/templates/new",
        data={"name": "", "subject": "For {{compnay}}", "html": "<p>{VAR9}</p>", "text": ""},
    )
    assert bad.status_code == 422
    page = text(bad)
    assert 'id="tpl-name-error"' in page
    assert re.search(r'id="tpl-subject-error"[^>]*>[^<]*compnay', page)
    assert re.search(r'id="tpl-html-error"[^>]*>[^<]*VAR9', page)
    assert "&lt;p&gt;{VAR9}&lt;/p&gt;" in page  # what the user typed is kept
    assert session.query(Template).count() == 0
    ok = browser.post(
        "/marketing/templates/new",
        data={
            "name": "Welcome",
            "subject": "Hi {FULLNAME|there}",
            "html": "<p>{{name|friend}}</p>",
            "text": "",
        },
    )
    assert ok.status_code == 302
    template = session.query(Template).one()
    assert ok.headers["Location"].endswith(f"/marketing/templates/{template.id}")
    assert (template.name, template.variables) == ("Welcome", ["name"])
    edit = text(browser.get(ok.headers["Location"]))
    assert 'sandbox=""' in edit
    assert "srcdoc=" in edit
    assert "&lt;p&gt;friend&lt;/p&gt;" in edit  # preview rendered with the fallback, escaped in srcdoc
    saved = browser.post(
        f"/marketing/templates/{template.id}",
        data={"name": "Welcome 2", "subject": "Hello", "html": "<p>x</p>", "text": "plain"},
    )
    assert saved.status_code == 302
    session.refresh(template)
    assert (template.name, template.subject, template.text) == ("Welcome 2", "Hello", "plain")


def test_pending_template_cannot_be_edited(login, session, workspace):
    template = add_template(session, workspace.id)
    template.review_state = "pending"
    session.commit()
    response = login("marketer").post(
        f"/marketing/templates/{template.id}", data={"name": "x", "subject": "changed", "html": "<p>y</p>"}
    )
    assert response.status_code == 409
    assert 'id="form-error"' in text(response)
    session.refresh(template)
    assert template.subject == "Hi {{name|there}}"


def test_live_preview_as_a_contact(login, session, workspace, account):
    contact = Contact(
        workspace_id=workspace.id,
        email="li@example.cn",
        email_domain="example.cn",
        email_local="li",
        name="<Li>",
        custom={},
    )
    session.add(contact)
    session.commit()
    browser = login("sales")  # reading and previewing need only "view"
    found = browser.client.get("/marketing/templates/contacts?q=li@").get_json()
    assert found["items"] == [{"id": contact.id, "email": "li@example.cn", "name": "<Li>"}]
    response = browser.post(
        "/marketing/templates/preview",
        json={"subject": "Hi {FULLNAME}", "html": "<p>{{name}} {{oops}}</p>", "contact_id": contact.id},
    )
    body = response.get_json()
    assert body["subject"] == "Hi <Li>"
    assert "<p>&lt;Li&gt; </p>" in body["html"]
    assert body["unknown"] == {"html": ["oops"]}
    assert "oops" in body["unknown_message"]["html"]
    assert "Acme Ltd" in body["html"]
    assert body["large"] is False
    big = browser.post(
        "/marketing/templates/preview", json={"subject": "s", "html": "x" * 110_000}
    ).get_json()
    assert big["large"] is True
    assert big["size_bytes"] > 102_400
    assert (
        browser.post("/marketing/templates/preview", json={"subject": "s", "contact_id": 999999}).status_code
        == 404
    )


def test_preview_needs_csrf(login, workspace):
    browser = login("marketer")
    response = browser.client.post("/marketing/templates/preview", json={"subject": "s"})
    assert response.status_code == 400


def test_duplicate_and_delete_buttons(login, session, workspace):
    template = add_template(session, workspace.id)
    browser = login("marketer")
    page = text(browser.get(f"/marketing/templates/{template.id}"))
    assert "data-confirm=" in page.split('id="delete-template-form"')[1][:400]
    copy = browser.post(f"/marketing/templates/{template.id}/duplicate", data={})
    assert copy.status_code == 302
    assert session.query(Template).filter_by(name="Spring (copy)").count() == 1
    gone = browser.post(f"/marketing/templates/{template.id}/delete", data={})
    assert gone.status_code == 302
    assert session.get(Template, template.id) is None


# --------------------------------------------------------------------------- import


def test_file_import_gbk_and_errors_beside_the_field(login, session, workspace):
    browser = login("marketer")
    html = "<html><head><title>促销</title></head><body><p>{姓名}，您好</p></body></html>".encode("gbk")
    ok = browser.post(
        "/marketing/templates/import/file",
        data={"file": (io.BytesIO(html), "promo.htm")},
        content_type="multipart/form-data",
    )
    assert ok.status_code == 302
    template = session.query(Template).one()
    assert template.subject == "促销"
    assert "{姓名}，您好" in template.html
    bad = browser.post(
        "/marketing/templates/import/file",
        data={"file": (io.BytesIO(b"x"), "photo.jpg")},
        content_type="multipart/form-data",
    )
    assert bad.status_code == 422
    assert re.search(r'id="import-file-error">[^<]*\.html, \.htm or \.txt', text(bad))


def test_url_import_refuses_internal_addresses(login, session, workspace):
    response = login("marketer").post(
        "/marketing/templates/import/url", data={"url": "http://169.254.169.254/latest/meta-data/"}
    )
    assert response.status_code == 422
    assert re.search(r'id="import-url-error">[^<]*private or reserved', text(response))
    assert 'value="http://169.254.169.254/latest/meta-data/"' in text(response)
    assert session.query(Template).count() == 0


# --------------------------------------------------------------------------- test send and review


def test_test_send_and_review_through_the_simulator(login, session, workspace, account, sim):
    template = add_template(session, workspace.id)
    browser = login("marketer")
    page = text(browser.get(f"/marketing/templates/{template.id}"))
    assert 'id="send-test"' in page
    assert 'id="review-submit"' in page
    sent = browser.post(
        f"/marketing/templates/{template.id}/test",
        data={"addresses": "qa@example.com", "account_id": account.id},
    )
    assert sent.status_code == 302
    [mail] = sim.mails()
    assert (mail.recipient, mail.subject, mail.api_user) == (
        "qa@example.com",
        "[Test] Hi there",
        TRIGGER_USER,
    )
    # Counted (and committed) as mail outside campaigns: its delivery never outnumbers it.
    from sqlalchemy.orm import Session as FreshSession

    from plugin import counters
    from plugin.extension import get_state

    with FreshSession(get_state().db.engine) as fresh:
        assert counters.totals(fresh, 0)["submitted"] == 1
        assert counters.totals(fresh, 0)["sent"] == 1
    too_many = browser.post(
        f"/marketing/templates/{template.id}/test",
        data={"addresses": ",".join(f"u{i}@x.com" for i in range(6))},
    )
    assert too_many.status_code == 422
    assert re.search(r'id="test-addresses-error">[^<]*at most 5', text(too_many))
    assert re.search(r'id="test-addresses"[^>]*autofocus', text(too_many))  # the page opens at the error

    assert browser.post(f"/marketing/templates/{template.id}/review/submit", data={}).status_code == 302
    session.refresh(template)
    assert template.review_state == "pending"
    page = text(browser.get(f"/marketing/templates/{template.id}"))
    assert 'data-review="pending"' in page
    assert 'id="review-withdraw"' in page
    sim.review_template(BATCH_USER, template.provider_template_name, approve=False, note="含有违规词")
    assert browser.post(f"/marketing/templates/{template.id}/review/refresh", data={}).status_code == 302
    page = text(browser.get(f"/marketing/templates/{template.id}"))
    assert 'data-review="rejected"' in page
    assert 'id="review-note">含有违规词' in page
    sim.review_template(BATCH_USER, template.provider_template_name, approve=True)
    assert browser.post("/marketing/templates/reviews/refresh", data={}).status_code == 302
    listing = text(browser.get("/marketing/templates"))
    assert 'data-review="approved"' in listing


def test_sales_reads_but_cannot_change(login, session, workspace, account, sim):
    template = add_template(session, workspace.id)
    sales = login("sales")
    assert sales.get("/marketing/templates").status_code == 200
    page = text(sales.get(f"/marketing/templates/{template.id}"))
    assert "<fieldset disabled" in page
    assert 'id="save-template"' not in page
    forbidden = [
        ("/marketing/templates/new", {}),
        (f"/marketing/templates/{template.id}", {"name": "x", "subject": "y", "html": "z"}),
        (f"/marketing/templates/{template.id}/duplicate", {}),
        (f"/marketing/templates/{template.id}/delete", {}),
        (f"/marketing/templates/{template.id}/test", {"addresses": "a@b.com"}),
        (f"/marketing/templates/{template.id}/review/submit", {}),
        ("/marketing/templates/reviews/refresh", {}),
        ("/marketing/templates/import/url", {"url": "https://example.com/"}),
    ]
    for url, data in forbidden:
        assert sales.post(url, data=data).status_code == 403, url
    assert sales.get("/marketing/templates/new").status_code == 403
    assert session.query(Template).count() == 1
    assert sim.mails() == []


def test_other_workspace_gets_404(login, session, workspace, other_workspace):
    template = add_template(session, workspace.id)
    other = login("other")
    assert other.get(f"/marketing/templates/{template.id}").status_code == 404
    assert other.post(f"/marketing/templates/{template.id}/delete", data={}).status_code == 404
    assert session.get(Template, template.id) is not None
    assert "Spring" not in text(other.get("/marketing/templates"))


def test_anonymous_users_are_sent_to_login(app, workspace):
    response = app.test_client().get("/marketing/templates")
    assert response.status_code in (302, 401)
