"""Tags: list with member counts, create, rename, delete, count."""

from __future__ import annotations

from flask.views import MethodView

from ... import contacts as service
from ...schemas.common import MAX_ID, CountOut
from ...schemas.contacts import TagIn, TagOut
from .common import permission, session, workspace_id
from .errors import api_blueprint

URL = "/tags"
blp = api_blueprint("marketing_api_tags", "Tags (contact lists)")


@blp.route("")
class Tags(MethodView):
    @permission("contacts.read")
    @blp.response(200, TagOut(many=True))
    def get(self):
        return service.list_tags(session(), workspace_id())

    @permission("tags.write")
    @blp.arguments(TagIn)
    @blp.response(201, TagOut)
    def post(self, data):
        tag = service.create_tag(session(), workspace_id(), data["name"], data["color"])
        session().commit()
        return {"id": tag.id, "name": tag.name, "color": tag.color, "count": 0}


@blp.route(f"/<int(min=1,max={MAX_ID}):tag_id>")
class TagItem(MethodView):
    @permission("contacts.read")
    @blp.response(200, TagOut)
    def get(self, tag_id):
        tag = service.get_tag(session(), workspace_id(), tag_id)
        count = service.tag_count(session(), workspace_id(), tag_id)
        return {"id": tag.id, "name": tag.name, "color": tag.color, "count": count}

    @permission("tags.write")
    @blp.arguments(TagIn)
    @blp.response(200, TagOut)
    def patch(self, data, tag_id):
        tag = service.rename_tag(session(), workspace_id(), tag_id, data["name"], data["color"])
        count = service.tag_count(session(), workspace_id(), tag_id)
        session().commit()
        return {"id": tag.id, "name": tag.name, "color": tag.color, "count": count}

    @permission("tags.write")
    @blp.response(204)
    def delete(self, tag_id):
        service.delete_tag(session(), workspace_id(), tag_id)
        session().commit()


@blp.route(f"/<int(min=1,max={MAX_ID}):tag_id>/count")
class TagCount(MethodView):
    @permission("contacts.read")
    @blp.response(200, CountOut)
    def get(self, tag_id):
        return {"count": service.tag_count(session(), workspace_id(), tag_id)}
