"""Translations (own Babel domain), the user's language and time zone, and date formatting.

The plugin ships its catalogues under its own domain ``marketing`` so it never collides with the
host's messages.  If the host already runs Flask-Babel its locale selector decides; otherwise the
plugin installs one that honours the language a user picked in the plugin.
"""

from __future__ import annotations

import datetime as dt
import decimal
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_skeleton, format_time, get_datetime_format, get_timezone_location
from babel.numbers import format_decimal
from flask import current_app, has_request_context, request, session
from flask_babel import Babel, Domain, get_locale

TRANSLATIONS_DIR = Path(__file__).parent / "translations"

domain = Domain(translation_directories=[str(TRANSLATIONS_DIR)], domain="marketing")
gettext = domain.gettext
ngettext = domain.ngettext
lazy_gettext = domain.lazy_gettext
_ = gettext
_l = lazy_gettext

SESSION_LOCALE_KEY = "marketing_locale"
SESSION_TZ_KEY = "marketing_timezone"


def _settings():  # local import keeps this module free of the extension at import time
    return current_app.extensions["marketing"].settings


def preferred_locale() -> str:
    """The language for this request: the user's pick, then the browser's, then the default."""
    locales = _settings().locales
    if has_request_context():
        picked = session.get(SESSION_LOCALE_KEY)
        if picked in locales:
            return picked
        best = request.accept_languages.best_match([loc.replace("_", "-") for loc in locales] + list(locales))
        if best:
            return best.replace("-", "_")
    return locales[0]


def preferred_timezone() -> str:
    name = session.get(SESSION_TZ_KEY) if has_request_context() else None
    return name or _settings().default_timezone


def shown_timezone() -> str:
    """The zone pages are really shown in: the user's pick, or the default when that is unusable."""
    return user_timezone().key


def user_timezone() -> ZoneInfo:
    try:
        return ZoneInfo(preferred_timezone())
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(_settings().default_timezone)


def install_babel(app) -> None:
    """Install Flask-Babel with the plugin's selectors unless the host already has one."""
    if "babel" not in app.extensions:
        Babel(app, locale_selector=preferred_locale, timezone_selector=preferred_timezone)


def label(text: str) -> str:
    """``text`` as the label of a value that follows: "Status: " in English, "状态：" in Chinese
    (a full-width colon, no space)."""
    return f"{text}：" if current_locale().language == "zh" else f"{text}: "


def current_locale() -> Locale:
    locale = get_locale()
    if locale is not None:
        return locale
    try:
        return Locale.parse(preferred_locale())
    except (ValueError, UnknownLocaleError):
        return Locale.parse("en")


def format_datetime(value: dt.datetime | None) -> str:
    """A UTC timestamp shown in the user's time zone and language, in the one form every page
    uses: the medium date and the time to the minute ("Dec 8, 2026, 4:44 AM", "2026年12月8日
    04:44").  Why one form: pages mixed Babel's short form (a numeric date, "12/8/26", read
    differently across regions) and its medium one (with seconds nobody needs), so the same
    moment looked different in the account bar and on the page below it."""
    if value is None:
        return ""
    local = _users_time(value)
    locale = current_locale()
    date = format_date(local, "medium", locale=locale)
    time = format_time(local, "short", locale=locale)
    return get_datetime_format("medium", locale=locale).replace("'", "").format(time, date)


def _users_day(value: dt.date) -> dt.date:
    """A calendar day as is; a moment (stored UTC, naive meaning UTC) as the user's day, so a
    timestamp passed by mistake never shows the day of another zone."""
    if not isinstance(value, dt.datetime):
        return value
    return _users_time(value).date()


def _users_time(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(user_timezone())


def format_day(value: dt.date | None) -> str:
    """A calendar day in the same words as :func:`format_datetime`'s date: "Dec 8, 2026",
    "2026年12月8日"."""
    return "" if value is None else format_date(_users_day(value), "medium", locale=current_locale())


def chart_day(value: dt.date) -> str:
    """A day on a chart's axis, short but in the user's language: "Dec 8", "12月8日" (the page
    names the year: the account page's range, the campaign's dates)."""
    return format_skeleton("MMMd", _users_day(value), locale=current_locale())


def chart_hour(value: dt.datetime) -> str:
    """An hour on a chart's axis, in the user's zone: "Dec 8 05:00", "12月8日 05:00" (24-hour
    on every axis: short, and the same width for every hour)."""
    local = _users_time(value)
    return f"{chart_day(local.date())} {format_time(local, 'HH:mm', locale=current_locale())}"


def format_money(value: decimal.Decimal | float | int | None) -> str:
    """An amount in yuan: two decimals, a third only when it is not zero, grouped as the user's
    language groups digits ("¥12,345.678", "-¥3.457").  SendCloud prices mail in thousandths
    of a yuan, so an amount is cut to those towards less money, never rounded up: a balance of
    99.9995 is not "¥100.00", money the account does not have, and a debt is not made smaller."""
    if value is None:
        return "—"
    amount = decimal.Decimal(str(value)).quantize(decimal.Decimal("0.001"), rounding=decimal.ROUND_FLOOR)
    sign = "-" if amount < 0 else ""
    return f"{sign}¥{format_decimal(abs(amount), '#,##0.00#', locale=current_locale())}"


#: Zones the header's picker offers (the user's own, and the browser's, are added when missing).
COMMON_TIMEZONES = (
    "Asia/Shanghai",
    "Asia/Hong_Kong",
    "Asia/Taipei",
    "Asia/Singapore",
    "Asia/Tokyo",
    "Asia/Seoul",
    "Asia/Kolkata",
    "Asia/Dubai",
    "Europe/London",
    "Europe/Paris",
    "Europe/Berlin",
    "Europe/Moscow",
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Australia/Sydney",
    "UTC",
)


def timezone_label(zone: str) -> str:
    """ "UTC+08:00 Shanghai", "UTC+08:00 上海": the offset now, then the zone's city in the user's
    language (short enough for the header)."""
    now = dt.datetime.now(ZoneInfo(zone))
    offset = now.strftime("%z")
    offset_text = f"UTC{offset[:3]}:{offset[3:]}" if offset not in ("+0000", "") else "UTC"
    if zone == "UTC":
        return offset_text
    try:
        city = get_timezone_location(zone, locale=current_locale(), return_city=True)
    except LookupError:  # a zone the tz database has and Babel's data lacks ("Factory")
        city = zone
    return f"{offset_text} {city}"


def timezone_choices() -> list[tuple[str, str]]:
    """(zone, label) for the header's picker, west to east, the user's zone among them."""
    zones = set(COMMON_TIMEZONES) | {shown_timezone()}
    now = dt.datetime.now(dt.UTC)
    valid = []
    for zone in zones:
        try:
            valid.append((now.astimezone(ZoneInfo(zone)).utcoffset(), zone))
        except (ZoneInfoNotFoundError, ValueError):
            continue
    return [(zone, timezone_label(zone)) for _offset, zone in sorted(valid)]


def format_number(value: float | int | None) -> str:
    if value is None:
        return "—"
    return format_decimal(value, locale=current_locale())


#: How each language names itself in the switcher (Babel's names are long: "中文 (中国, 简体)").
LANGUAGE_NAMES = {"zh_CN": "简体中文", "zh_TW": "繁體中文", "en": "English"}


def available_locales() -> list[tuple[str, str]]:
    """(code, name in its own language) for the language switcher."""
    result = []
    for code in _settings().locales:
        name = LANGUAGE_NAMES.get(code)
        if name is None:
            try:
                name = Locale.parse(code).get_display_name(code) or code
            except (ValueError, UnknownLocaleError):
                name = code
        result.append((code, name))
    return result
