"""Template variables, compiled content and the per-recipient values the runner sends.

Why it is shaped this way:

* **Compile once, substitute per recipient.**  A campaign's content is compiled once
  (:func:`compile_content`): CSS inlined, footer added, plain text generated, and every variable
  replaced by a SendCloud-style ``%placeholder%``.  Per recipient only a small dict of values is
  built (:func:`recipient_values`) from a plan computed at compile time, which costs microseconds
  and is exactly what SendCloud's ``xsmtpapi.sub`` and the SMTP provider consume.
* **Sandboxed by construction.**  Templates are never evaluated: a variable is a name looked up
  in the contact, its custom fields or a fixed set of built-ins, nothing else.  Values are
  HTML-escaped where they land in HTML, so a contact named ``<script>`` stays text.
* **The notations users know.**  The canonical notation is ``{{name}}`` / ``{{name|fallback}}``;
  also accepted: single braces (``{name}``, ``{name|fallback}``), the upper-case names of Chinese
  EDM tools (``{FULLNAME}``, ``{RECIPIENTS}``, ``{DATE}``, ``{RANDOM_NUMBER}``, ``{VAR1}`` ...
  ``{VARn}`` = custom field ``var1`` ... ``varn``), Chinese names (``{姓名}``, ``{邮箱}`` ...) and
  Jinja's ``{{ name | default("x") }}``.  Names are case-insensitive.  Unknown names are
  reported when a template is saved (:func:`check_variables`), never at send time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html as html_lib
import random
import re
from collections.abc import Iterable, Mapping
from html.parser import HTMLParser
from typing import Any, Literal

import css_inline
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import InvalidInput
from ..i18n import _
from ..models import CustomField, Sender, Template

# --------------------------------------------------------------------------- vocabulary

#: Contact fields a template may use.  ``email`` is the recipient's address.
CONTACT_FIELDS = frozenset({"email", "name", "company", "country"})
#: Values the plugin computes: today's date, a 10-digit random number, the unsubscribe link.
BUILTINS = frozenset({"date", "random_number", "unsubscribe_url"})
#: The placeholder the runner fills with the recipient's signed unsubscribe link.
UNSUBSCRIBE = "unsubscribe_url"
CUSTOM_PREFIX = "custom."

#: Other spellings → canonical names (compared lower-cased).
ALIASES: dict[str, str] = {
    "fullname": "name",
    "full_name": "name",
    "username": "name",
    "recipient_name": "name",
    "recipient": "email",
    "recipients": "email",
    "recipient_email": "email",
    "eaddr": "email",
    "email_address": "email",
    "random": "random_number",
    "today": "date",
    "unsubscribe": UNSUBSCRIBE,
    "unsubscribe_link": UNSUBSCRIBE,
    "姓名": "name",
    "名字": "name",
    "收件人": "email",
    "邮箱": "email",
    "公司": "company",
    "国家": "country",
    "日期": "date",
    "随机数": "random_number",
    "退订链接": UNSUBSCRIBE,
}

Field = Literal["subject", "html", "text"]

_NAME = r"[^\W\d][\w.]*"
#: ``{{ name | fallback }}`` or ``{name|fallback}``; single braces never touch a double one.
_VARIABLE = re.compile(
    r"\{\{\s*(?P<n2>" + _NAME + r")\s*(?:\|\s*(?P<f2>[^{}]*?)\s*)?\}\}"
    r"|(?<!\{)\{\s*(?P<n1>" + _NAME + r")\s*(?:\|\s*(?P<f1>[^{}\n]*?)\s*)?\}(?!\})"
)
#: Parts of an HTML document whose braces are code, not variables.
_CODE_BLOCKS = re.compile(r"(<style\b.*?</style\s*>|<script\b.*?</script\s*>)", re.I | re.S)
_DEFAULT_CALL = re.compile(r"default\s*\(\s*(?P<q>['\"])(?P<v>.*)(?P=q)\s*\)\s*$", re.S)
_PLACEHOLDER = re.compile(r"%([A-Za-z0-9_]+)%")
_BODY_END = re.compile(r"</body\s*>", re.I)
_SPACES = re.compile(r"\s+")


def canonical_name(name: str) -> str:
    """The canonical key of a variable name as written (``FULLNAME`` → ``name``)."""
    key = name.strip().lower()
    if key.startswith("contact."):
        key = key[len("contact.") :]
    if key.startswith(CUSTOM_PREFIX):
        return CUSTOM_PREFIX + key[len(CUSTOM_PREFIX) :]
    return ALIASES.get(key, key)


def _fallback_text(raw: str | None) -> str:
    """The fallback as written: ``friend``, ``"friend"`` or ``default("friend")``."""
    if raw is None:
        return ""
    value = raw.strip()
    match = _DEFAULT_CALL.match(value)
    if match:
        return match.group("v")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class VariableUse:
    """One variable written in a template field."""

    token: str  # the text as written, e.g. ``{{ name | there }}``
    name: str  # the name as written, e.g. ``FULLNAME``
    key: str  # canonical key, e.g. ``name`` or ``custom.var1``
    fallback: str | None
    field: Field
    position: int


def _scan(text: str, field: Field, *, skip_code: bool) -> list[VariableUse]:
    uses: list[VariableUse] = []
    offset = 0
    parts = _CODE_BLOCKS.split(text) if skip_code else [text]
    for index, part in enumerate(parts):
        if index % 2 == 0:
            for m in _VARIABLE.finditer(part):
                name = m.group("n2") or m.group("n1")
                raw_fallback = m.group("f2") if m.group("n2") else m.group("f1")
                uses.append(
                    VariableUse(
                        token=m.group(0),
                        name=name,
                        key=canonical_name(name),
                        fallback=None if raw_fallback is None else _fallback_text(raw_fallback),
                        field=field,
                        position=offset + m.start(),
                    )
                )
        offset += len(part)
    return uses


def find_variables(subject: str, html: str, text: str = "") -> list[VariableUse]:
    """Every variable used in the subject, the HTML (outside ``<style>``/``<script>``) and text."""
    return (
        _scan(subject or "", "subject", skip_code=False)
        + _scan(html or "", "html", skip_code=True)
        + _scan(text or "", "text", skip_code=False)
    )


def unknown_variables(uses: Iterable[VariableUse], known: set[str]) -> dict[str, list[str]]:
    """Unknown names per field, each once, as the user wrote them (``{"html": ["FOO"]}``)."""
    result: dict[str, list[str]] = {}
    for use in uses:
        if use.key in known:
            continue
        names = result.setdefault(use.field, [])
        if use.name not in names:
            names.append(use.name)
    return result


class UnknownVariables(InvalidInput):
    """Some variables name no field; ``by_field`` tells which ones are in which field."""

    def __init__(self, message: str, *, field: str, by_field: dict[str, list[str]]) -> None:
        super().__init__(message, field=field)
        self.by_field = by_field


def written_as(uses: Iterable[VariableUse]) -> dict[str, str]:
    """Each variable name as the user first wrote it (``{VOUCHER}``, ``{{ name | there }}``)."""
    written: dict[str, str] = {}
    for use in uses:
        written.setdefault(use.name, " ".join(use.token.split()))
    return written


def unknown_message(names: Iterable[str], written: Mapping[str, str] | None = None) -> str:
    """The message naming unknown variables, each as the user wrote it when ``written`` says
    (a ``{VOUCHER}`` quoted back as ``{{VOUCHER}}`` looked like something else)."""
    written = written or {}
    shown = ", ".join(written.get(n) or "{{%s}}" % n for n in names)  # noqa: UP031 - literal braces
    return _(
        "Unknown variable(s): %(names)s. Use a contact field, a custom field or a built-in "
        "(see “Variables”), or remove the braces.",
        names=shown,
    )


def check_variables(uses: Iterable[VariableUse], known_fields: set[str]) -> None:
    """Raise :class:`UnknownVariables` (an ``InvalidInput``) naming every unknown variable.

    ``field`` is the first field with an unknown name (subject before html before text), so a
    form shows the message beside it; ``by_field`` has the names for every field.
    """
    uses = list(uses)
    by_field = unknown_variables(uses, known_fields)
    if not by_field:
        return
    first = next(f for f in ("subject", "html", "text") if f in by_field)
    every = [n for f in ("subject", "html", "text") for n in by_field.get(f, [])]
    raise UnknownVariables(
        unknown_message(dict.fromkeys(every), written_as(uses)), field=first, by_field=by_field
    )


def custom_field_keys(session: Session, workspace_id: int) -> list[str]:
    return list(
        session.scalars(
            select(CustomField.key).where(CustomField.workspace_id == workspace_id).order_by(CustomField.key)
        )
    )


def known_fields(session: Session, workspace_id: int) -> set[str]:
    """Canonical keys a template of this workspace may use: contact, custom and built-in ones."""
    keys = set(CONTACT_FIELDS) | set(BUILTINS)
    for key in custom_field_keys(session, workspace_id):
        keys.add(key.lower())
        keys.add(CUSTOM_PREFIX + key.lower())
    return keys


# --------------------------------------------------------------------------- compiled content

Source = Literal["contact", "email", "custom", "date", "random_number", "unsubscribe"]


@dataclasses.dataclass(frozen=True, slots=True)
class Binding:
    """Where a placeholder's value comes from, its fallback, and whether it lands in HTML."""

    source: Source
    key: str
    fallback: str = ""
    html: bool = False


def binding_for(key: str, fallback: str | None, *, html: bool) -> Binding:
    """The binding of a canonical key (custom fields are whatever is not built in)."""
    fb = fallback or ""
    if key.startswith(CUSTOM_PREFIX):
        return Binding("custom", key[len(CUSTOM_PREFIX) :], fb, html)
    if key == "email":
        return Binding("email", "email", fb, html)
    if key in CONTACT_FIELDS:
        return Binding("contact", key, fb, html)
    if key == UNSUBSCRIBE:
        return Binding("unsubscribe", UNSUBSCRIBE)
    if key in ("date", "random_number"):
        return Binding(key, key, fb, html)  # type: ignore[arg-type]
    return Binding("custom", key, fb, html)


@dataclasses.dataclass(frozen=True)
class CompiledContent:
    """A template ready to send: ``%placeholder%`` markers plus where each value comes from."""

    subject: str
    html: str
    text: str
    placeholders: Mapping[str, Binding]
    size_bytes: int
    #: Whether open/click tracking was asked for (link rewriting belongs to ``tracking``).
    tracking: bool = False
    #: The distinct values a recipient needs, ``(source, key, fallback)``, each worked out once
    #: per recipient however many placeholders use it (the HTML and text parts repeat most).
    _fields: tuple[tuple[str, str, str], ...] = dataclasses.field(default=(), repr=False, compare=False)
    #: Every placeholder as ``(name, index into _fields, HTML-escaped)``.
    _outputs: tuple[tuple[str, int, bool], ...] = dataclasses.field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        fields: dict[tuple[str, str, str], int] = {}
        outputs = []
        for name, b in self.placeholders.items():
            field = (b.source, b.key, b.fallback)
            outputs.append((name, fields.setdefault(field, len(fields)), b.html))
        object.__setattr__(self, "_fields", tuple(fields))
        object.__setattr__(self, "_outputs", tuple(outputs))


class _Placeholders:
    """Assigns one placeholder name per distinct binding (field, fallback, HTML or not)."""

    def __init__(self) -> None:
        self.by_binding: dict[Binding, str] = {}
        self.bindings: dict[str, Binding] = {}

    def name_for(self, binding: Binding) -> str:
        existing = self.by_binding.get(binding)
        if existing is not None:
            return existing
        if binding.source == "unsubscribe":
            name = UNSUBSCRIBE
        else:
            base = re.sub(r"[^A-Za-z0-9_]", "_", binding.key)
            base = f"cf_{base}" if binding.source == "custom" else base
            if binding.html:
                base += "_h"
            name, n = (f"{base}_f1", 1) if binding.fallback else (base, 0)
            while name in self.bindings:
                n += 1
                name = f"{base}_f{n}"
        self.by_binding[binding] = name
        self.bindings[name] = binding
        return name

    def substitute(self, text: str, *, html: bool, skip_code: bool) -> str:
        """Replace every variable in ``text`` by its ``%placeholder%``."""

        def replace(m: re.Match[str]) -> str:
            name = m.group("n2") or m.group("n1")
            raw = m.group("f2") if m.group("n2") else m.group("f1")
            fallback = _fallback_text(raw) if raw is not None else ""
            if html:
                fallback = html_lib.unescape(fallback)  # stored as text, escaped at render
            return "%" + self.name_for(binding_for(canonical_name(name), fallback, html=html)) + "%"

        if not skip_code:
            return _VARIABLE.sub(replace, text)
        parts = _CODE_BLOCKS.split(text)
        return "".join(p if i % 2 else _VARIABLE.sub(replace, p) for i, p in enumerate(parts))


_INLINER = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)


def inline_css(html: str) -> str:
    """Move ``<style>`` rules into ``style`` attributes (mail clients drop ``<style>``).

    Remote stylesheets are never fetched (a template must not make the server call out);
    ``@media`` rules stay in a ``<style>`` for the clients that honour them.  HTML that cannot be
    parsed is kept as written.
    """
    if "<style" not in html.lower():
        return html
    try:
        return _INLINER.inline(html)
    except (css_inline.InlineError, ValueError):
        return html


def text_to_html(text: str) -> str:
    """A plain-text template as simple HTML: paragraphs on blank lines, line breaks kept."""
    blocks = re.split(r"\n\s*\n", text.replace("\r\n", "\n").strip())
    paragraphs = [html_lib.escape(b, quote=False).replace("\n", "<br>\n") for b in blocks if b.strip()]
    return "\n".join(f"<p>{p}</p>" for p in paragraphs)


class _TextExtractor(HTMLParser):
    """HTML → readable plain text: blocks on their own lines, links as ``text (url)``."""

    BLOCKS = frozenset(
        {
            *("address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "fieldset"),
            *("figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header"),
            *("hr", "main", "nav", "ol", "p", "pre", "section", "table", "tbody", "thead"),
            *("tfoot", "tr", "ul"),
        }
    )
    SKIP = frozenset({"head", "style", "script", "title", "noscript", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.links: list[tuple[str, int]] = []
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skip += 1
            return
        if tag == "br":
            self.out.append("\n")
        elif tag == "li":
            self.out.append("\n- ")
        elif tag == "hr":
            self.out.append("\n----------\n")
        elif tag in self.BLOCKS:
            self.out.append("\n\n" if tag in {"p", "h1", "h2", "h3", "h4", "h5", "h6", "table"} else "\n")
        elif tag in {"td", "th"}:
            self.out.append(" ")
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt and alt.strip():
                self.out.append(f"[{alt.strip()}]")
        if tag == "pre":
            self.pre += 1
        if tag == "a":
            self.links.append((dict(attrs).get("href") or "", len(self.out)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag in self.SKIP:
            self.skip -= 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
            return
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag == "a" and self.links:
            href, start = self.links.pop()
            label = _SPACES.sub(" ", "".join(self.out[start:])).strip()
            href = href.strip()
            if href and not href.startswith(("#", "javascript:")):
                shown = href[len("mailto:") :] if href.startswith("mailto:") else href
                if shown != label:
                    self.out.append(f" ({shown})" if label else shown)
        elif tag in self.BLOCKS:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        self.out.append(data if self.pre else _SPACES.sub(" ", data))

    def text(self) -> str:
        lines = [line.strip() for line in "".join(self.out).split("\n")]
        result: list[str] = []
        for line in lines:
            if not line and (not result or not result[-1]):
                continue
            result.append(line)
        return "\n".join(result).strip() + "\n"


def html_to_text(html: str) -> str:
    """The plain-text part of a mail from its HTML.

    Our own small converter rather than html2text: that package is GPL-licensed and outputs
    Markdown, while a mail's text part wants plain lines and visible link targets.
    """
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return parser.text()


def _footer_html(company: str, address: str, *, unsubscribe: bool) -> str:
    lines = []
    ident = " · ".join(
        html_lib.escape(part) for part in (company.strip(), _SPACES.sub(" ", address).strip()) if part
    )
    if ident:
        lines.append(f'<p style="margin:0">{ident}</p>')
    if unsubscribe:
        # Mail content, not UI: both languages, since recipients of one workspace read either.
        lines.append(
            f'<p style="margin:4px 0 0"><a href="%{UNSUBSCRIBE}%" style="color:#888888">'
            "Unsubscribe / 退订</a></p>"
        )
    if not lines:
        return ""
    return (
        '\n<div class="mkt-footer" style="margin:24px 0 0;padding:12px 0 0;border-top:1px solid #e5e5e5;'
        "font-family:Arial,Helvetica,sans-serif;font-size:12px;line-height:1.5;color:#888888;"
        f'text-align:center">{"".join(lines)}</div>\n'
    )


def _footer_text(company: str, address: str, *, unsubscribe: bool) -> str:
    lines = [part for part in (company.strip(), _SPACES.sub(" ", address).strip()) if part]
    if unsubscribe:
        lines.append(f"Unsubscribe / 退订: %{UNSUBSCRIBE}%")
    return ("\n\n-- \n" + "\n".join(lines) + "\n") if lines else ""


def _insert_footer(html: str, footer: str) -> str:
    if not footer:
        return html
    ends = list(_BODY_END.finditer(html))
    if not ends:
        return html + footer
    at = ends[-1].start()
    return html[:at] + footer + html[at:]


def _mentions(haystack: str, needle: str) -> bool:
    needle = _SPACES.sub(" ", needle).strip().casefold()
    return bool(needle) and needle in _SPACES.sub(" ", html_lib.unescape(haystack)).casefold()


def has_unsubscribe_link(html: str) -> bool:
    """Whether the HTML already links to the recipient's unsubscribe URL (any notation)."""
    if f"%{UNSUBSCRIBE}%" in html:
        return True
    return any(use.key == UNSUBSCRIBE for use in _scan(html, "html", skip_code=True))


def compile_content(
    template: Template,
    *,
    sender: Sender | None,
    company_name: str,
    postal_address: str,
    tracking: bool,
    unsubscribe: bool = True,
) -> CompiledContent:
    """Compile a template once for a campaign (or a test send / preview).

    CSS is inlined, the footer gets the company name and postal address (from the arguments, else
    from the sender; not repeated when the HTML already shows them) and, when ``unsubscribe`` and
    the HTML has no unsubscribe link of its own, a link to ``%unsubscribe_url%``.  The plain
    text is the template's own (with the same footer) or generated from the HTML.
    """
    company = company_name or (sender.company_name if sender is not None else "") or ""
    address = postal_address or (sender.postal_address if sender is not None else "") or ""
    source_html = template.html or ""
    if not source_html.strip() and (template.text or "").strip():
        source_html = text_to_html(template.text or "")
    source_html = inline_css(source_html)
    add_unsubscribe = unsubscribe and not has_unsubscribe_link(source_html)
    shown_company = "" if _mentions(source_html, company) else company
    shown_address = "" if _mentions(source_html, address) else address
    source_html = _insert_footer(
        source_html, _footer_html(shown_company, shown_address, unsubscribe=add_unsubscribe)
    )
    table = _Placeholders()
    out_html = table.substitute(source_html, html=True, skip_code=True)
    own_text = (template.text or "").strip()
    if own_text:
        text_unsub = unsubscribe and not any(
            u.key == UNSUBSCRIBE for u in _scan(own_text, "text", skip_code=False)
        )
        text_source = (
            own_text
            + "\n"
            + _footer_text(
                "" if _mentions(own_text, company) else company,
                "" if _mentions(own_text, address) else address,
                unsubscribe=text_unsub,
            )
        )
        out_text = table.substitute(text_source, html=False, skip_code=False)
    else:
        out_text = html_to_text(table.substitute(source_html, html=False, skip_code=True))
    subject = _SPACES.sub(" ", template.subject or "").strip()
    out_subject = table.substitute(subject, html=False, skip_code=False)
    if f"%{UNSUBSCRIBE}%" in out_html or f"%{UNSUBSCRIBE}%" in out_text:
        table.name_for(binding_for(UNSUBSCRIBE, None, html=False))  # our footer's link, or written as-is
    return CompiledContent(
        subject=out_subject,
        html=out_html,
        text=out_text,
        placeholders=dict(table.bindings),
        size_bytes=len(out_html.encode("utf-8")),
        tracking=tracking,
    )


# --------------------------------------------------------------------------- link tracking

#: Per-recipient values the runner adds when a campaign tracks opens and clicks (the tokens of
#: ``plugin.tracking``); they are not template variables, so they are not in ``placeholders``.
OPEN_PLACEHOLDER = "mkt_open"
CLICK_PLACEHOLDER = "mkt_click"
_HREF = re.compile(r"(<a\b[^>]*?\bhref\s*=\s*)([\"'])(.*?)\2", re.I | re.S)


def _trackable(href: str) -> str | None:
    """The URL a link points to when it can be tracked: absolute http(s), the same for everyone.

    Links with a ``%placeholder%`` (the unsubscribe link, per-recipient URLs) stay as written:
    the stored target must be one URL for the whole campaign.
    """
    url = html_lib.unescape(href).strip()
    if _PLACEHOLDER.search(url) or not re.match(r"https?://[^\s/]+", url, re.I):
        return None
    return url


def tracked_urls(content: CompiledContent) -> list[str]:
    """The distinct trackable link targets of the HTML, in order of first appearance."""
    parts = _CODE_BLOCKS.split(content.html)
    seen: dict[str, None] = {}
    for index, part in enumerate(parts):
        if index % 2:
            continue
        for m in _HREF.finditer(part):
            url = _trackable(m.group(3))
            if url is not None:
                seen.setdefault(url, None)
    return list(seen)


def rewrite_links(
    content: CompiledContent, link_ids: Mapping[str, int], *, click_url: Any, open_url: str | None
) -> CompiledContent:
    """The content with tracked links and an open pixel (compiled once per campaign content).

    ``link_ids`` maps each URL of :func:`tracked_urls` to its ``TrackedLink`` id;
    ``click_url(link_id)`` gives the redirect URL (with ``%mkt_click%`` for the recipient's
    token) and ``open_url`` the pixel URL (with ``%mkt_open%``), or ``None`` for no pixel.
    The plain-text part keeps the original links (a reader copies them by hand).
    """

    def replace(m: re.Match[str]) -> str:
        url = _trackable(m.group(3))
        link_id = link_ids.get(url) if url is not None else None
        if link_id is None:
            return m.group(0)
        return f"{m.group(1)}{m.group(2)}{click_url(link_id)}{m.group(2)}"

    parts = _CODE_BLOCKS.split(content.html)
    html = "".join(p if i % 2 else _HREF.sub(replace, p) for i, p in enumerate(parts))
    if open_url:
        pixel = (
            f'<img src="{open_url}" width="1" height="1" alt="" '
            'style="display:block;width:1px;height:1px;border:0;margin:0;padding:0">'
        )
        html = _insert_footer(html, pixel)
    return dataclasses.replace(content, html=html, size_bytes=len(html.encode("utf-8")))


# --------------------------------------------------------------------------- per recipient

_RNG = random.Random()
_HTML_SPECIAL = re.compile("[&<>\"']")


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def recipient_values(
    content: CompiledContent,
    contact: Any | None,
    *,
    email: str,
    unsubscribe_url: str,
    now: dt.datetime,
    rng: random.Random | None = None,
) -> dict[str, str]:
    """Values for every placeholder of ``content`` (keys without ``%``), fallbacks applied.

    ``contact`` is a ``ContactRecord`` (or anything with ``name``/``company``/``country``/
    ``custom``), or ``None`` (test sends, previews without a contact).  ``now`` gives the
    ``date`` built-in as ``YYYY-MM-DD``: pass it in the time zone the date should be read in.
    """
    custom = (getattr(contact, "custom", None) or {}) if contact is not None else {}
    texts: list[str] = []
    number = ""
    for source, key, fallback in content._fields:
        if source == "contact":
            value = getattr(contact, key, None) if contact is not None else None
        elif source == "email":
            value = email
        elif source == "custom":
            value = custom.get(key)
        elif source == "unsubscribe":
            texts.append(unsubscribe_url)
            continue
        elif source == "date":
            value = now.date().isoformat()  # YYYY-MM-DD; strftime cost ~10 µs per recipient
        else:  # random_number: ten digits as in the EDM tools users know; one per recipient
            number = number or str((rng or _RNG).randrange(1_000_000_000, 10_000_000_000))
            value = number
        text = value if type(value) is str else _as_text(value)
        texts.append(fallback if not text or text.isspace() else text)
    out: dict[str, str] = {}
    escaped: dict[int, str] = {}
    for name, index, html in content._outputs:
        if not html:
            out[name] = texts[index]
            continue
        value = escaped.get(index)
        if value is None:
            text = texts[index]
            value = escaped[index] = html_lib.escape(text) if _HTML_SPECIAL.search(text) else text
        out[name] = value
    return out


def apply_values(text: str, values: Mapping[str, str]) -> str:
    """Replace ``%placeholder%`` markers as SendCloud does (unknown ones stay as written)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


@dataclasses.dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    html: str
    text: str


def render(content: CompiledContent, values: Mapping[str, str]) -> Rendered:
    """One recipient's final mail (previews; providers substitute on their side)."""
    return Rendered(
        subject=apply_values(content.subject, values),
        html=apply_values(content.html, values),
        text=apply_values(content.text, values),
    )


__all__ = [
    "ALIASES",
    "BUILTINS",
    "CLICK_PLACEHOLDER",
    "CONTACT_FIELDS",
    "OPEN_PLACEHOLDER",
    "UNSUBSCRIBE",
    "Binding",
    "CompiledContent",
    "Rendered",
    "UnknownVariables",
    "VariableUse",
    "apply_values",
    "canonical_name",
    "check_variables",
    "compile_content",
    "find_variables",
    "html_to_text",
    "inline_css",
    "known_fields",
    "recipient_values",
    "render",
    "rewrite_links",
    "text_to_html",
    "tracked_urls",
    "unknown_variables",
]
