"""The demo CRM's saved-view pages: list, editor, save, delete, the contacts link; roles, CSRF,
workspace isolation, and errors shown beside the field or rule they belong to."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import flask
import pytest
from sqlalchemy import select

from plugin import contacts as service
from plugin.demo.pages_views import PRESETS, summarize
from plugin.models import SavedView

DATA_RE = re.compile(r'<script type="application/json" id="view-editor-data">(.*?)</script>', re.S)
RULES_RE = re.compile(r'id="view-rules" value="([^"]*)"')

DOMAINS = {"match": "all", "rules": [{"field": "email_domain", "op": "in", "value": ["qq.com", "163.com"]}]}


def editor_data(page: str) -> dict[str, Any]:
    return json.loads(DATA_RE.search(page).group(1))


def hidden_rules(page: str) -> Any:
    return json.loads(html.unescape(RULES_RE.search(page).group(1)))


def text(response) -> str:
    return response.get_data(as_text=True)


@pytest.fixture
def people(session, workspace, other_workspace) -> None:
    for email in ("a@qq.com", "b@163.com", "c@gmail.com", "noreply@acme.de", "info@x.cn"):
        service.create_contact(session, workspace.id, {"email": email})
    for email in ("x@qq.com", "y@qq.com", "z@qq.com"):
        service.create_contact(session, other_workspace.id, {"email": email})
    session.commit()


def save(browser, **form: Any):
    data = {"name": "", "description": "", **form}
    if not isinstance(data.get("rules"), str):
        data["rules"] = json.dumps(data.get("rules", {"match": "all", "rules": []}))
    return browser.post("/crm/views/save", data=data)


def views_of(session, workspace_id: int) -> list[SavedView]:
    session.expire_all()
    return list(session.scalars(select(SavedView).where(SavedView.workspace_id == workspace_id)))


# -- list ------------------------------------------------------------------------------------


def test_pages_need_login(app):
    response = app.test_client().get("/crm/views")
    assert response.status_code == 302
    assert "/crm/login" in response.headers["Location"]


def test_empty_list_says_what_to_do(login, workspace):
    page = text(login("marketer").get("/crm/views"))
    assert 'id="views-empty"' in page
    assert 'id="create-first-view"' in page
    assert "Create your first view" in page
    sales_page = text(login("sales").get("/crm/views"))
    assert 'id="views-empty"' in sales_page
    assert 'id="create-first-view"' not in sales_page


def test_list_shows_summary_live_count_and_search(login, session, workspace, people):
    service.ensure_custom_field(session, workspace.id, "industry", "Branche")
    service.create_view(
        session,
        workspace.id,
        name="Industry set",
        rules={"match": "all", "rules": [{"field": "custom.industry", "op": "not_empty"}]},
    )
    service.create_view(session, workspace.id, name="Free mail", rules=DOMAINS, description="CN free")
    service.create_view(
        session,
        workspace.id,
        name="Roles",
        rules={"match": "any", "rules": [{"field": "email_local", "op": "eq", "value": "noreply"}]},
    )
    session.commit()
    browser = login("sales")
    page = text(browser.get("/crm/views"))
    assert 'data-name="Free mail"' in page
    assert 'data-count="2"' in page  # a@qq.com and b@163.com; the other workspace's qq.com not counted
    assert 'data-count="1"' in page
    assert "qq.com, 163.com" in page
    assert "Branche is not empty" in page  # custom fields are summarized by their label
    assert "view-delete" not in page  # sales cannot delete
    found = text(browser.get("/crm/views?q=free"))
    assert 'data-name="Free mail"' in found
    assert 'data-name="Roles"' not in found
    assert 'data-name="Industry set"' not in found
    nothing = text(browser.get("/crm/views?q=zzz"))
    assert 'id="views-no-match"' in nothing
    by_count = text(browser.get("/crm/views?sort=count&order=desc"))
    assert by_count.index('data-name="Free mail"') < by_count.index('data-name="Roles"')
    assert text(browser.get("/crm/views?sort=bogus&page=-3")).count('class="view-row"') == 3


def test_live_count_follows_new_contacts(login, session, workspace, people):
    view = service.create_view(session, workspace.id, name="Free mail", rules=DOMAINS)
    session.commit()
    browser = login("marketer")
    assert 'data-count="2"' in text(browser.get("/crm/views"))
    service.create_contact(session, workspace.id, {"email": "new@QQ.com"})
    session.commit()
    page = text(browser.get("/crm/views"))
    assert f'data-id="{view.id}"' in page
    assert 'data-count="3"' in page


def test_summary_in_request(app):
    tree = {
        "match": "all",
        "rules": [
            {"field": "email_domain", "op": "in", "value": ["a", "b", "c", "d", "e"]},
            {
                "match": "any",
                "rules": [
                    {"field": "created_at", "op": "between", "value": ["2024-01-01", "2024-01-31"]},
                    {"field": "custom.industry", "op": "empty"},
                ],
            },
        ],
    }
    with app.test_request_context("/"):
        flask.session["marketing_locale"] = "en"
        line = summarize(tree)
        assert line == (
            "Email domain (after @) is one of a, b, c +2 AND "
            "(Created on between 2024-01-01 and 2024-01-31 OR industry is empty)"
        )
        assert summarize({"match": "all", "rules": []}) == "every contact"
        assert summarize({"match": "any", "rules": []}) == "no contact"


# -- editor ----------------------------------------------------------------------------------


def test_new_editor_offers_fields_ops_presets_and_the_preview_url(login, session, workspace):
    service.ensure_custom_field(session, workspace.id, "industry", "Industry")
    session.commit()
    response = login("marketer").get("/crm/views/new")
    page = text(response)
    assert response.status_code == 200
    for hook in (
        'id="view-name"',
        'id="rule-editor"',
        'id="live-count"',
        'id="save-view"',
        'id="preset-domestic"',
        'id="preset-role"',
    ):
        assert hook in page
    assert "view_editor.js" in page
    data = editor_data(page)
    keys = [f["key"] for f in data["fields"]]
    assert keys[:8] == [
        "email",
        "email_domain",
        "email_local",
        "name",
        "company",
        "country",
        "owner",
        "created_at",
    ]
    assert "custom.industry" in keys
    assert data["previewUrl"] == "/marketing/api/v1/views/preview-count"
    assert data["rules"] == {"match": "all", "rules": []}
    assert data["readOnly"] is False
    for key in ("domestic", "role"):
        assert len(data["presets"][key]["rules"]["rules"]) == 1  # each preset is ONE rule


def test_preset_link_prefills_the_editor(login, workspace):
    page = text(login("marketer").get("/crm/views/new?preset=role"))
    assert hidden_rules(page) == PRESETS["role"]["rules"]
    assert 'value="Role addresses"' in page


@pytest.mark.parametrize(("key", "expected"), [("domestic", 2), ("role", 2)])
def test_saving_a_preset_gives_the_expected_members(login, session, workspace, people, key, expected):
    browser = login("marketer")
    response = save(browser, name=f"Preset {key}", rules=PRESETS[key]["rules"])
    assert response.status_code == 302
    (view,) = views_of(session, workspace.id)
    assert service.view_count(session, workspace.id, view.id) == expected


def test_create_then_edit_then_delete(login, session, workspace, people):
    browser = login("marketer")
    response = save(browser, name="  Free   mail ", description="first", rules=DOMAINS)
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/crm/views")
    (view,) = views_of(session, workspace.id)
    assert view.name == "Free mail"
    assert view.rules == DOMAINS
    assert view.created_by == str(browser.client.get("/marketing/api/v1/me").get_json()["user_id"])
    assert "saved" in text(browser.get("/crm/views"))

    edit = text(browser.get(f"/crm/views/{view.id}/edit"))
    assert hidden_rules(edit) == DOMAINS
    assert f'name="view_id" id="view-id" value="{view.id}"' in edit
    assert 'id="delete-view"' in edit

    nested = {
        "match": "any",
        "rules": [
            DOMAINS["rules"][0],
            {"match": "all", "rules": [{"field": "email_local", "op": "eq", "value": "noreply"}]},
        ],
    }
    response = save(browser, view_id=str(view.id), name="Free or noreply", description="second", rules=nested)
    assert response.status_code == 302
    (view,) = views_of(session, workspace.id)
    assert (view.name, view.description, view.rules) == ("Free or noreply", "second", nested)
    assert service.view_count(session, workspace.id, view.id) == 3

    listing = text(browser.get("/crm/views"))
    assert f'action="/crm/views/{view.id}/delete"' in listing
    assert 'data-confirm="Delete the view' in listing
    response = browser.post(f"/crm/views/{view.id}/delete", data={})
    assert response.status_code == 302
    assert views_of(session, workspace.id) == []
    assert browser.post(f"/crm/views/{view.id}/delete", data={}).status_code == 404


def test_view_link_goes_to_the_contact_list(login, session, workspace):
    view = service.create_view(session, workspace.id, name="All", rules={"match": "all", "rules": []})
    session.commit()
    response = login("sales").get(f"/crm/views/{view.id}")
    assert response.status_code == 302
    assert response.headers["Location"].endswith(f"/crm/contacts?view_id={view.id}")
    assert login("sales").get("/crm/views/999999").status_code == 404
    assert login("sales").get("/crm/views/99999999999999999999").status_code == 404


# -- errors ----------------------------------------------------------------------------------


def test_missing_name_is_shown_beside_the_field_and_the_rules_are_kept(login, session, workspace):
    response = save(login("marketer"), name="   ", description="keep me", rules=DOMAINS)
    page = text(response)
    assert response.status_code == 400
    assert 'id="error-name"' in page
    assert 'value="keep me"' in page
    assert hidden_rules(page) == DOMAINS
    assert editor_data(page)["rules"] == DOMAINS
    assert views_of(session, workspace.id) == []


def test_duplicate_name_is_refused(login, session, workspace):
    service.create_view(session, workspace.id, name="Free mail", rules=DOMAINS)
    session.commit()
    page = text(save(login("marketer"), name="Free mail", rules=DOMAINS))
    assert "exists already" in re.search(r'id="error-name">([^<]*)<', page).group(1)
    assert len(views_of(session, workspace.id)) == 1


def test_invalid_rule_errors_go_beside_the_rule(login, session, workspace):
    bad = {
        "match": "all",
        "rules": [
            {"field": "email_domain", "op": "in", "value": ["qq.com"]},
            {
                "match": "any",
                "rules": [{"field": "created_at", "op": "between", "value": ["2024-03-01", "2024-01-01"]}],
            },
        ],
    }
    response = save(login("marketer"), name="Bad", rules=bad)
    page = text(response)
    assert response.status_code == 400
    assert 'id="error-rules"' in page
    data = editor_data(page)
    assert data["rules"] == bad  # the editor comes back as the user left it
    assert data["ruleErrors"]["rules"]["1"]["rules"]["0"]["value"] == ["the first day is after the last day"]
    assert views_of(session, workspace.id) == []


def test_unreadable_rules_and_over_deep_trees(login, session, workspace):
    browser = login("marketer")
    page = text(save(browser, name="X", rules="{not json"))
    assert "could not be read" in re.search(r'id="error-rules"[^>]*>([^<]*)<', page).group(1)
    deep: dict[str, Any] = {"match": "all", "rules": []}
    for _ in range(10):
        deep = {"match": "all", "rules": [deep]}
    page = text(save(browser, name="X", rules=deep))
    assert "nest at most" in re.search(r'id="error-rules"[^>]*>([^<]*)<', page).group(1)
    assert views_of(session, workspace.id) == []


def test_failed_update_changes_nothing(login, session, workspace):
    view = service.create_view(session, workspace.id, name="Keep", rules=DOMAINS)
    session.commit()
    response = save(
        login("marketer"),
        view_id=str(view.id),
        name="Renamed",
        rules={"match": "all", "rules": [{"field": "x"}]},
    )
    assert response.status_code == 400
    assert f'id="view-id" value="{view.id}"' in text(response)
    (stored,) = views_of(session, workspace.id)
    assert (stored.name, stored.rules) == ("Keep", DOMAINS)


def test_failed_rename_stays_on_the_edited_view(login, session, workspace):
    view = service.create_view(session, workspace.id, name="Keep", rules=DOMAINS)
    session.commit()
    browser = login("marketer")
    response = save(browser, view_id=str(view.id), name="  ", rules=DOMAINS)
    page = text(response)
    assert response.status_code == 400
    assert "Give the view a name" in re.search(r'id="error-name">([^<]*)<', page).group(1)
    assert f'id="view-id" value="{view.id}"' in page
    assert hidden_rules(page) == DOMAINS
    for bad_id in ("abc", "0", "99999999999", "123456"):
        assert save(browser, view_id=bad_id, name="X", rules=DOMAINS).status_code == 404
    assert [v.name for v in views_of(session, workspace.id)] == ["Keep"]


def test_preview_count_api_answers_in_the_shape_the_editor_reads(login, workspace, people):
    browser = login("sales")
    ok = browser.post("/marketing/api/v1/views/preview-count", json={"rules": DOMAINS})
    assert ok.status_code == 200
    assert ok.get_json() == {"count": 2}
    bad = browser.post(
        "/marketing/api/v1/views/preview-count",
        json={"rules": {"match": "all", "rules": [{"field": "age", "op": "eq", "value": "1"}]}},
    )
    assert bad.status_code == 422
    assert "unknown field" in bad.get_json()["errors"]["json"]["rules"]["rules"]["0"]["field"][0]


# -- roles, CSRF, isolation ------------------------------------------------------------------


def test_sales_may_look_but_not_change(login, session, workspace):
    view = service.create_view(session, workspace.id, name="Keep", rules=DOMAINS)
    session.commit()
    sales = login("sales")
    assert sales.get("/crm/views/new").status_code == 403
    edit = sales.get(f"/crm/views/{view.id}/edit")
    assert edit.status_code == 200
    page = text(edit)
    assert 'id="save-view"' not in page
    assert 'id="delete-view"' not in page
    assert editor_data(page)["readOnly"] is True
    assert save(sales, name="Mine", rules=DOMAINS).status_code == 403
    assert save(sales, view_id=str(view.id), name="Hijack", rules=DOMAINS).status_code == 403
    assert sales.post(f"/crm/views/{view.id}/delete", data={}).status_code == 403
    (stored,) = views_of(session, workspace.id)
    assert stored.name == "Keep"


def test_admin_may_change(login, session, workspace):
    assert save(login("admin"), name="By admin", rules=DOMAINS).status_code == 302
    assert [v.name for v in views_of(session, workspace.id)] == ["By admin"]


def test_csrf_is_required(login, session, workspace):
    browser = login("marketer")
    response = browser.client.post(
        "/crm/views/save", data={"name": "No token", "rules": json.dumps(DOMAINS)}, headers={}
    )
    assert response.status_code == 400
    assert views_of(session, workspace.id) == []


def test_other_organization_can_neither_see_nor_change(login, session, workspace, other_workspace, people):
    view = service.create_view(session, workspace.id, name="Secret view", rules=DOMAINS)
    session.commit()
    other = login("other")
    assert "Secret view" not in text(other.get("/crm/views"))
    assert other.get(f"/crm/views/{view.id}/edit").status_code == 404
    assert other.get(f"/crm/views/{view.id}").status_code == 404
    assert save(other, view_id=str(view.id), name="Taken", rules=DOMAINS).status_code == 404
    assert other.post(f"/crm/views/{view.id}/delete", data={}).status_code == 404
    (stored,) = views_of(session, workspace.id)
    assert (stored.name, stored.rules) == ("Secret view", DOMAINS)
    # Their own view of the same rules counts only their own contacts.
    assert save(other, name="Secret view", rules=DOMAINS).status_code == 302
    (theirs,) = views_of(session, other_workspace.id)
    assert service.view_count(session, other_workspace.id, theirs.id) == 3
    assert 'data-count="3"' in text(other.get("/crm/views"))
