"""``Marketing``: the one object a host CRM creates; ``init_app`` wires everything else.

It is the only module that touches the Flask app: it reads the configuration, registers the admin
pages, the JSON API, the public endpoints and the CLI, installs the translation domain, and keeps
the per-app state in ``app.extensions["marketing"]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flask import Flask, current_app
from sqlalchemy import event
from sqlalchemy.orm import Session

from . import access
from .config import load_settings
from .crypto import SecretBox
from .directory import ContactDirectory, SqlDirectory
from .errors import ConfigurationError
from .i18n import install_babel


@dataclasses.dataclass
class MarketingState:
    """What the plugin keeps per app (never on the extension object, which may serve many)."""

    extension: Marketing
    settings: Any
    db: Any
    directory: ContactDirectory
    _secrets: SecretBox | None = None

    @property
    def session(self) -> Session:
        return self.db.session

    @property
    def secrets(self) -> SecretBox:
        if self._secrets is None:
            self._secrets = SecretBox(self.settings.secret_keys)
        return self._secrets

    def role_loader(self, user: Any) -> str | None:
        return self.extension._role_loader(user)

    def workspace_key(self) -> str:
        return self.extension._workspace_loader()


class Marketing:
    """The email-marketing plugin.

    ``Marketing(app, db=db)`` or ``marketing = Marketing(db=db)`` then ``marketing.init_app(app)``.
    ``db`` is the host's Flask-SQLAlchemy object (Flask-SQLAlchemy allows one per app);
    ``directory`` maps the host's contacts, tags and views (default: the plugin's own tables).
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        db: Any = None,
        directory: ContactDirectory | None = None,
    ) -> None:
        self._db = db
        self._directory = directory
        self._role_loader: access.RoleLoader = access.default_role_loader
        self._workspace_loader: access.WorkspaceLoader = access.default_workspace_loader
        if app is not None:
            self.init_app(app)

    # -- hooks a host may replace -------------------------------------------------------------
    def role_loader(self, func: access.RoleLoader) -> access.RoleLoader:
        """Decorator: ``func(user) -> "admin" | "marketer" | "sales" | None``."""
        self._role_loader = func
        return func

    def workspace_loader(self, func: access.WorkspaceLoader) -> access.WorkspaceLoader:
        """Decorator: ``func() -> str``, the key of the current request's organization."""
        self._workspace_loader = func
        return func

    # -- wiring --------------------------------------------------------------------------------
    def init_app(self, app: Flask, *, db: Any = None, directory: ContactDirectory | None = None) -> None:
        if "marketing" in app.extensions:
            raise RuntimeError("the marketing plugin is already registered on this app")
        db = db or self._db or app.extensions.get("sqlalchemy")
        if db is None:
            raise ConfigurationError(
                "Marketing needs the host's Flask-SQLAlchemy object: Marketing(app, db=db)"
            )
        settings = load_settings(app.config)
        state = MarketingState(
            extension=self,
            settings=settings,
            db=db,
            directory=directory or self._directory or SqlDirectory(),
        )
        app.extensions["marketing"] = state

        _tune_sqlite(app, db)
        install_babel(app)

        from .blueprints import register_blueprints
        from .cli import cli_group

        register_blueprints(app, settings)
        app.cli.add_command(cli_group)


def get_state() -> MarketingState:
    """The plugin state of the current app."""
    try:
        return current_app.extensions["marketing"]
    except KeyError as exc:
        raise RuntimeError("Marketing.init_app(app) was not called for this app") from exc


def _tune_sqlite(app: Flask, db: Any) -> None:
    """WAL and a busy timeout, so the web process and a worker can write without "locked".

    ``synchronous=NORMAL`` is SQLite's recommended setting with WAL: a commit no longer waits for
    an fsync, which the runner's per-batch (and SMTP per-recipient) commits would otherwise pay
    5 ms each.  A killed worker loses nothing that was committed; only a power cut may lose the
    last transactions, which the runner then redoes (SendCloud batches keep their keys).
    """
    with app.app_context():
        engine = db.engine
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
