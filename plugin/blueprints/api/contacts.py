"""Contacts: list with search and paging, create, read, update, delete, bulk tagging."""

from __future__ import annotations

from flask.views import MethodView

from ... import contacts as service
from ...directory import SqlDirectory
from ...schemas.common import MAX_BIG_ID
from ...schemas.contacts import (
    BulkDeleteIn,
    BulkTagIn,
    BulkTagOut,
    ContactIn,
    ContactListArgs,
    ContactOut,
    ContactPageOut,
    ContactPatch,
    DeletedOut,
)
from .common import permission, session, workspace_id
from .errors import api_blueprint

URL = "/contacts"
blp = api_blueprint("marketing_api_contacts", "Contacts of the default directory")


def _out(contacts) -> list[dict]:
    tags = service.tags_of(session(), [c.id for c in contacts])
    return [
        {
            "id": c.id,
            "email": c.email,
            "name": c.name,
            "company": c.company,
            "country": c.country,
            "owner_id": c.owner_id,
            "custom": c.custom or {},
            "tags": tags.get(c.id, []),
            "created_at": c.created_at,
        }
        for c in contacts
    ]


@blp.route("")
class Contacts(MethodView):
    @permission("contacts.read")
    @blp.arguments(ContactListArgs, location="query")
    @blp.response(200, ContactPageOut)
    def get(self, args):
        page = service.list_contacts(
            session(),
            workspace_id(),
            search=args["q"],
            tag_id=args["tag_id"],
            view_id=args["view_id"],
            sort=args["sort"],
            descending=args["order"] == "desc",
            page=args["page"],
            per_page=args["per_page"],
        )
        return {
            "items": _out(page.items),
            "total": page.total,
            "page": page.page,
            "per_page": page.per_page,
            "pages": page.pages,
        }

    @permission("contacts.write")
    @blp.arguments(ContactIn)
    @blp.response(201, ContactOut)
    def post(self, data):
        contact = service.create_contact(session(), workspace_id(), data)
        session().commit()
        return _out([contact])[0]


@blp.route(f"/<int(min=1,max={MAX_BIG_ID}):contact_id>")
class ContactItem(MethodView):
    @permission("contacts.read")
    @blp.response(200, ContactOut)
    def get(self, contact_id):
        return _out([service.get_contact(session(), workspace_id(), contact_id)])[0]

    @permission("contacts.write")
    @blp.arguments(ContactPatch)
    @blp.response(200, ContactOut)
    def patch(self, data, contact_id):
        tags = data.pop("tags", None)
        contact = service.update_contact(session(), workspace_id(), contact_id, data)
        if tags:
            SqlDirectory().add_tags(session(), workspace_id(), [contact.id], tags)
        session().commit()
        return _out([contact])[0]

    @permission("contacts.write")
    @blp.response(204)
    def delete(self, contact_id):
        service.get_contact(session(), workspace_id(), contact_id)
        service.delete_contacts(session(), workspace_id(), [contact_id])
        session().commit()


@blp.route("/bulk-tags")
class BulkTags(MethodView):
    @permission("tags.assign")
    @blp.arguments(BulkTagIn)
    @blp.response(200, BulkTagOut)
    def post(self, data):
        directory = SqlDirectory()
        added = removed = 0
        if data["add"]:
            added = directory.add_tags(session(), workspace_id(), data["contact_ids"], data["add"])
        if data["remove"]:
            removed = directory.remove_tags(session(), workspace_id(), data["contact_ids"], data["remove"])
        session().commit()
        return {"added": added, "removed": removed}


@blp.route("/bulk-delete")
class BulkDelete(MethodView):
    @permission("contacts.write")
    @blp.arguments(BulkDeleteIn)
    @blp.response(200, DeletedOut)
    def post(self, data):
        deleted = service.delete_contacts(session(), workspace_id(), data["contact_ids"])
        session().commit()
        return {"deleted": deleted}
