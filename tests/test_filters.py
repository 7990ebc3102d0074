"""Saved-view rules: validation names the place of every mistake, the product documents' two
examples are one rule each, LIKE wildcards are literal, custom fields and days work."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from marshmallow import ValidationError
from sqlalchemy import insert

from plugin import contacts as service
from plugin.directory import SqlDirectory
from plugin.filters import MAX_DEPTH, field_kind, fold, load_rules, referenced_fields
from plugin.models import Contact

#: 产品文档: "国内邮箱汇总 — 设置邮箱域名如 qq.com、163.com 等" (exclude domestic mailboxes).
DOMESTIC_FREE = ["qq.com", "163.com", "126.com", "sina.com", "sina.cn", "foxmail.com", "yeah.net"]
#: 产品文档: "无关邮箱汇总 — 设置邮箱前缀如 noreply@、support@、ticket@ 等" (role addresses).
ROLE_LOCALS = ["noreply", "no-reply", "support", "ticket", "info", "service"]


def one(field: str, op: str, value: Any = None, match: str = "all") -> dict[str, Any]:
    return {"match": match, "rules": [{"field": field, "op": op, "value": value}]}


def errors_of(tree: Any) -> dict[str, Any]:
    with pytest.raises(ValidationError) as caught:
        load_rules(tree)
    return caught.value.messages


# -- validation --------------------------------------------------------------------------------


def test_unknown_field_is_named_at_its_index():
    tree = {
        "match": "all",
        "rules": [{"field": "name", "op": "eq", "value": "x"}, {"field": "age", "op": "eq"}],
    }
    messages = errors_of(tree)
    assert list(messages) == ["rules"]
    assert list(messages["rules"]) == [1]
    assert "unknown field" in messages["rules"][1]["field"][0]
    assert "custom.<key>" in messages["rules"][1]["field"][0]


@pytest.mark.parametrize(
    ("field", "op", "value", "expected"),
    [
        ("created_at", "contains", "2024", "a date field takes"),
        ("created_at", "eq", "2024-01-01", "a date field takes"),
        ("name", "before", "2024-01-01", "need a date field"),
        ("email_domain", "between", ["2024-01-01", "2024-01-02"], "need a date field"),
    ],
)
def test_operator_must_suit_the_field_kind(field, op, value, expected):
    messages = errors_of(one(field, op, value))
    assert expected in messages["rules"][0]["op"][0]


def test_nested_error_path_goes_through_the_groups():
    tree = {
        "match": "any",
        "rules": [
            {"field": "name", "op": "not_empty"},
            {"match": "all", "rules": [{"match": "any", "rules": [{"field": "owner", "op": "after"}]}]},
        ],
    }
    messages = errors_of(tree)
    assert messages["rules"][1]["rules"][0]["rules"][0]["op"] == ["before/after/between need a date field"]


@pytest.mark.parametrize("value", [[], "qq.com", ["qq.com", "  "], ["qq.com", 5], ["x" * 501]])
def test_in_needs_a_list_of_non_empty_texts(value):
    messages = errors_of(one("email_domain", "in", value))
    assert "a list of 1 to" in messages["rules"][0]["value"][0]


@pytest.mark.parametrize(
    "value", ["2024-02-30", "yesterday", "20240105", "2024-W01-1", "2024-01-05\n", 20240105]
)
def test_bad_dates_are_refused(value):
    """Only YYYY-MM-DD: custom date fields compare as text, so ``20240105`` would order wrongly."""
    messages = errors_of(one("custom.since", "before", value))
    assert "YYYY-MM-DD" in messages["rules"][0]["value"][0]


def test_between_needs_two_days_in_order():
    assert errors_of(one("created_at", "between", ["2024-03-01", "2024-02-01"]))["rules"][0]["value"] == [
        "the first day is after the last day"
    ]
    assert "between takes" in errors_of(one("created_at", "between", ["2024-03-01"]))["rules"][0]["value"][0]
    assert load_rules(one("created_at", "between", ["2024-03-01", "2024-03-01"]))  # one day is fine


def test_nesting_deeper_than_the_limit_is_refused():
    def nested(levels: int) -> dict[str, Any]:
        tree: dict[str, Any] = {"match": "all", "rules": [{"field": "name", "op": "not_empty"}]}
        for _ in range(levels - 1):
            tree = {"match": "any", "rules": [tree]}
        return tree

    assert load_rules(nested(MAX_DEPTH))
    assert "nest at most" in errors_of(nested(MAX_DEPTH + 1))["rules"][0]


def test_hostile_depth_does_not_recurse_forever():
    tree: dict[str, Any] = {"match": "all", "rules": []}
    for _ in range(50_000):
        tree = {"match": "all", "rules": [tree]}
    assert "nest at most" in errors_of(tree)["rules"][0]


def test_non_object_rule_and_non_object_tree():
    assert errors_of({"match": "all", "rules": ["name = x"]})["rules"][0] == ["each rule must be an object"]
    assert "_schema" in errors_of([{"field": "name"}])
    assert "match" in errors_of({"match": "some", "rules": []})
    assert errors_of({"match": "all", "rules": [{"field": "name", "op": "eq", "value": "x", "x": 1}]})[
        "rules"
    ][0] == {"x": ["Unknown field."]}


@pytest.mark.parametrize(
    ("op", "value", "where"),
    [
        ("eq", "", "a non-empty text"),
        ("contains", "   ", "a non-empty text"),
        ("starts_with", ["a"], "a non-empty text"),
        ("eq", "x" * 501, "at most 500"),
        ("empty", "x", "take no value"),
    ],
)
def test_value_checks(op, value, where):
    assert where in errors_of(one("name", op, value))["rules"][0]["value"][0]


def test_custom_keys_are_checked_whole():
    assert field_kind("custom.industry") == "custom"
    assert field_kind("custom.Industry") is None
    assert field_kind("custom.a\n") is None
    assert field_kind("custom.") is None
    assert referenced_fields(
        {"match": "all", "rules": [{"field": "name"}, {"match": "any", "rules": [{"field": "custom.x"}]}]}
    ) == {"name", "custom.x"}


def test_service_reports_rule_errors_under_rules(session, workspace):
    with pytest.raises(ValidationError) as caught:
        service.create_view(session, workspace.id, name="Bad", rules=one("nope", "eq", "x"))
    assert "field" in caught.value.messages["rules"]["rules"][0]


# -- matching ----------------------------------------------------------------------------------


def add(session, workspace_id: int, email: str, **fields: Any) -> int:
    return service.create_contact(session, workspace_id, {"email": email, **fields}).id


def matching(session, workspace_id: int, tree: dict[str, Any]) -> set[int]:
    return set(session.scalars(SqlDirectory().matching(session, workspace_id, load_rules(tree))))


@pytest.fixture
def mailboxes(session, workspace, other_workspace) -> dict[str, int]:
    addresses = [
        "wang@qq.com",
        "Li.Na@163.COM",
        "zhao@126.com",
        "sun@sina.com",
        "buyer@vip.qq.com",  # a company domain that merely ends in qq.com
        "qq.com.fan@gmail.com",
        "noreply@acme.de",
        "Support@acme.de",
        "ticket@help.example.com",
        "info@shop.cn",
        "noreply.team@acme.de",  # a person, not the role address
        "anna@example.de",
    ]
    ids = {email.lower(): add(session, workspace.id, email) for email in addresses}
    add(session, other_workspace.id, "outsider@qq.com")
    add(session, other_workspace.id, "noreply@acme.de")
    return ids


def test_domestic_free_mailboxes_is_one_rule(session, workspace, mailboxes):
    tree = one("email_domain", "in", [d.upper() if d == "163.com" else d for d in DOMESTIC_FREE])
    expected = {mailboxes[e] for e in ("wang@qq.com", "li.na@163.com", "zhao@126.com", "sun@sina.com")}
    assert matching(session, workspace.id, tree) == expected
    assert service.count_matching(session, workspace.id, tree) == 4


def test_role_addresses_is_one_rule(session, workspace, mailboxes):
    tree = one("email_local", "in", ROLE_LOCALS)
    expected = {
        mailboxes[e]
        for e in ("noreply@acme.de", "support@acme.de", "ticket@help.example.com", "info@shop.cn")
    }
    assert matching(session, workspace.id, tree) == expected


def test_saved_view_counts_only_its_workspace(session, workspace, other_workspace, mailboxes):
    view = service.create_view(
        session, workspace.id, name="Role", rules=one("email_local", "in", ROLE_LOCALS)
    )
    assert service.view_count(session, workspace.id, view.id) == 4
    with pytest.raises(service.NotFound):
        service.view_count(session, other_workspace.id, view.id)


def test_exclusion_style_negations_keep_contacts_without_a_value(session, workspace):
    china = add(session, workspace.id, "a@x.cn", country="China")
    germany = add(session, workspace.id, "b@x.de", country="germany")
    nowhere = add(session, workspace.id, "c@x.io")
    assert matching(session, workspace.id, one("country", "ne", "GERMANY")) == {china, nowhere}
    assert matching(session, workspace.id, one("country", "not_in", ["china"])) == {germany, nowhere}
    assert matching(session, workspace.id, one("country", "not_contains", "erm")) == {china, nowhere}
    assert matching(session, workspace.id, one("country", "empty")) == {nowhere}
    assert matching(session, workspace.id, one("country", "eq", "China")) == {china}


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("contains", "50%", {"50% off"}),
        ("contains", "%", {"50% off"}),
        ("contains", "a_b", {"a_b corp"}),
        ("contains", "_", {"a_b corp"}),
        ("starts_with", "a_", {"a_b corp"}),
        ("ends_with", "%_off", set()),
        ("contains", "/", {"x/y"}),
        ("contains", "\\", {"back\\slash"}),
        ("eq", "a%", set()),
    ],
)
def test_like_wildcards_in_values_are_literal(session, workspace, op, value, expected):
    names = ["50% off", "5000 off", "a_b corp", "axb corp", "abc", "x/y", "back\\slash"]
    ids = {add(session, workspace.id, f"c{i}@x.com", company=name): name for i, name in enumerate(names)}
    found = {ids[i] for i in matching(session, workspace.id, one("company", op, value))}
    assert found == expected


def test_ascii_case_is_ignored_and_cjk_matches(session, workspace):
    acme = add(session, workspace.id, "a@x.com", company="ACME 机械有限公司")
    add(session, workspace.id, "b@x.com", company="Other")
    assert matching(session, workspace.id, one("company", "contains", "acme 机械")) == {acme}
    assert matching(session, workspace.id, one("company", "starts_with", "aCmE")) == {acme}
    assert matching(session, workspace.id, one("company", "ends_with", "有限公司")) == {acme}
    assert fold("ÄBC") == "Äbc"  # only ASCII folds, as in SQLite


def test_custom_fields(session, workspace):
    maker = add(session, workspace.id, "a@x.com", custom={"industry": "Machinery", "since": "2021-05-01"})
    shop = add(session, workspace.id, "b@x.com", custom={"industry": "retail", "since": "2023-11-30T09:00"})
    blank = add(session, workspace.id, "c@x.com", custom={"industry": "", "since": ""})
    bare = add(session, workspace.id, "d@x.com")
    assert matching(session, workspace.id, one("custom.industry", "eq", "machinery")) == {maker}
    assert matching(session, workspace.id, one("custom.industry", "ne", "machinery")) == {shop, blank, bare}
    assert matching(session, workspace.id, one("custom.industry", "empty")) == {blank, bare}
    assert matching(session, workspace.id, one("custom.industry", "in", ["RETAIL", "food"])) == {shop}
    assert matching(session, workspace.id, one("custom.since", "before", "2022-01-01")) == {maker}
    assert matching(session, workspace.id, one("custom.since", "after", "2023-11-29")) == {shop}
    assert matching(session, workspace.id, one("custom.since", "between", ["2023-11-30", "2023-11-30"])) == {
        shop
    }
    assert matching(session, workspace.id, one("custom.unknown", "not_empty")) == set()


def test_created_at_days_follow_the_workspace_time_zone(session, workspace):
    """2024-03-01 16:00 UTC is midnight of 2024-03-02 in Shanghai; one microsecond earlier is the 1st."""
    midnight = dt.datetime(2024, 3, 1, 16, 0, tzinfo=dt.UTC)
    rows = [
        {"email": "late@x.com", "created_at": midnight - dt.timedelta(microseconds=1)},
        {"email": "early@x.com", "created_at": midnight},
    ]
    for row in rows:
        local, domain = row["email"].split("@")
        row.update(workspace_id=workspace.id, email_local=local, email_domain=domain, custom={})
    session.execute(insert(Contact), rows)
    by_email = {c.email: c.id for c in session.query(Contact).filter_by(workspace_id=workspace.id)}
    late, early = by_email["late@x.com"], by_email["early@x.com"]
    assert matching(session, workspace.id, one("created_at", "before", "2024-03-02")) == {late}
    assert matching(session, workspace.id, one("created_at", "after", "2024-03-01")) == {early}
    assert matching(session, workspace.id, one("created_at", "between", ["2024-03-01", "2024-03-01"])) == {
        late
    }
    assert matching(session, workspace.id, one("created_at", "between", ["2024-03-02", "2024-03-05"])) == {
        early
    }


def test_groups_combine_all_and_any(session, workspace):
    de_maker = add(session, workspace.id, "a@x.de", country="Germany", custom={"industry": "Machinery"})
    de_shop = add(session, workspace.id, "b@x.de", country="Germany", custom={"industry": "Retail"})
    cn_maker = add(session, workspace.id, "c@qq.com", country="China", custom={"industry": "Machinery"})
    tree = {
        "match": "all",
        "rules": [
            {"field": "custom.industry", "op": "eq", "value": "machinery"},
            {
                "match": "any",
                "rules": [
                    {"field": "country", "op": "eq", "value": "germany"},
                    {"field": "email_domain", "op": "in", "value": ["qq.com"]},
                ],
            },
        ],
    }
    assert matching(session, workspace.id, tree) == {de_maker, cn_maker}
    assert matching(session, workspace.id, {"match": "any", "rules": []}) == set()
    assert matching(session, workspace.id, {"match": "all", "rules": []}) == {de_maker, de_shop, cn_maker}
