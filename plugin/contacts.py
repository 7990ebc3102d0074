"""Contacts, tags and saved views of the default directory: the service functions behind the
demo CRM's pages and the JSON API.  Every function takes the workspace id and never reaches
outside it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from marshmallow import ValidationError
from sqlalchemy import Select, delete, func, or_, select
from sqlalchemy.orm import Session

from .addresses import normalize_email, split_email
from .directory import Segment, SqlDirectory
from .errors import InvalidInput, NotFound
from .filters import fold, load_rules
from .i18n import _
from .models import Contact, ContactTag, CustomField, SavedView, Tag

CONTACT_FIELDS = ("name", "company", "country", "owner_id")
SORTABLE = {
    "email": Contact.email,
    "name": Contact.name,
    "company": Contact.company,
    "country": Contact.country,
    "created_at": Contact.created_at,
}


@dataclasses.dataclass(frozen=True)
class Page:
    items: list[Any]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


# -- contacts ---------------------------------------------------------------------------------


def contact_query(
    session: Session,
    workspace_id: int,
    *,
    search: str | None = None,
    tag_id: int | None = None,
    view_id: int | None = None,
    directory: SqlDirectory | None = None,
) -> Select[Any]:
    query = select(Contact).where(Contact.workspace_id == workspace_id)
    if search:
        needle = fold(search.strip())
        query = query.where(
            or_(
                func.lower(Contact.email).contains(needle, autoescape=True),
                func.lower(Contact.name).contains(needle, autoescape=True),
                func.lower(Contact.company).contains(needle, autoescape=True),
            )
        )
    if tag_id is not None:
        get_tag(session, workspace_id, tag_id)
        query = query.where(Contact.id.in_(select(ContactTag.contact_id).where(ContactTag.tag_id == tag_id)))
    if view_id is not None:
        members = (directory or SqlDirectory()).members(session, workspace_id, Segment("view", view_id))
        query = query.where(Contact.id.in_(members))
    return query


def paginate(session: Session, query: Select[Any], page: int, per_page: int) -> Page:
    page = max(1, page)
    per_page = max(1, min(per_page, 500))
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    items = session.scalars(query.limit(per_page).offset((page - 1) * per_page)).all()
    return Page(items=list(items), total=total, page=page, per_page=per_page)


def list_contacts(
    session: Session,
    workspace_id: int,
    *,
    search: str | None = None,
    tag_id: int | None = None,
    view_id: int | None = None,
    sort: str = "created_at",
    descending: bool = True,
    page: int = 1,
    per_page: int = 50,
) -> Page:
    column = SORTABLE.get(sort, Contact.created_at)
    query = contact_query(session, workspace_id, search=search, tag_id=tag_id, view_id=view_id)
    order = column.desc() if descending else column.asc()
    query = query.order_by(order, Contact.id.desc() if descending else Contact.id.asc())
    return paginate(session, query, page, per_page)


def get_contact(session: Session, workspace_id: int, contact_id: int) -> Contact:
    contact = session.scalar(
        select(Contact).where(Contact.id == contact_id, Contact.workspace_id == workspace_id)
    )
    if contact is None:
        raise NotFound(f"contact {contact_id}")
    return contact


def _apply_fields(contact: Contact, data: dict[str, Any]) -> None:
    for key in CONTACT_FIELDS:
        if key in data:
            value = data[key]
            setattr(contact, key, value.strip() if isinstance(value, str) and value.strip() else None)
    if "custom" in data and data["custom"] is not None:
        merged = dict(contact.custom or {})
        for key, value in data["custom"].items():
            if value in (None, ""):
                merged.pop(key, None)
            else:
                merged[key] = str(value)
        contact.custom = merged


def create_contact(session: Session, workspace_id: int, data: dict[str, Any]) -> Contact:
    email = normalize_email(data["email"])
    if session.scalar(select(Contact.id).where(Contact.workspace_id == workspace_id, Contact.email == email)):
        raise InvalidInput(_("%(email)s is already a contact", email=email), field="email")
    local, domain = split_email(email)
    contact = Contact(
        workspace_id=workspace_id, email=email, email_local=local, email_domain=domain, custom={}
    )
    _apply_fields(contact, data)
    session.add(contact)
    session.flush()
    if data.get("tags"):
        SqlDirectory().add_tags(session, workspace_id, [contact.id], data["tags"])
    return contact


def update_contact(session: Session, workspace_id: int, contact_id: int, data: dict[str, Any]) -> Contact:
    contact = get_contact(session, workspace_id, contact_id)
    if "email" in data:
        email = normalize_email(data["email"])
        if email != contact.email and session.scalar(
            select(Contact.id).where(Contact.workspace_id == workspace_id, Contact.email == email)
        ):
            raise InvalidInput(_("%(email)s is already a contact", email=email), field="email")
        contact.email = email
        contact.email_local, contact.email_domain = split_email(email)
    _apply_fields(contact, data)
    session.flush()
    return contact


def delete_contacts(session: Session, workspace_id: int, contact_ids: Iterable[int]) -> int:
    ids = sorted({int(i) for i in contact_ids})
    removed = 0
    for start in range(0, len(ids), 500):
        part = ids[start : start + 500]
        own = select(Contact.id).where(Contact.workspace_id == workspace_id, Contact.id.in_(part))
        session.execute(delete(ContactTag).where(ContactTag.contact_id.in_(own)))
        result = session.execute(
            delete(Contact).where(Contact.workspace_id == workspace_id, Contact.id.in_(part))
        )
        removed += result.rowcount or 0
    return removed


def tags_of(session: Session, contact_ids: Sequence[int]) -> dict[int, list[str]]:
    """Tag names per contact, for a page of contacts."""
    result: dict[int, list[str]] = {i: [] for i in contact_ids}
    if not contact_ids:
        return result
    rows = session.execute(
        select(ContactTag.contact_id, Tag.name)
        .join(Tag, Tag.id == ContactTag.tag_id)
        .where(ContactTag.contact_id.in_(list(contact_ids)))
        .order_by(Tag.name)
    )
    for contact_id, name in rows:
        result[contact_id].append(name)
    return result


# -- tags -------------------------------------------------------------------------------------


def get_tag(session: Session, workspace_id: int, tag_id: int) -> Tag:
    tag = session.scalar(select(Tag).where(Tag.id == tag_id, Tag.workspace_id == workspace_id))
    if tag is None:
        raise NotFound(f"tag {tag_id}")
    return tag


def _clean_name(name: str, field: str = "name") -> str:
    clean = " ".join((name or "").split())
    if not clean:
        raise InvalidInput(_("the name is empty"), field=field)
    if len(clean) > 100:
        raise InvalidInput(_("the name is longer than 100 characters"), field=field)
    return clean


def create_tag(session: Session, workspace_id: int, name: str, color: str | None = None) -> Tag:
    clean = _clean_name(name)
    if session.scalar(select(Tag.id).where(Tag.workspace_id == workspace_id, Tag.name == clean)):
        raise InvalidInput(_("a tag named %(name)s exists already", name=repr(clean)), field="name")
    tag = Tag(workspace_id=workspace_id, name=clean)
    if color:
        tag.color = color
    session.add(tag)
    session.flush()
    return tag


def rename_tag(session: Session, workspace_id: int, tag_id: int, name: str, color: str | None = None) -> Tag:
    tag = get_tag(session, workspace_id, tag_id)
    clean = _clean_name(name)
    clash = session.scalar(
        select(Tag.id).where(Tag.workspace_id == workspace_id, Tag.name == clean, Tag.id != tag_id)
    )
    if clash:
        raise InvalidInput(_("a tag named %(name)s exists already", name=repr(clean)), field="name")
    tag.name = clean
    if color:
        tag.color = color
    session.flush()
    return tag


def delete_tag(session: Session, workspace_id: int, tag_id: int) -> None:
    tag = get_tag(session, workspace_id, tag_id)
    session.execute(delete(ContactTag).where(ContactTag.tag_id == tag.id))
    session.delete(tag)
    session.flush()


def tag_count(session: Session, workspace_id: int, tag_id: int) -> int:
    get_tag(session, workspace_id, tag_id)
    return SqlDirectory().count(session, workspace_id, Segment("tag", tag_id))


# -- saved views ------------------------------------------------------------------------------


def get_view(session: Session, workspace_id: int, view_id: int) -> SavedView:
    view = session.scalar(
        select(SavedView).where(SavedView.id == view_id, SavedView.workspace_id == workspace_id)
    )
    if view is None:
        raise NotFound(f"view {view_id}")
    return view


def validated_rules(rules: Any) -> dict[str, Any]:
    """Rules checked by ``filters.load_rules``; errors come back under the ``rules`` field."""
    try:
        return load_rules(rules)
    except ValidationError as exc:
        raise ValidationError({"rules": exc.messages}) from exc


def create_view(
    session: Session,
    workspace_id: int,
    *,
    name: str,
    rules: Any,
    description: str = "",
    user_id: str | None = None,
) -> SavedView:
    clean = _clean_name(name)
    if session.scalar(
        select(SavedView.id).where(SavedView.workspace_id == workspace_id, SavedView.name == clean)
    ):
        raise InvalidInput(_("a view named %(name)s exists already", name=repr(clean)), field="name")
    view = SavedView(
        workspace_id=workspace_id,
        name=clean,
        rules=validated_rules(rules),
        description=description or "",
        created_by=user_id,
    )
    session.add(view)
    session.flush()
    return view


def update_view(session: Session, workspace_id: int, view_id: int, data: dict[str, Any]) -> SavedView:
    view = get_view(session, workspace_id, view_id)
    if "name" in data:
        clean = _clean_name(data["name"])
        clash = session.scalar(
            select(SavedView.id).where(
                SavedView.workspace_id == workspace_id, SavedView.name == clean, SavedView.id != view_id
            )
        )
        if clash:
            raise InvalidInput(_("a view named %(name)s exists already", name=repr(clean)), field="name")
        view.name = clean
    if "rules" in data:
        view.rules = validated_rules(data["rules"])
    if "description" in data:
        view.description = data["description"] or ""
    session.flush()
    return view


def delete_view(session: Session, workspace_id: int, view_id: int) -> None:
    session.delete(get_view(session, workspace_id, view_id))
    session.flush()


def view_count(session: Session, workspace_id: int, view_id: int) -> int:
    get_view(session, workspace_id, view_id)
    return SqlDirectory().count(session, workspace_id, Segment("view", view_id))


def count_matching(session: Session, workspace_id: int, rules: Any) -> int:
    """Live count for rules not saved yet (the view editor)."""
    checked = validated_rules(rules)
    ids = SqlDirectory().matching(session, workspace_id, checked).subquery()
    return session.scalar(select(func.count()).select_from(ids)) or 0


def custom_fields(session: Session, workspace_id: int) -> list[CustomField]:
    return list(
        session.scalars(
            select(CustomField).where(CustomField.workspace_id == workspace_id).order_by(CustomField.label)
        )
    )


def ensure_custom_field(
    session: Session, workspace_id: int, key: str, label: str | None = None
) -> CustomField:
    field = session.scalar(
        select(CustomField).where(CustomField.workspace_id == workspace_id, CustomField.key == key)
    )
    if field is None:
        field = CustomField(workspace_id=workspace_id, key=key, label=label or key)
        session.add(field)
        session.flush()
    return field


def list_tags(session: Session, workspace_id: int) -> list[dict[str, Any]]:
    """Tags with colors and member counts, by name."""
    infos = SqlDirectory().tags(session, workspace_id)
    colors = dict(session.execute(select(Tag.id, Tag.color).where(Tag.workspace_id == workspace_id)).all())
    return [{"id": t.id, "name": t.name, "color": colors.get(t.id, ""), "count": t.count} for t in infos]


def list_views(session: Session, workspace_id: int) -> list[tuple[SavedView, int]]:
    """Saved views with their current member counts, by name."""
    views = session.scalars(
        select(SavedView).where(SavedView.workspace_id == workspace_id).order_by(SavedView.name)
    ).all()
    return [(v, view_count(session, workspace_id, v.id)) for v in views]
