"""Property test: the SQL that ``plugin/filters.py`` compiles selects exactly the contacts that a
plain-Python reading of the rules selects, on SQLite and on PostgreSQL.

The evaluator below is written from the semantics stated in ``filters.py``'s docstring and the
product description, not from the compiler, so a mistake in either shows up as a difference:

* text comparisons ignore ASCII case only;
* a missing value is ``None`` or ``""``; ``eq``/``contains``/``starts_with``/``ends_with``/``in``
  need a value, while ``ne``/``not_contains``/``not_in`` match contacts without one;
* ``created_at`` is compared by calendar day in the workspace's time zone (Asia/Shanghai);
* custom date operators compare the first ten characters as text and need a non-empty value.

Generated text never contains cased letters outside ASCII (no "É", no full-width "Ａ"): SQLite's
``lower()`` folds ASCII only while PostgreSQL's folds every cased letter, so such letters would make
the two databases disagree with each other, not with the rules.  CJK ideographs have no case and
are used freely.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select

from plugin.directory import SqlDirectory
from plugin.filters import load_rules
from plugin.models import Contact

TZ = ZoneInfo("Asia/Shanghai")
DOMAINS = ["qq.com", "163.com", "126.com", "sina.com", "gmail.com", "example.de"]
LOCALS = ["noreply", "support", "info", "ticket", "sales", "li.wei", "a_b", "x%y"]
OWNERS = ["1", "2", "17", "u_a", "U_A"]
COUNTRIES = ["CN", "cn", "China", "中国", "DE", "Deutschland"]
INDUSTRIES = ["Software", "software", "制造业", "Retail 零售", "100% wool", "a_b"]
#: ASCII of both cases, digits, LIKE wildcards and escape characters, and case-less CJK.
TEXT_ALPHABET = "abcxyzABCXYZ019 %_/\\.-张伟王芳李北京上海公司科技"
FIRST_DAY = dt.datetime(2023, 1, 1, tzinfo=TZ)
SPAN_SECONDS = 2 * 365 * 24 * 3600

TEXT_FIELDS = ["email", "email_domain", "email_local", "name", "company", "country", "owner"]
CUSTOM_FIELDS = ["custom.industry", "custom.since", "custom.absent"]
TEXT_OPS = ["eq", "ne", "contains", "not_contains", "starts_with", "ends_with", "in", "not_in"]
PRESENCE_OPS = ["empty", "not_empty"]
DATE_OPS = ["before", "after", "between"]


# -- the independent evaluator -----------------------------------------------------------------


def fold(text: str) -> str:
    """ASCII-only lower-casing (what both databases agree on for the generated text)."""
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)


def value_of(contact: dict[str, Any], field: str) -> Any:
    if field.startswith("custom."):
        return contact["custom"].get(field[len("custom.") :])
    if field == "owner":
        return contact["owner_id"]
    if field == "email_local":
        return contact["email"].split("@")[0]
    if field == "email_domain":
        return contact["email"].split("@")[1]
    return contact[field]


def rule_matches(contact: dict[str, Any], rule: dict[str, Any]) -> bool:
    field, op, wanted = rule["field"], rule["op"], rule.get("value")
    value = value_of(contact, field)
    present = value is not None and value != ""
    if op == "empty":
        return not present
    if op == "not_empty":
        return present
    if field == "created_at":
        day = value.astimezone(TZ).date()
        if op == "before":
            return day < dt.date.fromisoformat(wanted)
        if op == "after":
            return day > dt.date.fromisoformat(wanted)
        return dt.date.fromisoformat(wanted[0]) <= day <= dt.date.fromisoformat(wanted[1])
    if op in DATE_OPS:
        if not present:
            return False
        head = value[:10]
        if op == "before":
            return head < wanted
        if op == "after":
            return head > wanted
        return wanted[0] <= head <= wanted[1]
    have = fold(value) if present else None
    if op in ("in", "not_in"):
        hit = present and have in {fold(w) for w in wanted}
        return hit if op == "in" else not hit
    checks = {
        "eq": lambda: have == fold(wanted),
        "contains": lambda: fold(wanted) in have,
        "starts_with": lambda: have.startswith(fold(wanted)),
        "ends_with": lambda: have.endswith(fold(wanted)),
    }
    negated = {"ne": "eq", "not_contains": "contains"}
    if op in negated:
        return not present or not checks[negated[op]]()
    return present and checks[op]()


def group_matches(contact: dict[str, Any], group: dict[str, Any]) -> bool:
    results = (
        group_matches(contact, item) if "match" in item else rule_matches(contact, item)
        for item in group["rules"]
    )
    return all(results) if group["match"] == "all" else any(results)


# -- generated contacts ------------------------------------------------------------------------

optional_text = st.one_of(st.none(), st.just(""), st.text(TEXT_ALPHABET, min_size=1, max_size=12))


@st.composite
def created_instants(draw) -> dt.datetime:
    """Any second of two years, often exactly a local midnight or the microsecond before it."""
    moment = FIRST_DAY + dt.timedelta(seconds=draw(st.integers(0, SPAN_SECONDS)))
    edge = draw(st.sampled_from(["any", "any", "midnight", "before_midnight"]))
    if edge != "any":
        moment = moment.replace(hour=0, minute=0, second=0)
        if edge == "before_midnight":
            moment -= dt.timedelta(microseconds=1)
    return moment.astimezone(dt.UTC)


@st.composite
def since_values(draw) -> str | None:
    if draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from([None, ""]))
    day = (FIRST_DAY + dt.timedelta(days=draw(st.integers(-400, 1100)))).date().isoformat()
    return day + draw(st.sampled_from(["", "", "T08:30:00", " 23:59"]))


@st.composite
def contacts(draw) -> dict[str, Any]:
    local = draw(st.one_of(st.sampled_from(LOCALS), st.text("abcxyz019._-", min_size=1, max_size=8)))
    custom: dict[str, str] = {}
    industry = draw(st.one_of(st.none(), st.just(""), st.sampled_from(INDUSTRIES), optional_text))
    since = draw(since_values())
    if industry is not None:
        custom["industry"] = industry
    if since is not None:
        custom["since"] = since
    return {
        "email": f"{local}@{draw(st.sampled_from(DOMAINS))}",
        "name": draw(optional_text),
        "company": draw(st.one_of(optional_text, st.sampled_from(["ACME 公司", "acme", "Acme%"]))),
        "country": draw(st.one_of(st.none(), st.just(""), st.sampled_from(COUNTRIES))),
        "owner_id": draw(st.one_of(st.none(), st.sampled_from(OWNERS))),
        "created_at": draw(created_instants()),
        "custom": custom,
    }


contact_lists = st.lists(contacts(), min_size=4, max_size=25, unique_by=lambda c: c["email"])


# -- generated rules ---------------------------------------------------------------------------


def mix_case(text: str, flips: list[bool]) -> str:
    return "".join(c.swapcase() if c.isascii() and flip else c for c, flip in zip(text, flips, strict=False))


def existing_texts(people: list[dict[str, Any]], field: str) -> list[str]:
    return sorted({v for p in people if isinstance(v := value_of(p, field), str) and v.strip()})


@st.composite
def text_values(draw, people: list[dict[str, Any]], field: str) -> str:
    """A value taken from a contact (whole or a piece, case changed) or made up."""
    known = existing_texts(people, field)
    if known and draw(st.integers(0, 3)) > 0:
        text = draw(st.sampled_from(known))
        start = draw(st.integers(0, len(text) - 1))
        end = draw(st.integers(start + 1, len(text)))
        piece = draw(st.sampled_from([text, text, text[start:end]]))
        piece = mix_case(piece, draw(st.lists(st.booleans(), min_size=len(piece), max_size=len(piece))))
        if draw(st.integers(0, 3)) == 0:  # a wildcard where the data has a letter: must not match
            at = draw(st.integers(0, len(piece) - 1))
            piece = piece[:at] + draw(st.sampled_from("%_")) + piece[at + 1 :]
        if piece.strip():
            return piece
    return draw(st.text(TEXT_ALPHABET, min_size=1, max_size=6).filter(lambda s: s.strip()))


def as_day(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


@st.composite
def day_values(draw, people: list[dict[str, Any]], field: str) -> str:
    """A day near the data: a contact's own (local) day, a day either side, or any day."""
    if field == "created_at":
        known = sorted({p["created_at"].astimezone(TZ).date() for p in people})
    else:
        known = sorted({day for v in existing_texts(people, field) if (day := as_day(v[:10]))})
    if known and draw(st.integers(0, 3)) > 0:
        day = draw(st.sampled_from(known)) + dt.timedelta(days=draw(st.sampled_from([0, 0, -1, 1])))
    else:
        day = FIRST_DAY.date() + dt.timedelta(days=draw(st.integers(-30, 760)))
    return day.isoformat()


ALL_FIELDS = [*TEXT_FIELDS, "created_at", *CUSTOM_FIELDS]


@st.composite
def rules(draw, people: list[dict[str, Any]], field: str | None = None) -> dict[str, Any]:
    field = field or draw(st.sampled_from(ALL_FIELDS))
    if field == "created_at":
        ops = DATE_OPS + PRESENCE_OPS
    elif field in TEXT_FIELDS:
        ops = TEXT_OPS + PRESENCE_OPS
    else:  # custom fields take every operator; dates weighted up for the date-like field
        ops = TEXT_OPS + PRESENCE_OPS + DATE_OPS * (3 if field == "custom.since" else 1)
    op = draw(st.sampled_from(ops))
    rule: dict[str, Any] = {"field": field, "op": op}
    if op in ("before", "after"):
        rule["value"] = draw(day_values(people, field))
    elif op == "between":
        first, last = sorted(draw(st.lists(day_values(people, field), min_size=2, max_size=2)))
        rule["value"] = [first, last]
    elif op in ("in", "not_in"):
        rule["value"] = draw(st.lists(text_values(people, field), min_size=1, max_size=4))
    elif op in TEXT_OPS:
        rule["value"] = draw(text_values(people, field))
    elif draw(st.booleans()):
        rule["value"] = None
    return rule


def groups(people: list[dict[str, Any]], depth: int = 1) -> st.SearchStrategy[dict[str, Any]]:
    """A group of rules and, above the third level, of nested groups (empty groups included)."""
    item = rules(people) if depth >= 3 else st.one_of(rules(people), rules(people), groups(people, depth + 1))
    return st.fixed_dictionaries(
        {"match": st.sampled_from(["all", "any"]), "rules": st.lists(item, min_size=0, max_size=3)}
    )


# -- the property ------------------------------------------------------------------------------


def store(session, workspace_id: int, people: list[dict[str, Any]]) -> dict[str, int]:
    """Replace the workspace's contacts by ``people`` in one bulk insert; email → id."""
    session.execute(delete(Contact).where(Contact.workspace_id == workspace_id))
    if people:
        rows = [
            {
                **{key: p[key] for key in ("email", "name", "company", "country", "owner_id", "custom")},
                "workspace_id": workspace_id,
                "email_local": p["email"].split("@")[0],
                "email_domain": p["email"].split("@")[1],
                "created_at": p["created_at"],
                "updated_at": p["created_at"],
            }
            for p in people
        ]
        session.execute(insert(Contact), rows)
    found = session.execute(select(Contact.email, Contact.id).where(Contact.workspace_id == workspace_id))
    return dict(found.all())


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_sql_matches_plain_python(session, workspace, data):
    people = data.draw(contact_lists, label="contacts")
    tree = data.draw(groups(people), label="rules")
    # One rule per field, so every field is exercised in every example, and a few more.
    # Date fields twice: their boundaries (local midnight, inclusive last day) need more tries.
    singles = [
        data.draw(rules(people, field), label=f"rule on {field}")
        for field in [*ALL_FIELDS, "created_at", "custom.since"]
    ]
    singles += data.draw(st.lists(rules(people), min_size=2, max_size=5), label="more rules")
    checked = load_rules(tree)  # the generator only makes valid trees; this proves it
    ids = store(session, workspace.id, people)

    # Rules on their own first (sharper failures, and many more rules per example), then the tree.
    for leaf in singles + leaves(tree):
        single = {"match": "all", "rules": [leaf]}
        assert_same(session, workspace.id, people, ids, single)
        event(f"op {leaf['op']}")
    expected = assert_same(session, workspace.id, people, ids, checked)
    event("tree matched " + share(expected, ids))


def leaves(group: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for item in group["rules"]:
        found += leaves(item) if "match" in item else [item]
    return found


def share(selected: set[int], ids: dict[str, int]) -> str:
    return "none" if not selected else "all" if len(selected) == len(ids) else "some"


def assert_same(session, workspace_id: int, people, ids: dict[str, int], tree: dict[str, Any]) -> set[int]:
    selected = set(session.scalars(SqlDirectory().matching(session, workspace_id, tree)))
    expected = {ids[p["email"]] for p in people if group_matches(p, tree)}
    assert selected == expected, {
        "rules": tree,
        "only SQL": sorted(e for e, i in ids.items() if i in selected - expected),
        "only Python": sorted(e for e, i in ids.items() if i in expected - selected),
    }
    if len(tree["rules"]) == 1 and "field" in tree["rules"][0]:
        event("single rule matched " + share(selected, ids))
    return expected


def test_evaluator_agrees_on_known_cases():
    """The evaluator itself, on hand-checked cases (so the property compares against truth)."""
    person = {
        "email": "noreply@QQ.com".lower(),
        "name": "Li Wei 李伟",
        "company": "",
        "country": None,
        "owner_id": "7",
        "created_at": dt.datetime(2024, 3, 1, 16, 0, tzinfo=dt.UTC),  # 2024-03-02 00:00 in Shanghai
        "custom": {"since": "2023-05-06T10:00"},
    }

    def one(field: str, op: str, value: Any = None) -> bool:
        return rule_matches(person, {"field": field, "op": op, "value": value})

    assert one("name", "contains", "LI WEI")
    assert one("company", "ne", "x")
    assert one("country", "not_in", ["cn"])
    assert one("company", "empty")
    assert not one("country", "not_empty")
    assert not one("company", "contains", "a")
    assert one("created_at", "after", "2024-03-01")
    assert not one("created_at", "before", "2024-03-02")
    assert one("created_at", "between", ["2024-03-02", "2024-03-02"])
    assert one("custom.since", "between", ["2023-05-06", "2023-05-06"])
    assert not one("custom.industry", "before", "2099-01-01")
    assert one("custom.industry", "not_contains", "x")
    assert not one("custom.industry", "in", ["x"])
