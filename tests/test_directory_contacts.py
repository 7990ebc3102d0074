"""``contacts_by_id``: the runner's per-batch read of the contacts it personalizes for.

The plugin's own directory answers in one statement; a host directory that only implements
``contacts`` (its own tables) is served by the base class through a table-free SELECT of the
ids, on both databases."""

from __future__ import annotations

from collections.abc import Iterator

import campaign_kit as kit
from sqlalchemy import select

from plugin.directory import ContactDirectory, ContactRecord, SqlDirectory
from plugin.models import Contact


class HostLikeDirectory(SqlDirectory):
    """Implements ``contacts`` itself (as a host mapping its own tables would) and records the
    id sets it was asked for, proving the base class's ``contacts_by_id`` went through it."""

    def __init__(self) -> None:
        self.asked: list[set[int]] = []

    def contacts(self, session, workspace_id, ids, *, chunk=1000) -> Iterator[list[ContactRecord]]:
        wanted = set(session.scalars(ids))
        self.asked.append(wanted)
        rows = session.execute(
            select(Contact.id, Contact.email, Contact.name)
            .where(Contact.workspace_id == workspace_id, Contact.id.in_(wanted))
            .order_by(Contact.id)
        ).all()
        yield [ContactRecord(r.id, r.email, r.name, None, None, None, {}) for r in rows]


def test_own_directory_reads_the_batch_in_one_statement(session, workspace, other_workspace):
    ids = kit.contacts(session, workspace.id, 30)
    foreign = kit.contacts(session, other_workspace.id, 3, start=500)
    session.commit()
    wanted = ids[5:25] + ids[5:7] + foreign  # repeats and another workspace's contacts
    records = SqlDirectory().contacts_by_id(session, workspace.id, wanted)
    assert sorted(r.id for r in records) == sorted(ids[5:25])
    by_id = {r.id: r for r in records}
    first = session.get(Contact, ids[5])
    assert (by_id[ids[5]].email, by_id[ids[5]].name) == (first.email, first.name)
    assert SqlDirectory().contacts_by_id(session, workspace.id, []) == []


def test_a_host_directory_is_asked_through_its_contacts_with_the_literal_ids(session, workspace):
    ids = kit.contacts(session, workspace.id, 12)
    session.commit()
    directory = HostLikeDirectory()
    asked_for = [ids[3], ids[7], ids[3], 999999]
    records = directory.contacts_by_id(session, workspace.id, asked_for)  # via the overridden contacts
    assert directory.asked == [{ids[3], ids[7], 999999}]
    assert sorted(r.id for r in records) == sorted([ids[3], ids[7]])
    assert {r.email for r in records} == {"user3@example.net", "user7@example.net"}


def test_a_directory_of_its_own_kind_is_served_by_the_contracts_default(session, workspace):
    ids = kit.contacts(session, workspace.id, 4)
    session.commit()

    class OwnTables(ContactDirectory):  # every abstract method, as a host's own class would
        tags = views = members = addresses = add_tags = remove_tags = None  # type: ignore[assignment]
        contacts = HostLikeDirectory.contacts

        def __init__(self) -> None:
            self.asked: list[set[int]] = []

    directory = OwnTables()
    assert {r.id for r in directory.contacts_by_id(session, workspace.id, ids[:2])} == set(ids[:2])
    assert directory.asked == [set(ids[:2])]
