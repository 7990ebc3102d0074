"""``flask crm ...``: create the demo database and seed it."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from .. import migrate
from .models import db
from .seed import seed_demo

crm_group = AppGroup("crm", help="Demo CRM commands.")


@crm_group.command("init")
@click.option("--contacts", default=10_000, show_default=True, help="synthetic contacts to create")
def init(contacts: int) -> None:
    """Create or migrate the database and seed demo data when it is empty."""
    db.create_all()
    migrate.upgrade(db.engine)
    created = seed_demo(db.session, contacts=contacts)
    click.echo("seeded demo data" if created else "demo data already present")
