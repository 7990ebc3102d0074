"""Every message of the plugin has a Chinese translation, and the compiled catalogue matches."""

from __future__ import annotations

import gettext
from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

import plugin

ROOT = Path(plugin.__file__).parent
PO = ROOT / "translations" / "zh_Hans_CN" / "LC_MESSAGES" / "marketing.po"
MO = PO.with_suffix(".mo")
KEYWORDS = {"mkt_": None, "_": None, "lazy_gettext": None, "mkt_ngettext": (1, 2), "ngettext": (1, 2)}
METHODS = [("**/templates/**.html", "jinja2"), ("**.py", "python")]


def _source_messages() -> set[str]:
    found = set()
    for _file, _line, message, _comments, _context in extract_from_dir(str(ROOT), METHODS, keywords=KEYWORDS):
        found.add(message[0] if isinstance(message, tuple) else message)
    return found


def test_no_translation_call_holds_an_f_string(capsys):
    """Babel skips (and only warns about) an f-string inside ``_()``: as the message id it would
    never be translated, and as a placeholder value it hides a real one among the warnings."""
    capsys.readouterr()
    _source_messages()
    warned = {
        Path(line.split(":", 1)[0]).relative_to(ROOT).as_posix()
        for line in capsys.readouterr().err.splitlines()
        if "Skipping f-string" in line
    }
    assert not warned, f"f-strings inside translation calls: {sorted(warned)}"


def test_every_message_is_translated_to_chinese():
    with PO.open("rb") as handle:
        catalog = read_po(handle)
    translated = {m.id if isinstance(m.id, str) else m.id[0]: m.string for m in catalog if m.id}
    missing = sorted(m for m in _source_messages() if not translated.get(m))
    assert not missing, (
        f"{len(missing)} messages lack a Chinese translation (run make translations): {missing[:20]}"
    )


def test_compiled_catalogue_is_current():
    with PO.open("rb") as handle:
        catalog = read_po(handle)
    with MO.open("rb") as handle:
        compiled = gettext.GNUTranslations(handle)
    stale = [
        m.id
        for m in catalog
        if m.id and isinstance(m.id, str) and m.string and compiled.gettext(m.id) != m.string
    ]
    assert not stale, f"marketing.mo is older than marketing.po (run make translations): {stale[:10]}"


def test_pages_speak_chinese_by_default_and_english_on_request(login, workspace):
    browser = login("marketer")
    chinese = browser.get("/marketing/", headers={"Accept-Language": "zh-CN"}).get_data(as_text=True)
    assert "联系人" in chinese
    browser.post("/marketing/preferences", data={"locale": "en", "next": "/marketing/"})
    english = browser.get("/marketing/").get_data(as_text=True)
    assert "Contacts" in english
    assert "联系人" not in english


def test_a_label_takes_the_colon_of_its_language(app):
    from flask_babel import force_locale

    from plugin.i18n import label

    with app.test_request_context():
        with force_locale("en"):
            assert label("Status") == "Status: "
        with force_locale("zh_Hans_CN"):
            assert label("状态") == "状态："


def test_times_read_the_same_everywhere_in_the_users_zone_and_language(app):
    """One form on every page: the medium date and the time to the minute, in the user's zone
    (Asia/Shanghai by default), stored as UTC."""
    import datetime as dt

    from flask_babel import force_locale

    from plugin.i18n import format_datetime

    moment = dt.datetime(2026, 12, 7, 20, 44, 26, tzinfo=dt.UTC)  # 04:44 the next day in Shanghai
    with app.test_request_context():
        with force_locale("en"):
            assert format_datetime(moment) == "Dec 8, 2026, 4:44\u202fAM"
            assert format_datetime(moment.replace(tzinfo=None)) == "Dec 8, 2026, 4:44\u202fAM"
        with force_locale("zh_Hans_CN"):
            assert format_datetime(moment) == "2026年12月8日 04:44"
        assert format_datetime(None) == ""


def test_times_follow_the_zone_the_user_picked(app):
    """A zone picked in the plugin (stored in the session) moves every time and day with it."""
    import datetime as dt

    from flask import session
    from flask_babel import force_locale

    from plugin.i18n import SESSION_TZ_KEY, chart_day, chart_hour, format_datetime, format_day

    moment = dt.datetime(2026, 12, 7, 20, 44, 26, tzinfo=dt.UTC)
    with app.test_request_context(), force_locale("en"):
        assert format_day(moment) == "Dec 8, 2026"  # Shanghai's day, not UTC's
        assert chart_hour(moment) == "Dec 8 04:44"
        session[SESSION_TZ_KEY] = "America/New_York"
        assert format_datetime(moment) == "Dec 7, 2026, 3:44\u202fPM"
        assert format_day(moment) == "Dec 7, 2026"
        assert chart_day(moment) == "Dec 7"
        assert format_day(dt.date(2026, 12, 8)) == "Dec 8, 2026"  # a day stays the day it is


def test_money_is_never_shown_as_more_than_it_is(app):
    from decimal import Decimal

    from flask_babel import force_locale

    from plugin.i18n import format_money

    with app.test_request_context():
        with force_locale("en"):
            assert format_money(Decimal("12345.6789")) == "¥12,345.678"
            assert format_money(99.9995) == "¥99.999"
            assert format_money(100) == "¥100.00"
            assert format_money(Decimal("-3.4561")) == "-¥3.457"  # a debt is not made smaller
            assert format_money(Decimal("0.0004")) == "¥0.00"
            assert format_money(None) == "—"
        with force_locale("zh_Hans_CN"):
            assert format_money(Decimal("1234.5")) == "¥1,234.50"
