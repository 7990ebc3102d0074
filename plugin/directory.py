"""The host contract: where contacts, tags and saved views come from.

The plugin never assumes the host's tables.  A :class:`ContactDirectory` answers in SQL
(``Select`` objects of contact ids), so an audience is one query however large it is.  The
default :class:`SqlDirectory` serves the plugin's own ``marketing_contacts``/``tags``/``views``
tables; a host with its own contact tables subclasses it (or implements the ABC) to map them.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, Select, bindparam, delete, func, insert, literal_column, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from . import bulk_sql
from .errors import NotFound
from .filters import FieldColumns, compile_rules
from .models import Contact, ContactTag, SavedView, Tag, Workspace


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    """A tag or a saved view, by id."""

    kind: Literal["tag", "view"]
    id: int


@dataclasses.dataclass(frozen=True, slots=True)
class ContactRecord:
    id: int
    email: str
    name: str | None
    company: str | None
    country: str | None
    owner_id: str | None
    custom: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class SegmentInfo:
    id: int
    name: str
    count: int


class ContactDirectory(abc.ABC):
    """What the plugin needs from a CRM's contacts.  Every method is scoped by workspace."""

    @abc.abstractmethod
    def tags(self, session: Session, workspace_id: int) -> list[SegmentInfo]:
        """Tags a user can pick, with member counts."""

    @abc.abstractmethod
    def views(self, session: Session, workspace_id: int) -> list[SegmentInfo]:
        """Saved views a user can pick, with member counts."""

    @abc.abstractmethod
    def members(self, session: Session, workspace_id: int, segment: Segment) -> Select[Any]:
        """A ``SELECT`` of the contact ids in a tag or view (one column)."""

    @abc.abstractmethod
    def addresses(self, workspace_id: int, ids: Select[Any]) -> Select[Any]:
        """``SELECT contact_id, email`` for the ids given, in the contacts' stable order."""

    @abc.abstractmethod
    def contacts(
        self, session: Session, workspace_id: int, ids: Select[Any], *, chunk: int = 1000
    ) -> Iterator[list[ContactRecord]]:
        """Stream contact records for personalization, ``chunk`` at a time."""

    @abc.abstractmethod
    def add_tags(
        self, session: Session, workspace_id: int, contact_ids: Iterable[int], tag_names: Sequence[str]
    ) -> int:
        """Tag contacts (creating missing tags); returns how many new taggings were made."""

    @abc.abstractmethod
    def remove_tags(
        self, session: Session, workspace_id: int, contact_ids: Iterable[int], tag_names: Sequence[str]
    ) -> int:
        """Untag contacts; returns how many taggings were removed."""

    def contacts_by_id(self, session: Session, workspace_id: int, ids: Sequence[int]) -> list[ContactRecord]:
        """The records of the contacts ``ids`` that exist (the runner's hundred per batch), any order.

        Served by :meth:`contacts` over a SELECT of the ids themselves (no table of the
        plugin's: a host's contacts live in its own tables); ``SqlDirectory`` answers in one
        prepared statement."""
        wanted = list(dict.fromkeys(int(i) for i in ids))
        if not wanted:
            return []
        found: list[ContactRecord] = []
        for chunk in self.contacts(session, workspace_id, id_list(session, wanted), chunk=len(wanted)):
            found += chunk
            if len(found) >= len(wanted):
                break  # all found: spare the final empty query
        return found

    def owner_of(self, session: Session, workspace_id: int, contact_id: int) -> str | None:
        """The host user who owns a contact (notified of replies); ``None`` if nobody."""
        return None

    def count(self, session: Session, workspace_id: int, segment: Segment) -> int:
        ids = self.members(session, workspace_id, segment).subquery()
        return session.scalar(select(func.count()).select_from(ids)) or 0


def id_list(session: Session, ids: Sequence[int]) -> Select[Any]:
    """``SELECT id`` of the literal ``ids`` as ONE parameter (a PostgreSQL array, a JSON text for
    SQLite's ``json_each``): one short statement however many ids, cached like the others."""
    if session.get_bind().dialect.name == "postgresql":
        return select(func.unnest(bindparam("id_list", list(ids), type_=ARRAY(BigInteger))).label("id"))
    return select(literal_column("value").label("id")).select_from(
        func.json_each(bindparam("id_list", json.dumps(list(ids))))
    )


def contact_columns() -> FieldColumns:
    """Columns of ``marketing_contacts`` behind each view field."""
    return FieldColumns(
        columns={
            "email": Contact.email,
            "email_domain": Contact.email_domain,
            "email_local": Contact.email_local,
            "name": Contact.name,
            "company": Contact.company,
            "country": Contact.country,
            "owner": Contact.owner_id,
            "created_at": Contact.created_at,
        },
        custom=lambda key: Contact.custom[key].as_string(),
    )


class SqlDirectory(ContactDirectory):
    """The plugin's own contact tables (used by the demo CRM and hosts without their own)."""

    def tags(self, session: Session, workspace_id: int) -> list[SegmentInfo]:
        counts = select(ContactTag.tag_id, func.count().label("n")).group_by(ContactTag.tag_id).subquery()
        rows = session.execute(
            select(Tag.id, Tag.name, func.coalesce(counts.c.n, 0))
            .outerjoin(counts, counts.c.tag_id == Tag.id)
            .where(Tag.workspace_id == workspace_id)
            .order_by(Tag.name)
        )
        return [SegmentInfo(id=i, name=n, count=c) for i, n, c in rows]

    def views(self, session: Session, workspace_id: int) -> list[SegmentInfo]:
        found = session.scalars(
            select(SavedView).where(SavedView.workspace_id == workspace_id).order_by(SavedView.name)
        )
        return [
            SegmentInfo(id=v.id, name=v.name, count=self.count(session, workspace_id, Segment("view", v.id)))
            for v in found
        ]

    def view_condition(self, session: Session, workspace_id: int, rules: dict[str, Any]):
        tz = ZoneInfo(
            session.scalar(select(Workspace.timezone).where(Workspace.id == workspace_id)) or "Asia/Shanghai"
        )
        return compile_rules(rules, contact_columns(), tz)

    def members(self, session: Session, workspace_id: int, segment: Segment) -> Select[Any]:
        if segment.kind == "tag":
            # The tag is checked against the workspace once; its taggings then need no join to
            # the contacts (a tag only ever holds its own workspace's contacts: ``add_tags``
            # tags ``_own_ids`` only), which spared a scan of the contacts per tag.
            (tag,) = self.own_tags(session, workspace_id, [segment.id])
            return select(ContactTag.contact_id.label("contact_id")).where(ContactTag.tag_id == tag)
        return self.matching(session, workspace_id, self.view_rules(session, workspace_id, segment.id))

    def own_tags(self, session: Session, workspace_id: int, tag_ids: Sequence[int]) -> list[int]:
        """``tag_ids`` checked in one query to be the workspace's; ``NotFound`` names the first stranger."""
        wanted = list(dict.fromkeys(int(t) for t in tag_ids))
        if not wanted:
            return []
        found = set(
            session.scalars(select(Tag.id).where(Tag.id.in_(wanted), Tag.workspace_id == workspace_id))
        )
        for tag_id in wanted:
            if tag_id not in found:
                raise NotFound(f"tag {tag_id}")
        return wanted

    def view_rules(self, session: Session, workspace_id: int, view_id: int) -> dict[str, Any]:
        """The rules tree of a saved view of the workspace (``NotFound`` otherwise)."""
        rules = session.scalar(
            select(SavedView.rules).where(SavedView.id == view_id, SavedView.workspace_id == workspace_id)
        )
        if rules is None:
            raise NotFound(f"view {view_id}")
        return rules

    def matching(self, session: Session, workspace_id: int, rules: dict[str, Any]) -> Select[Any]:
        """Contact ids matching a rules tree that is not saved yet (the live count of the editor)."""
        return select(Contact.id.label("contact_id")).where(
            Contact.workspace_id == workspace_id,
            self.view_condition(session, workspace_id, rules),
        )

    def addresses(self, workspace_id: int, ids: Select[Any]) -> Select[Any]:
        return (
            select(Contact.id, Contact.email)
            .where(Contact.workspace_id == workspace_id, Contact.id.in_(ids))
            .order_by(Contact.id)
        )

    def contacts(
        self, session: Session, workspace_id: int, ids: Select[Any], *, chunk: int = 1000
    ) -> Iterator[list[ContactRecord]]:
        # Plain rows of the needed columns, not ORM objects: identity-map bookkeeping cost more
        # than the query.
        last_id = 0
        while True:
            rows = session.execute(
                select(*_RECORD_COLUMNS)
                .where(Contact.workspace_id == workspace_id, Contact.id.in_(ids), Contact.id > last_id)
                .order_by(Contact.id)
                .limit(chunk)
            ).all()
            if not rows:
                return
            last_id = rows[-1][0]
            yield [_contact_record(r) for r in rows]

    def contacts_by_id(self, session: Session, workspace_id: int, ids: Sequence[int]) -> list[ContactRecord]:
        if type(self).contacts is not SqlDirectory.contacts:  # a subclass reads its own tables
            return super().contacts_by_id(session, workspace_id, ids)
        wanted = list(dict.fromkeys(int(i) for i in ids))
        if not wanted:
            return []
        params = {"ws": workspace_id, "ids": wanted}
        if session.get_bind().dialect.name == "postgresql":
            rows = _BY_ID_HOT.run(session, params).all()
        else:
            rows = session.execute(_BY_ID, params).all()
        return [_contact_record(r) for r in rows]

    def _tag_ids(self, session: Session, workspace_id: int, names: Sequence[str], create: bool) -> list[int]:
        # Same spelling rule as creating a tag by hand: runs of whitespace become one space.
        clean = sorted({" ".join(n.split()) for n in names if n and n.strip()})
        existing = dict(
            session.execute(
                select(Tag.name, Tag.id).where(Tag.workspace_id == workspace_id, Tag.name.in_(clean))
            ).all()
        )
        if create:
            for name in clean:
                if name not in existing:
                    tag = Tag(workspace_id=workspace_id, name=name)
                    session.add(tag)
                    session.flush()
                    existing[name] = tag.id
        return list(existing.values())

    def _own_ids(self, session: Session, workspace_id: int, contact_ids: Iterable[int]) -> list[int]:
        wanted = sorted({int(i) for i in contact_ids})
        found: list[int] = []
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            found += session.scalars(
                select(Contact.id).where(Contact.workspace_id == workspace_id, Contact.id.in_(part))
            ).all()
        return found

    def add_tags(
        self, session: Session, workspace_id: int, contact_ids: Iterable[int], tag_names: Sequence[str]
    ) -> int:
        ids = self._own_ids(session, workspace_id, contact_ids)
        added = 0
        for tag_id in self._tag_ids(session, workspace_id, tag_names, create=True):
            # Only the members among ``ids``: a tag may hold far more contacts than one request.
            have: set[int] = set()
            for start in range(0, len(ids), 500):
                have.update(
                    session.scalars(
                        select(ContactTag.contact_id).where(
                            ContactTag.tag_id == tag_id, ContactTag.contact_id.in_(ids[start : start + 500])
                        )
                    )
                )
            rows = [{"contact_id": cid, "tag_id": tag_id} for cid in ids if cid not in have]
            if rows:
                session.execute(insert(ContactTag), rows)
                added += len(rows)
        return added

    def remove_tags(
        self, session: Session, workspace_id: int, contact_ids: Iterable[int], tag_names: Sequence[str]
    ) -> int:
        ids = self._own_ids(session, workspace_id, contact_ids)
        removed = 0
        for tag_id in self._tag_ids(session, workspace_id, tag_names, create=False):
            for start in range(0, len(ids), 500):
                result = session.execute(
                    delete(ContactTag).where(
                        ContactTag.tag_id == tag_id, ContactTag.contact_id.in_(ids[start : start + 500])
                    )
                )
                removed += result.rowcount or 0
        return removed

    def owner_of(self, session: Session, workspace_id: int, contact_id: int) -> str | None:
        return session.scalar(
            select(Contact.owner_id).where(Contact.id == contact_id, Contact.workspace_id == workspace_id)
        )


_RECORD_COLUMNS = (
    Contact.__table__.c.id,
    Contact.__table__.c.email,
    Contact.__table__.c.name,
    Contact.__table__.c.company,
    Contact.__table__.c.country,
    Contact.__table__.c.owner_id,
    Contact.__table__.c.custom,
)


def _contact_record(row: Any) -> ContactRecord:
    """A ``ContactRecord`` from a row of ``_RECORD_COLUMNS``."""
    return ContactRecord(
        id=row[0],
        email=row[1],
        name=row[2],
        company=row[3],
        country=row[4],
        owner_id=row[5],
        custom=dict(row[6] or {}),
    )


#: ``SqlDirectory.contacts_by_id``: built once (building and keying a statement per batch cost
#: more than running it); the ids as one array on PostgreSQL (see ``bulk_sql.one_of``).
_BY_ID, _BY_ID_PG = (
    select(*_RECORD_COLUMNS).where(
        Contact.__table__.c.workspace_id == bindparam("ws"),
        bulk_sql.one_of(Contact.__table__.c.id, "ids", BigInteger, postgres=postgres),
    )
    for postgres in (False, True)
)
_BY_ID_HOT = bulk_sql.Hot(_BY_ID_PG)
