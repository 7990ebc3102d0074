"""Thin views: load input with a schema, call one service, render or dump the result."""

from __future__ import annotations

from flask import Flask

from ..config import Settings
from . import (
    admin,
    campaign_stats,
    campaigns,
    public,
    quota_pages,
    replies,
    senders,
    setup,
    smtp_accounts,
    suppressions,
    templates_pages,
    trigger_mails,
)
from .api import register_api
from .security import exempt_from_host_csrf, install_template_globals


def register_blueprints(app: Flask, settings: Settings) -> None:
    admin_bp = admin.create_blueprint(settings)
    public_bp = public.create_blueprint(settings)
    app.register_blueprint(admin_bp, url_prefix=settings.url_prefix)
    app.register_blueprint(public_bp, url_prefix=settings.public_url_prefix)
    setup_bp = setup.create_blueprint(settings)
    app.register_blueprint(setup_bp, url_prefix=settings.url_prefix)
    page_blueprints = [
        module.create_blueprint(settings)
        for module in (
            templates_pages,
            campaigns,
            quota_pages,
            smtp_accounts,
            senders,
            trigger_mails,
            campaign_stats,
            suppressions,
            replies,
        )
    ]
    for bp in page_blueprints:
        app.register_blueprint(bp, url_prefix=settings.url_prefix)
    api_blueprints = register_api(app, settings)
    install_template_globals(app)
    exempt_from_host_csrf(app, [admin_bp, public_bp, setup_bp, *page_blueprints, *api_blueprints])
