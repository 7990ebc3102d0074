"""Application factory of the demo CRM.

Configuration comes from (later wins): built-in defaults, ``instance/demo.cfg`` if present,
``instance/secrets.json`` (generated on first start, git-ignored), the ``config`` argument, and
``CRM_*`` environment variables (``CRM_SQLALCHEMY_DATABASE_URI=...``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from flask import Flask, redirect, url_for
from flask_login import LoginManager, current_user
from flask_wtf.csrf import CSRFProtect

from ..extension import Marketing
from ..i18n import lazy_gettext
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
    if _truthy(app.config.get("MARKETING_SANDBOX")):
        start_sendcloud_sandbox(app)

    db.init_app(app)
    CSRFProtect(app)
    login = LoginManager(app)
    login.login_view = "crm.login"
    login.login_message = lazy_gettext("Please log in to access this page.")
    login.login_message_category = "info"

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
    app.cli.add_command(cli.crm_group)

    @app.get("/")
    def _home():
        return redirect(url_for("crm.contacts"))

    return app


log = logging.getLogger(__name__)

#: The simulator's account the demo's setup page suggests (a sandbox credential, not a secret).
DEMO_API_USER = "demo_api_user"
DEMO_API_KEY = "demo_api_key"


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def start_sendcloud_sandbox(app: Flask) -> None:
    """MARKETING_SANDBOX: run the SendCloud simulator and the DNS responder in this process.

    The plugin is pointed at them through its ordinary settings (API base URL, nameserver and
    port), so the wizard runs exactly the code it runs against the real services.  Both servers
    are kept in ``app.extensions`` (``sandbox_sendcloud``, ``sandbox_dns``) for the setup page's
    demo panel and are stopped by ``stop_sendcloud_sandbox``.
    """
    from ..sandbox.dns import DnsResponder
    from ..sandbox.sendcloud import SendCloudSimulator, SimulatorServer

    dns = DnsResponder().start()
    simulator = SendCloudSimulator(dns_nameserver=dns.nameserver)
    simulator.add_account(DEMO_API_USER, DEMO_API_KEY, quota=2000)
    server = SimulatorServer(simulator).start()
    app.config.update(
        MARKETING_SENDCLOUD_API_BASE=server.url,
        MARKETING_DNS_NAMESERVERS=[dns.host],
        MARKETING_DNS_PORT=dns.port,
        MARKETING_SANDBOX_ACCOUNT={"api_user": DEMO_API_USER, "api_key": DEMO_API_KEY},
    )
    app.extensions["sandbox_dns"] = dns
    app.extensions["sandbox_sendcloud"] = server


def restore_sandbox_account(app: Flask) -> list[str]:
    """Tell a freshly started simulator the API_USERs and webhook an earlier demo run set up.

    Why: the simulator keeps its accounts in memory, while the wizard's result (the batch and
    trigger API_USERs it created, their keys, the registered webhook and its signing key) is in
    the database, so a restarted demo could no longer sync or send ("认证失败") nor receive
    events.  Only API_USERs the wizard made on the demo's own sandbox account are restored; one
    whose key cannot be read (another instance's secrets) is skipped with a warning.  Returns
    the restored names.  Needs an app context.
    """
    from sqlalchemy import select

    from .. import webhooks
    from ..errors import ConfigurationError
    from ..extension import get_state
    from ..models import ProviderAccount, SendingDomain

    server = app.extensions.get("sandbox_sendcloud")
    if server is None:
        return []
    simulator = server.simulator
    state = get_state()
    session = state.session
    restored: list[str] = []
    try:
        accounts = session.scalars(
            select(ProviderAccount).where(
                ProviderAccount.kind == "sendcloud", ProviderAccount.api_user == DEMO_API_USER
            )
        ).all()
        for account in accounts:
            domain = session.scalar(
                select(SendingDomain.name).where(SendingDomain.workspace_id == account.workspace_id).limit(1)
            )
            users = (
                (account.batch_api_user, account.batch_api_key_encrypted, "batch"),
                (account.trigger_api_user, account.trigger_api_key_encrypted, "trigger"),
            )
            try:
                for name, key, kind in users:
                    if not name or not key or simulator.knows(name):
                        continue
                    simulator.add_api_user(
                        DEMO_API_USER,
                        name,
                        state.secrets.decrypt(key),
                        email_type=kind,
                        domain=domain,
                    )
                    restored.append(name)
                if account.webhook_registered_at is not None and account.webhook_app_key_encrypted:
                    simulator.webhook_app_key = state.secrets.decrypt(account.webhook_app_key_encrypted)
                    simulator.set_webhook_target(
                        account.webhook_url or webhooks.webhook_url(state.settings, account.workspace_id)
                    )
            except ConfigurationError as exc:
                log.warning("sandbox account %s not restored: %s", account.id, exc)
    finally:
        session.rollback()
    return restored


def stop_sendcloud_sandbox(app: Flask) -> None:
    for key in ("sandbox_sendcloud", "sandbox_dns"):
        server = app.extensions.pop(key, None)
        if server is not None:
            server.stop()
