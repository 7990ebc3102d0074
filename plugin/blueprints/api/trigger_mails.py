"""``POST /trigger-mails``: one transactional mail, sent at once, idempotent per client key.

201 with the mail's state when this request made the mail, 200 with the same body when the key
was seen before (nothing is sent again).  The mail's ``status`` says how sending went (``sent``,
``failed`` with ``error``, ...): a mail the quota or the provider refused is still a created
resource.  ``GET`` lists the log with filters and reads one mail.
"""

from __future__ import annotations

from flask import current_app, request
from flask.views import MethodView

from ... import trigger_mail as service
from ...errors import InvalidInput
from ...schemas.common import MAX_BIG_ID
from ...schemas.trigger_mails import TriggerMailIn, TriggerMailListArgs, TriggerMailOut, TriggerMailPageOut
from .common import permission, session, user_id, workspace_id
from .errors import api_blueprint

URL = "/trigger-mails"
blp = api_blueprint("marketing_api_trigger_mails", "Trigger (transactional) mail")

KEY_HEADER = "Idempotency-Key"
KEY_PARAMETER = {
    "in": "header",
    "name": KEY_HEADER,
    "required": False,
    "description": "The client's idempotency key (instead of idempotency_key in the body).",
    "schema": {"type": "string", "minLength": 1, "maxLength": service.MAX_KEY_LENGTH},
}


def _key(data: dict) -> str:
    body_key = data.get("idempotency_key")
    header_key = request.headers.get(KEY_HEADER)
    if body_key and header_key and body_key.strip() != header_key.strip():
        raise InvalidInput(
            f"the {KEY_HEADER} header and idempotency_key differ; send one of them", field="idempotency_key"
        )
    key = body_key or header_key
    if not key:
        raise InvalidInput(
            f"an idempotency key is required (idempotency_key or the {KEY_HEADER} header)",
            field="idempotency_key",
        )
    return service.check_key(key)


@blp.route("")
class TriggerMails(MethodView):
    @permission("view")
    @blp.arguments(TriggerMailListArgs, location="query")
    @blp.response(200, TriggerMailPageOut)
    def get(self, args):
        page = service.list_mails(
            session(),
            workspace_id(),
            q=args["q"],
            status=args["status"],
            to=args["to"],
            sort=args["sort"],
            order=args["order"],
            page=args["page"],
            per_page=args["per_page"],
        )
        return {
            "items": page.items,
            "total": page.total,
            "page": page.page,
            "per_page": page.per_page,
            "pages": page.pages,
        }

    @permission("campaigns.write")
    @blp.doc(parameters=[KEY_PARAMETER])
    @blp.arguments(TriggerMailIn)
    @blp.response(201, TriggerMailOut, description="The mail was made by this request.")
    @blp.alt_response(200, schema=TriggerMailOut, description="The key was seen before: the same mail.")
    def post(self, data):
        mail, created = service.submit(
            session(),
            workspace_id(),
            to=data["to"],
            idempotency_key=_key(data),
            template_id=data["template_id"],
            subject=data["subject"],
            html=data["html"],
            text=data["text"],
            variables=data["variables"],
            account_id=data["account_id"],
            sender_id=data["sender_id"],
            created_by=user_id(),
            ctx=service.context_from_app(current_app),
        )
        return mail, (201 if created else 200)


@blp.route(f"/<int(min=1,max={MAX_BIG_ID}):mail_id>")
class TriggerMailItem(MethodView):
    @permission("view")
    @blp.response(200, TriggerMailOut)
    def get(self, mail_id):
        return service.get_mail(session(), workspace_id(), mail_id)
