"""Saved views: list with counts, create, update, delete, count, and a live count for rules."""

from __future__ import annotations

from flask.views import MethodView

from ... import contacts as service
from ...schemas.common import MAX_ID, CountOut
from ...schemas.contacts import RulesIn, ViewIn, ViewOut, ViewPatch
from .common import permission, session, user_id, workspace_id
from .errors import api_blueprint

URL = "/views"
blp = api_blueprint("marketing_api_views", "Saved views (rule-based segments)")


def _out(view, count: int) -> dict:
    return {
        "id": view.id,
        "name": view.name,
        "description": view.description,
        "rules": view.rules,
        "count": count,
    }


@blp.route("")
class Views(MethodView):
    @permission("contacts.read")
    @blp.response(200, ViewOut(many=True))
    def get(self):
        return [_out(v, n) for v, n in service.list_views(session(), workspace_id())]

    @permission("views.write")
    @blp.arguments(ViewIn)
    @blp.response(201, ViewOut)
    def post(self, data):
        ws = workspace_id()
        view = service.create_view(
            session(),
            ws,
            name=data["name"],
            rules=data["rules"],
            description=data["description"],
            user_id=user_id(),
        )
        count = service.view_count(session(), ws, view.id)
        session().commit()
        return _out(view, count)


@blp.route(f"/<int(min=1,max={MAX_ID}):view_id>")
class ViewItem(MethodView):
    @permission("contacts.read")
    @blp.response(200, ViewOut)
    def get(self, view_id):
        ws = workspace_id()
        view = service.get_view(session(), ws, view_id)
        return _out(view, service.view_count(session(), ws, view_id))

    @permission("views.write")
    @blp.arguments(ViewPatch)
    @blp.response(200, ViewOut)
    def patch(self, data, view_id):
        ws = workspace_id()
        view = service.update_view(session(), ws, view_id, data)
        count = service.view_count(session(), ws, view_id)
        session().commit()
        return _out(view, count)

    @permission("views.write")
    @blp.response(204)
    def delete(self, view_id):
        service.delete_view(session(), workspace_id(), view_id)
        session().commit()


@blp.route(f"/<int(min=1,max={MAX_ID}):view_id>/count")
class ViewCount(MethodView):
    @permission("contacts.read")
    @blp.response(200, CountOut)
    def get(self, view_id):
        return {"count": service.view_count(session(), workspace_id(), view_id)}


@blp.route("/preview-count")
class PreviewCount(MethodView):
    @permission("contacts.read")
    @blp.arguments(RulesIn)
    @blp.response(200, CountOut)
    def post(self, data):
        return {"count": service.count_matching(session(), workspace_id(), data["rules"])}
