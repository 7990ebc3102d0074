"""Who the caller is, as the plugin sees them."""

from __future__ import annotations

from flask.views import MethodView
from flask_login import current_user

from ...access import current_workspace
from ...extension import get_state
from ...schemas.contacts import MeOut
from .errors import api_blueprint

URL = "/me"
blp = api_blueprint("marketing_api_me", "The authenticated caller")


@blp.route("")
class Me(MethodView):
    @blp.response(200, MeOut)
    def get(self):
        state = get_state()
        ws = current_workspace(state.session, state.workspace_key)
        return {
            "user_id": str(current_user.get_id()),
            "role": state.role_loader(current_user._get_current_object()),
            "workspace": ws.key,
        }
