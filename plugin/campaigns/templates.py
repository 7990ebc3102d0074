"""Template service: list, create, edit, duplicate, delete, import, preview, test send, review.

Rules that live here rather than in the pages:

* a template is checked when it is saved (size, unknown variables), so a campaign never finds out
  at send time that ``{{compnay}}`` means nothing;
* imports go through the same checks; files are decoded like contact imports (UTF-8, else GBK /
  GB18030 detected) and URLs are fetched only through :mod:`plugin.netguard`;
* SendCloud's review follows the remote ``templateStat``; the content submitted is the compiled
  one (placeholders ``%name%``, footer, inlined CSS) because ``mail/sendtemplate`` sends exactly
  what was approved, with our per-recipient values in ``xsmtpapi.sub``.  Editing an approved or
  rejected template makes it "not submitted" again; a pending one cannot be edited (SendCloud
  refuses updates during review, code 40223).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import uuid
from collections.abc import Callable, Sequence
from html import unescape
from pathlib import PurePath
from typing import Any
from urllib.parse import urljoin, urlsplit

import sqlalchemy as sa
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .. import contacts as contacts_service
from .. import counters, importing, netguard, tracking
from ..addresses import normalize_email
from ..config import Settings
from ..crypto import SecretBox
from ..directory import ContactDirectory, ContactRecord
from ..errors import ImportFileError, InvalidInput, InvalidTransition, NotFound, ProviderError
from ..i18n import _
from ..models import Campaign, Contact, ProviderAccount, Sender, Template, utcnow
from ..providers.base import BatchMessage, Provider, Recipient, SendResult
from ..schemas.common import text_problem
from . import rendering
from .lifecycle import FINAL

REVIEW_STATES = ("not_submitted", "pending", "approved", "rejected")
SORTS = ("name", "updated_at", "created_at", "review_state")
IMPORT_SUFFIXES = (".html", ".htm", ".txt")
MAX_TEST_ADDRESSES = 5
#: Gmail clips messages whose HTML exceeds about 102 KB; warn a little before.
LARGE_BYTES = 100 * 1024
NAME_MAX = 200
SUBJECT_MAX = 500

ProviderFactory = Callable[[ProviderAccount, str], Provider]


class TemplateInvalid(InvalidInput):
    """One or more fields are wrong; ``errors`` maps each field to its message."""

    def __init__(self, errors: dict[str, str]) -> None:
        field = next(iter(errors))
        super().__init__(errors[field], field=field)
        self.errors = errors


@dataclasses.dataclass(frozen=True)
class TemplateRow:
    template: Template
    size_bytes: int


@dataclasses.dataclass(frozen=True)
class TemplatePage:
    items: list[TemplateRow]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


@dataclasses.dataclass(frozen=True)
class Draft:
    """Unsaved content (the editor's live preview compiles this)."""

    subject: str
    html: str
    text: str | None = None


@dataclasses.dataclass(frozen=True)
class Preview:
    subject: str
    html: str
    text: str
    size_bytes: int
    large: bool
    unknown: dict[str, list[str]]
    variables: list[str]
    #: Each variable name as the user wrote it (for the unknown-variable message).
    written: dict[str, str] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------- reading


def get_template(session: Session, workspace_id: int, template_id: int) -> Template:
    template = session.scalar(
        select(Template).where(Template.id == template_id, Template.workspace_id == workspace_id)
    )
    if template is None:
        raise NotFound(_("This template does not exist."))
    return template


def count_templates(session: Session, workspace_id: int) -> int:
    return session.scalar(select(func.count()).where(Template.workspace_id == workspace_id)) or 0


def list_templates(
    session: Session,
    workspace_id: int,
    *,
    q: str = "",
    sort: str = "updated_at",
    order: str = "desc",
    page: int = 1,
    per_page: int = 50,
) -> TemplatePage:
    """One page of templates, searched in name and subject, in a stable order."""
    query = select(Template).where(Template.workspace_id == workspace_id)
    needle = q.strip().lower()
    if needle:
        query = query.where(
            sa.or_(
                func.lower(Template.name).contains(needle, autoescape=True),
                func.lower(Template.subject).contains(needle, autoescape=True),
            )
        )
    column = {
        "name": func.lower(Template.name),
        "updated_at": Template.updated_at,
        "created_at": Template.created_at,
        "review_state": Template.review_state,
    }.get(sort, Template.updated_at)
    descending = order == "desc"
    query = query.order_by(column.desc() if descending else column.asc(), Template.id.desc())
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    per_page = max(1, min(per_page, 200))
    pages = max(1, -(-total // per_page))
    page = max(1, min(page, pages))
    rows = session.scalars(query.limit(per_page).offset((page - 1) * per_page)).all()
    return TemplatePage(
        items=[TemplateRow(t, len((t.html or "").encode()) + len((t.text or "").encode())) for t in rows],
        total=total,
        page=page,
        per_page=per_page,
    )


def templates_for_choice(session: Session, workspace_id: int) -> list[Template]:
    """Every template, by name (campaign forms)."""
    return list(
        session.scalars(
            select(Template).where(Template.workspace_id == workspace_id).order_by(func.lower(Template.name))
        )
    )


# --------------------------------------------------------------------------- writing


def _clean_name(name: str | None) -> str:
    return " ".join((name or "").split())


def validate(
    session: Session,
    workspace_id: int,
    *,
    name: str,
    subject: str,
    html: str,
    text: str | None,
    settings: Settings,
) -> list[str]:
    """Check a template's fields; returns the canonical variable keys it uses.

    Raises :class:`TemplateInvalid` with a message per wrong field (all of them at once).
    """
    errors: dict[str, str] = {}
    if not name:
        errors["name"] = _("Give the template a name; recipients never see it.")
    elif len(name) > NAME_MAX:
        errors["name"] = _("The name is longer than %(n)s characters.", n=NAME_MAX)
    if len(subject) > SUBJECT_MAX:
        errors["subject"] = _("The subject is longer than %(n)s characters.", n=SUBJECT_MAX)
    elif not subject.strip():
        errors["subject"] = _("Write a subject: it is what recipients see first.")
    if not html.strip() and not (text or "").strip():
        errors["html"] = _("Write the body (HTML), or a plain text version.")
    size = len(html.encode("utf-8", "replace")) + len((text or "").encode("utf-8", "replace"))
    if size > settings.template_max_bytes:
        errors["html"] = _(
            "The template is %(size)s KB; the limit is %(limit)s KB.",
            size=format(size / 1024, ",.0f"),
            limit=format(settings.template_max_bytes / 1024, ",.0f"),
        )
    for field, value in (("name", name), ("subject", subject), ("html", html), ("text", text or "")):
        problem = text_problem(value)
        if problem and field not in errors:
            errors[field] = problem
    uses = rendering.find_variables(subject, html, text or "")
    unknown = rendering.unknown_variables(uses, rendering.known_fields(session, workspace_id))
    written = rendering.written_as(uses)
    for field, names in unknown.items():
        errors.setdefault(field, rendering.unknown_message(names, written))
    if errors:
        raise TemplateInvalid(errors)
    return sorted({u.key for u in uses})


def create_template(
    session: Session,
    workspace_id: int,
    *,
    name: str,
    subject: str,
    html: str,
    text: str | None = None,
    source: str = "manual",
    user_id: str | None = None,
    settings: Settings,
) -> Template:
    name = _clean_name(name)
    text = text if text and text.strip() else None
    variables = validate(
        session, workspace_id, name=name, subject=subject, html=html, text=text, settings=settings
    )
    template = Template(
        workspace_id=workspace_id,
        name=name,
        subject=subject.strip(),
        html=html,
        text=text,
        variables=variables,
        source=source[:500],
        created_by=user_id,
        review_state="not_submitted",
    )
    session.add(template)
    session.flush()
    return template


def update_template(
    session: Session,
    workspace_id: int,
    template_id: int,
    *,
    name: str,
    subject: str,
    html: str,
    text: str | None,
    settings: Settings,
) -> Template:
    template = get_template(session, workspace_id, template_id)
    name = _clean_name(name)
    text = text if text and text.strip() else None
    subject = subject.strip()
    changed = (subject, html, text) != (template.subject, template.html, template.text)
    if changed and template.review_state == "pending":
        raise InvalidTransition(
            _(
                "SendCloud is reviewing this template; it cannot be changed until the review is "
                "decided. Withdraw the submission to edit it now."
            )
        )
    template.variables = validate(
        session, workspace_id, name=name, subject=subject, html=html, text=text, settings=settings
    )
    template.name, template.subject, template.html, template.text = name, subject, html, text
    if changed and template.review_state in ("approved", "rejected"):
        template.review_state = "not_submitted"
        template.review_note = _(
            "Changed after the review; submit it again before sending through SendCloud."
        )
    template.updated_at = utcnow()
    session.flush()
    return template


def _copy_name(session: Session, workspace_id: int, name: str) -> str:
    base = _("%(name)s (copy)", name=name)[:NAME_MAX]
    taken = set(
        session.scalars(
            select(Template.name).where(
                Template.workspace_id == workspace_id, Template.name.startswith(base, autoescape=True)
            )
        )
    )
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base} {n}"
    return candidate


def duplicate_template(
    session: Session, workspace_id: int, template_id: int, *, user_id: str | None = None
) -> Template:
    """A copy to edit freely: same content, not submitted for review, no SendCloud name."""
    original = get_template(session, workspace_id, template_id)
    copy = Template(
        workspace_id=workspace_id,
        name=_copy_name(session, workspace_id, original.name),
        subject=original.subject,
        html=original.html,
        text=original.text,
        variables=list(original.variables or []),
        source=original.source,
        created_by=user_id,
        review_state="not_submitted",
    )
    session.add(copy)
    session.flush()
    return copy


def campaigns_using(session: Session, workspace_id: int, template_id: int) -> list[Campaign]:
    """Unfinished campaigns that would send this template (JSON lists are checked in Python)."""
    rows = session.scalars(
        select(Campaign).where(Campaign.workspace_id == workspace_id, Campaign.status.not_in(FINAL))
    ).all()
    return [c for c in rows if template_id in (c.template_ids or [])]


def delete_template(session: Session, workspace_id: int, template_id: int) -> None:
    template = get_template(session, workspace_id, template_id)
    users = campaigns_using(session, workspace_id, template_id)
    if users:
        names = ", ".join(f"“{c.name}”" for c in users[:3]) + (" …" if len(users) > 3 else "")
        raise InvalidTransition(
            _("Campaigns that have not finished use this template: %(names)s.", names=names)
        )
    session.delete(template)
    session.flush()


# --------------------------------------------------------------------------- import

_TITLE = re.compile(r"<title[^>]*>(.*?)</title\s*>", re.I | re.S)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-]+)""", re.I)
_URL_ATTR = re.compile(r"""(\s(?:src|href|background)\s*=\s*)(["'])(.*?)\2""", re.I | re.S)


def _title(html: str) -> str:
    match = _TITLE.search(html)
    return " ".join(unescape(match.group(1)).split())[:SUBJECT_MAX] if match else ""


_META_TAG = re.compile(r"<meta\b[^>]*>", re.I)
#: ``<meta charset="gbk">``: a ``charset`` attribute of its own (not ``data-charset``).
_CHARSET_ATTR = re.compile(r"""(\scharset\s*=\s*["']?)[^"'\s/>]+""", re.I)
#: ``<meta http-equiv="Content-Type" content="text/html; charset=gbk">``.
_CONTENT_TYPE = re.compile(r"""\shttp-equiv\s*=\s*["']?content-type""", re.I)
_CHARSET_PARAM = re.compile(r"""(;\s*charset\s*=\s*)[^"'\s;>]+""", re.I)


def declare_utf8(html: str) -> str:
    """The page's charset declaration (either form) made UTF-8: an imported GBK page is stored
    and sent as UTF-8 text, and a mail client that believed the old declaration would garble it.
    Other ``<meta>`` tags (a description that mentions a charset) are left as written."""

    def fix(m: re.Match[str]) -> str:
        tag = m.group(0)
        if _CHARSET_ATTR.search(tag):
            return _CHARSET_ATTR.sub(lambda a: f"{a.group(1)}utf-8", tag, count=1)
        if _CONTENT_TYPE.search(tag):
            return _CHARSET_PARAM.sub(lambda a: f"{a.group(1)}utf-8", tag, count=1)
        return tag

    return _META_TAG.sub(fix, html)


def decode_bytes(data: bytes, declared: str | None = None) -> str:
    """Text of an imported file or page: a declared charset if it decodes, else detection.

    Detection is the contact import's (BOM, strict UTF-8, then GBK/GB18030 and friends); a
    ``<meta charset>`` or HTTP charset is tried first because pages usually say what they are.
    """
    candidates = [declared] if declared else []
    match = _META_CHARSET.search(data[:4096])
    if match:
        candidates.append(match.group(1).decode("ascii", "ignore"))
    for name in candidates:
        try:
            codec = importing.canonical_encoding(name)
        except ImportFileError:
            continue
        if codec == "auto":
            continue
        try:
            return data.decode("utf-8-sig" if codec == "utf-8" else codec)
        except (UnicodeDecodeError, LookupError):
            continue
    try:
        text, _used = importing.decode(data, "auto")
    except ImportFileError as exc:
        raise InvalidInput(str(exc), field="file") from None
    return text


def import_file(
    session: Session,
    workspace_id: int,
    *,
    filename: str,
    data: bytes,
    settings: Settings,
    user_id: str | None = None,
    name: str | None = None,
) -> Template:
    """A new template from an uploaded ``.html``/``.htm``/``.txt`` file (at most the size limit)."""
    clean = PurePath((filename or "").replace("\\", "/")).name
    suffix = PurePath(clean).suffix.lower()
    if suffix not in IMPORT_SUFFIXES:
        raise InvalidInput(_("Choose an .html, .htm or .txt file."), field="file")
    if not data:
        raise InvalidInput(_("The file is empty."), field="file")
    if len(data) > settings.template_max_bytes:
        raise InvalidInput(
            _("The file is larger than %(kb)s KB.", kb=format(settings.template_max_bytes // 1024, ",")),
            field="file",
        )
    content = decode_bytes(data).replace("\x00", "")
    stem = PurePath(clean).stem or _("Imported template")
    if suffix == ".txt":
        html, text, subject = "", content, ""
    else:
        html, text, subject = declare_utf8(content), None, _title(content)
    return _create_imported(
        session,
        workspace_id,
        name=name or stem,
        subject=subject or stem,
        html=html,
        text=text,
        source=f"file:{clean}",
        settings=settings,
        user_id=user_id,
        field="file",
    )


def absolute_links(html: str, base_url: str) -> str:
    """Relative ``src``/``href`` made absolute: mail clients have no page to resolve them from."""

    def fix(m: re.Match[str]) -> str:
        value = m.group(3).strip()
        if not value or value.startswith(("#", "mailto:", "tel:", "data:", "cid:", "%", "{")):
            return m.group(0)
        if re.match(r"^[a-z][a-z0-9+.\-]*:", value, re.I):
            return m.group(0)
        return f"{m.group(1)}{m.group(2)}{urljoin(base_url, value)}{m.group(2)}"

    return _URL_ATTR.sub(fix, html)


def import_url(
    session: Session,
    workspace_id: int,
    *,
    url: str,
    settings: Settings,
    user_id: str | None = None,
    name: str | None = None,
    fetch: Callable[..., netguard.FetchResult] = netguard.fetch,
) -> Template:
    """A new template from a public web page (see :mod:`plugin.netguard` for what is refused)."""
    url = (url or "").strip()
    if not url:
        raise InvalidInput(_("Enter the address of the page to import."), field="url")
    if len(url) > 2000:
        raise InvalidInput(_("The address is too long."), field="url")
    result = fetch(url, max_bytes=settings.template_max_bytes, timeout=settings.template_fetch_timeout)
    content = decode_bytes(result.body, result.charset).replace("\x00", "")
    if result.content_type == "text/plain":
        html, text, subject = "", content, ""
    else:
        html, text, subject = declare_utf8(absolute_links(content, result.final_url)), None, _title(content)
    host = urlsplit(result.final_url).hostname or _("Imported page")
    return _create_imported(
        session,
        workspace_id,
        name=name or subject or host,
        subject=subject or host,
        html=html,
        text=text,
        source=f"url:{result.final_url}",
        settings=settings,
        user_id=user_id,
        field="url",
    )


def _create_imported(
    session: Session,
    workspace_id: int,
    *,
    name: str,
    subject: str,
    html: str,
    text: str | None,
    source: str,
    settings: Settings,
    user_id: str | None,
    field: str,
) -> Template:
    """Imported content obeys the same rules as typed content; errors point at the import field."""
    try:
        return create_template(
            session,
            workspace_id,
            name=_clean_name(name)[:NAME_MAX],
            subject=subject[:SUBJECT_MAX],
            html=html,
            text=text,
            source=source,
            user_id=user_id,
            settings=settings,
        )
    except TemplateInvalid as exc:
        message = " ".join(dict.fromkeys(exc.errors.values()))
        raise InvalidInput(message, field=field) from None


# --------------------------------------------------------------------------- preview


def default_sender(session: Session, workspace_id: int) -> Sender | None:
    return session.scalar(
        select(Sender)
        .where(Sender.workspace_id == workspace_id)
        .order_by(Sender.is_default.desc(), Sender.id)
        .limit(1)
    )


def find_contact(
    session: Session, directory: ContactDirectory, workspace_id: int, contact_id: int
) -> ContactRecord:
    ids = select(sa.literal(contact_id, sa.BigInteger()))
    for chunk in directory.contacts(session, workspace_id, ids, chunk=1):
        for record in chunk:
            return record
    raise NotFound(_("This contact does not exist."))


def search_contacts(session: Session, workspace_id: int, q: str, *, limit: int = 10) -> list[Contact]:
    """Contacts whose email, name or company contains ``q`` (the "preview as" picker)."""
    query = contacts_service.contact_query(session, workspace_id, search=q or None)
    return list(session.scalars(query.order_by(Contact.email).limit(limit)))


def compile_for(template: Template | Draft, sender: Sender | None) -> rendering.CompiledContent:
    return rendering.compile_content(
        template,  # type: ignore[arg-type]  # a Draft has the fields compile_content reads
        sender=sender,
        company_name=(sender.company_name if sender else "") or "",
        postal_address=(sender.postal_address if sender else "") or "",
        tracking=False,
    )


def preview(
    session: Session,
    workspace_id: int,
    draft: Draft,
    *,
    contact: ContactRecord | None,
    sender: Sender | None,
    now: dt.datetime,
) -> Preview:
    """What a recipient would see, plus size and unknown variables, for unsaved content."""
    uses = rendering.find_variables(draft.subject, draft.html, draft.text or "")
    unknown = rendering.unknown_variables(uses, rendering.known_fields(session, workspace_id))
    content = compile_for(draft, sender)
    values = rendering.recipient_values(
        content,
        contact,
        email=contact.email if contact is not None else "recipient@example.com",
        unsubscribe_url="#unsubscribe",
        now=now,
    )
    shown = rendering.render(content, values)
    return Preview(
        subject=shown.subject,
        html=shown.html,
        text=shown.text,
        size_bytes=content.size_bytes,
        large=content.size_bytes > LARGE_BYTES,
        unknown=unknown,
        variables=sorted({u.key for u in uses}),
        written=rendering.written_as(uses),
    )


# --------------------------------------------------------------------------- test send


def parse_addresses(raw: str | Sequence[str]) -> list[str]:
    """1-5 distinct valid addresses from text separated by commas, semicolons or lines."""
    parts = re.split(r"[\s,;，；]+", raw) if isinstance(raw, str) else list(raw)
    found: list[str] = []
    for part in parts:
        if not part.strip():
            continue
        try:
            address = normalize_email(part)
        except InvalidInput:
            raise InvalidInput(
                _("“%(address)s” is not a valid email address.", address=part.strip()[:100]),
                field="addresses",
            ) from None
        if address not in found:
            found.append(address)
    if not found:
        raise InvalidInput(_("Enter at least one address."), field="addresses")
    if len(found) > MAX_TEST_ADDRESSES:
        raise InvalidInput(
            _("A test goes to at most %(n)s addresses.", n=MAX_TEST_ADDRESSES), field="addresses"
        )
    return found


def accounts_for_test(session: Session, workspace_id: int) -> list[ProviderAccount]:
    """Accounts a test can go through: SendCloud ones first (trigger API_USER), then SMTP."""
    return list(
        session.scalars(
            select(ProviderAccount)
            .where(ProviderAccount.workspace_id == workspace_id, ProviderAccount.status == "active")
            .order_by(sa.case((ProviderAccount.kind == "sendcloud", 0), else_=1), ProviderAccount.id)
        )
    )


def _account(session: Session, workspace_id: int, account_id: int | None) -> ProviderAccount:
    accounts = accounts_for_test(session, workspace_id)
    if account_id is not None:
        accounts = [a for a in accounts if a.id == account_id]
    if not accounts:
        raise InvalidInput(
            _("No sending account: bind SendCloud in Setup or add an SMTP account."), field="account_id"
        )
    return accounts[0]


def _sender(session: Session, workspace_id: int, sender_id: int | None) -> Sender | None:
    if sender_id is None:
        return default_sender(session, workspace_id)
    sender = session.scalar(select(Sender).where(Sender.id == sender_id, Sender.workspace_id == workspace_id))
    if sender is None:
        raise InvalidInput(_("This sender does not exist."), field="sender_id")
    return sender


def send_test(
    session: Session,
    workspace_id: int,
    template_id: int,
    *,
    addresses: str | Sequence[str],
    settings: Settings,
    provider_factory: ProviderFactory,
    directory: ContactDirectory,
    account_id: int | None = None,
    sender_id: int | None = None,
    contact_id: int | None = None,
    now: dt.datetime | None = None,
) -> list[SendResult]:
    """Send the template to up to five addresses, personalized as one contact (or with fallbacks);
    counted as mail outside campaigns (the caller commits).

    SendCloud accounts send through their trigger API_USER (tests are not marketing mail and must
    not count as a campaign); SMTP accounts through their own server.  The subject is marked
    as a test so nobody mistakes it for the real mail.
    """
    recipients = parse_addresses(addresses)
    template = get_template(session, workspace_id, template_id)
    account = _account(session, workspace_id, account_id)
    sender = _sender(session, workspace_id, sender_id)
    from_address = (sender.from_address if sender else "") or account.from_address or ""
    if not from_address:
        raise InvalidInput(_("Add a sender (from address) in Setup first."), field="sender_id")
    contact = find_contact(session, directory, workspace_id, contact_id) if contact_id else None
    content = compile_for(template, sender)
    unsubscribe = tracking.unsubscribe_url(settings, workspace_id, 0)
    when = now or utcnow()
    batch = BatchMessage(
        from_address=from_address,
        from_name=(sender.from_name if sender else "") or "",
        subject=f"{_('[Test]')} {content.subject}",
        html=content.html,
        text=content.text,
        recipients=[
            Recipient(
                email=address,
                variables=rendering.recipient_values(
                    content, contact, email=address, unsubscribe_url=unsubscribe, now=when
                ),
            )
            for address in recipients
        ],
        idempotency_key=f"test-{uuid.uuid4().hex}",
        reply_to=(sender.reply_to if sender else None) or None,
        headers={"SC-Custom-test-template": str(template.id)},
        kind="batch",
    )
    provider = provider_factory(account, "trigger" if account.kind == "sendcloud" else "batch")
    try:
        results = provider.send_batch(batch)
    finally:
        provider.close()
    # Counted as mail outside campaigns, as trigger mail is: their deliveries already count
    # there, and without the send side the account's day showed more delivered than sent.
    for result in results:
        accepted = result.status == "accepted"
        counters.count_outside_campaigns(session, workspace_id, result.recipient, accepted=accepted)
    return results


# --------------------------------------------------------------------------- SendCloud review

ClientFactory = Callable[[ProviderAccount], Any]


def sendcloud_account(session: Session, workspace_id: int) -> ProviderAccount | None:
    return session.scalar(
        select(ProviderAccount)
        .where(
            ProviderAccount.workspace_id == workspace_id,
            ProviderAccount.kind == "sendcloud",
            ProviderAccount.status == "active",
        )
        .order_by(ProviderAccount.id)
        .limit(1)
    )


def client_factory(settings: Settings, secrets: SecretBox) -> ClientFactory:
    """SendCloud clients for the BATCH API_USER: marketing templates are of the batch type."""

    def build(account: ProviderAccount):
        from ..channels import sendcloud_credentials
        from ..providers.sendcloud import SendCloudClient

        user, key = sendcloud_credentials(account, secrets, "batch")
        return SendCloudClient(
            user, key, base_url=settings.sendcloud_api_base, timeout=settings.provider_timeout
        )

    return build


def invoke_name(workspace_id: int, template: Template) -> str:
    """Stable per template: a repeated submission updates the same SendCloud template."""
    return template.provider_template_name or f"mkt_{workspace_id}_{template.id}"


def _review_account(session: Session, workspace_id: int) -> ProviderAccount:
    account = sendcloud_account(session, workspace_id)
    if account is None:
        raise InvalidInput(
            _("Bind a SendCloud account in Setup before submitting templates."), field="review"
        )
    return account


def _apply_remote(template: Template, info: Any) -> None:
    template.review_state = info.state
    if info.state == "rejected":
        template.review_note = info.note or _(
            "SendCloud rejected the template; its console says why. Edit it and submit again."
        )
    elif info.state == "approved" or info.state == "not_submitted":
        template.review_note = None


def submit_for_review(
    session: Session, workspace_id: int, template_id: int, *, clients: ClientFactory
) -> Template:
    """Send the compiled template to SendCloud and ask for review (add, or update + resubmit)."""
    template = get_template(session, workspace_id, template_id)
    if template.review_state == "pending":
        raise InvalidTransition(_("This template is already waiting for SendCloud's review."))
    if template.review_state == "approved":
        raise InvalidTransition(_("SendCloud already approved this template."))
    account = _review_account(session, workspace_id)
    content = compile_for(template, default_sender(session, workspace_id))
    name = invoke_name(workspace_id, template)
    fields = {
        "name": template.name,
        "subject": content.subject,
        "html": content.html,
        "text": content.text,
        "template_type": "batch",
        "submit": True,
    }
    client = clients(account)
    try:
        if template.provider_template_name:
            _update_remote(client, name, fields)
        else:
            try:
                client.template_add(name, **fields)
            except ProviderError as exc:
                if exc.status_code != 40220:  # invoke name exists (an earlier attempt got through)
                    raise
                _update_remote(client, name, fields)
        info = client.template_get(name)
    finally:
        client.close()
    template.provider_template_name = name
    template.review_submitted_at = utcnow()
    _apply_remote(template, info)
    if info.state == "pending":
        template.review_note = None
    session.flush()
    return template


def _update_remote(client: Any, name: str, fields: dict[str, Any]) -> None:
    try:
        client.template_update(name, **fields)
    except ProviderError as exc:
        if exc.status_code == 40216:  # deleted at SendCloud meanwhile: create it again
            client.template_add(name, **fields)
        else:
            raise


def withdraw_review(
    session: Session, workspace_id: int, template_id: int, *, clients: ClientFactory
) -> Template:
    """Withdraw a pending submission so the template can be edited."""
    template = get_template(session, workspace_id, template_id)
    if template.review_state != "pending" or not template.provider_template_name:
        raise InvalidTransition(_("Only a template waiting for review can be withdrawn."))
    client = clients(_review_account(session, workspace_id))
    try:
        client.template_submit(template.provider_template_name, cancel=True)
        info = client.template_get(template.provider_template_name)
    finally:
        client.close()
    _apply_remote(template, info)
    session.flush()
    return template


def refresh_review(
    session: Session, workspace_id: int, template_id: int, *, clients: ClientFactory
) -> Template:
    """Read the template's review state from SendCloud."""
    template = get_template(session, workspace_id, template_id)
    if not template.provider_template_name:
        return template
    client = clients(_review_account(session, workspace_id))
    try:
        _refresh_one(client, template)
    finally:
        client.close()
    session.flush()
    return template


def _refresh_one(client: Any, template: Template) -> None:
    try:
        info = client.template_get(template.provider_template_name)
    except ProviderError as exc:
        if exc.status_code != 40216:
            raise
        template.provider_template_name = None
        template.review_state = "not_submitted"
        template.review_note = _("The template no longer exists at SendCloud; submit it again.")
        return
    _apply_remote(template, info)


def refresh_reviews(session: Session, workspace_id: int, *, clients: ClientFactory) -> int:
    """Refresh every submitted template of the workspace; returns how many changed state."""
    templates = session.scalars(
        select(Template).where(
            Template.workspace_id == workspace_id, Template.provider_template_name.is_not(None)
        )
    ).all()
    if not templates:
        return 0
    client = clients(_review_account(session, workspace_id))
    changed = 0
    try:
        for template in templates:
            before = template.review_state
            _refresh_one(client, template)
            changed += template.review_state != before
    finally:
        client.close()
    session.flush()
    return changed


__all__ = [
    "IMPORT_SUFFIXES",
    "LARGE_BYTES",
    "MAX_TEST_ADDRESSES",
    "REVIEW_STATES",
    "SORTS",
    "Draft",
    "Preview",
    "TemplateInvalid",
    "TemplatePage",
    "client_factory",
    "count_templates",
    "create_template",
    "delete_template",
    "duplicate_template",
    "get_template",
    "import_file",
    "import_url",
    "list_templates",
    "preview",
    "refresh_review",
    "refresh_reviews",
    "search_contacts",
    "send_test",
    "submit_for_review",
    "update_template",
    "withdraw_review",
]
