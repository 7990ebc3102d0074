"""A host CRM other than the demo: its own users, layout, role and workspace hooks, CSRFProtect
and Flask-Babel.  The plugin must fit in without taking anything over."""

from __future__ import annotations

import re

import pytest
from flask import Flask, render_template_string
from flask_babel import Babel
from flask_login import LoginManager, UserMixin, current_user, login_user
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy.orm import DeclarativeBase

from plugin import Marketing, migrate
from plugin.crypto import SecretBox
from plugin.errors import ConfigurationError


class HostUser(UserMixin):
    def __init__(self, uid: str, crm_role: str, org: str) -> None:
        self.id, self.crm_role, self.org = uid, crm_role, org


USERS = {
    "1": HostUser("1", "boss", "north"),
    "2": HostUser("2", "seller", "south"),
    "3": HostUser("3", "guest", "north"),
}
ROLE_MAP = {"boss": "admin", "seller": "sales"}


@pytest.fixture
def host(tmp_path):
    class Base(DeclarativeBase):
        pass

    app = Flask("host", template_folder=str(tmp_path))
    (tmp_path / "host_layout.html").write_text(
        "<html><body><div id='host-chrome'>HOST</div>{% block content %}{% endblock %}</body></html>"
    )
    app.config.update(
        SECRET_KEY="host-secret",
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'host.sqlite'}",
        MARKETING_BASE_TEMPLATE="host_layout.html",
        MARKETING_URL_PREFIX="/growth/",
        MARKETING_SECRET_KEYS=["x" * 43 + "="],
    )
    db = SQLAlchemy(app, model_class=Base)
    CSRFProtect(app)
    Babel(app, locale_selector=lambda: "en")
    login = LoginManager(app)
    login.user_loader(USERS.get)
    marketing = Marketing(db=db)
    marketing.role_loader(lambda user: ROLE_MAP.get(user.crm_role))
    marketing.workspace_loader(lambda: "org-" + current_user.org)

    @app.get("/host/login/<uid>")
    def host_login(uid):
        login_user(USERS[uid])
        return "ok"

    @app.post("/host/form")
    def host_form():
        return "accepted"

    @app.get("/host/page")
    def host_page():
        return render_template_string("<form>{{ csrf_token() }}</form>")

    marketing.init_app(app)
    with app.app_context():
        migrate.upgrade(db.engine)
    return app


def test_pages_render_inside_the_host_layout_under_its_prefix(host):
    client = host.test_client()
    client.get("/host/login/1")
    page = client.get("/growth/")
    assert page.status_code == 200
    assert "id='host-chrome'" in page.get_data(as_text=True)


def test_host_role_hook_decides(host):
    client = host.test_client()
    client.get("/host/login/3")  # a guest: no marketing role
    assert client.get("/growth/").status_code == 403
    assert client.get("/growth/api/v1/me").status_code == 403


def test_host_csrf_still_protects_host_forms(host):
    client = host.test_client()
    assert client.post("/host/form").status_code == 400  # the host's CSRFProtect is untouched


def test_api_errors_are_json_but_host_errors_are_not(host):
    client = host.test_client()
    client.get("/host/login/1")
    api_missing = client.get("/growth/api/v1/nothing-here")
    assert api_missing.status_code == 404
    assert api_missing.is_json
    host_missing = client.get("/host/nothing-here")
    assert host_missing.status_code == 404
    assert not host_missing.is_json


def test_workspace_hook_scopes_records(host):
    client = host.test_client()
    client.get("/host/login/1")
    me = client.get("/growth/api/v1/me").get_json()
    assert me == {"user_id": "1", "role": "admin", "workspace": "org-north"}
    seller = host.test_client()
    seller.get("/host/login/2")
    assert seller.get("/growth/api/v1/me").get_json()["workspace"] == "org-south"


def test_secret_box_round_trip_and_rotation():
    old, new = SecretBox(("a" * 43 + "=",)), SecretBox(("b" * 43 + "=", "a" * 43 + "="))
    token = old.encrypt("api-key-123")
    assert "api-key-123" not in token
    assert new.decrypt(token) == "api-key-123"
    rotated = new.rotate(token)
    assert SecretBox(("b" * 43 + "=",)).decrypt(rotated) == "api-key-123"
    with pytest.raises(ConfigurationError, match="cannot be decrypted"):
        SecretBox(("c" * 43 + "=",)).decrypt(token)
    assert "a" * 10 not in repr(new)


def test_secret_box_refuses_missing_or_bad_keys():
    with pytest.raises(ConfigurationError, match="MARKETING_SECRET_KEYS is empty"):
        SecretBox(())
    with pytest.raises(ConfigurationError, match="not a Fernet key"):
        SecretBox(("short",))


def test_locale_switch_uses_the_host_babel(host):
    client = host.test_client()
    client.get("/host/login/1")
    html = client.get("/growth/").get_data(as_text=True)
    assert re.search(r"Marketing overview", html)
