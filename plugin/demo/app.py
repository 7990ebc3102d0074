"""Application factory of the demo CRM.

Configuration comes from (later wins): built-in defaults, ``instance/demo.cfg`` if present,
``instance/secrets.json`` (generated on first start, git-ignored), the ``config`` argument, and
``CRM_*`` environment variables (``CRM_SQLALCHEMY_DATABASE_URI=...``).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from flask import Flask, redirect, url_for
from flask_login import LoginManager, current_user
from flask_wtf.csrf import CSRFProtect

from ..extension import Marketing
from .models import User, db

REPO_ROOT = Path(__file__).resolve().parents[2]


def _instance_path() -> str:
    return os.environ.get("CRM_INSTANCE_PATH") or str(REPO_ROOT / "instance")


def _load_or_create_secrets(instance: Path) -> dict[str, Any]:
    """Keys the demo needs, generated once into the (git-ignored) instance folder."""
    path = instance / "secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    instance.mkdir(parents=True, exist_ok=True)
    data = {
        "SECRET_KEY": secrets.token_urlsafe(48),
        "MARKETING_SECRET_KEYS": [Fernet.generate_key().decode()],
    }
    path.write_text(json.dumps(data, indent=2))
    path.chmod(0o600)
    return data


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__, instance_path=_instance_path(), instance_relative_config=True)
    instance = Path(app.instance_path)
    app.config.update(
        SQLALCHEMY_DATABASE_URI="sqlite:///demo.sqlite",
        MARKETING_BASE_TEMPLATE="demo/layout.html",
        MARKETING_PUBLIC_BASE_URL="http://127.0.0.1:5000",
        SANDBOX_SMTP_PORT=2525,
        MAX_CONTENT_LENGTH=25 * 1024 * 1024,
    )
    app.config.from_pyfile("demo.cfg", silent=True)
    if not (config or {}).get("SECRET_KEY"):
        app.config.update(_load_or_create_secrets(instance))
    app.config.update(config or {})
    app.config.from_prefixed_env("CRM")

    db.init_app(app)
    CSRFProtect(app)
    login = LoginManager(app)
    login.login_view = "crm.login"

    @login.user_loader
    def _load_user(user_id: str) -> User | None:
        return db.session.get(User, int(user_id)) if user_id.isdigit() else None

    marketing = Marketing(db=db)

    @marketing.workspace_loader
    def _organization() -> str:
        return current_user.organization if current_user.is_authenticated else "default"

    marketing.init_app(app)

    from . import cli, pages_import, pages_sandbox, pages_tags, pages_views, views  # noqa: F401

    app.register_blueprint(views.bp)
    app.jinja_env.globals["url_map_endpoints"] = lambda: app.view_functions.keys()
    app.cli.add_command(cli.crm_group)

    @app.get("/")
    def _home():
        return redirect(url_for("crm.contacts"))

    return app
