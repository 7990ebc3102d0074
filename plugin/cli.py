"""``flask marketing ...``: database migrations, API tokens, contact import."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from . import migrate
from .access import ensure_workspace, issue_token
from .extension import get_state

cli_group = AppGroup("marketing", help="Email-marketing plugin commands.")


@cli_group.group("db")
def db_group() -> None:
    """The plugin's database migrations (its own Alembic history)."""


@db_group.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    migrate.upgrade(get_state().db.engine, revision)
    click.echo(f"marketing tables upgraded to {revision}")


@db_group.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION."""
    migrate.downgrade(get_state().db.engine, revision)


@db_group.command("current")
def db_current() -> None:
    """Show the applied revision."""
    migrate.current(get_state().db.engine)


@db_group.command("revision")
@click.option("-m", "--message", required=True)
def db_revision(message: str) -> None:
    """(Plugin developers) autogenerate a migration from the models."""
    migrate.revision(get_state().db.engine, message)


@cli_group.command("create-token")
@click.option("--user", "user_id", required=True, help="host user id")
@click.option("--name", required=True, help="what the token is for")
@click.option("--workspace", default="default", show_default=True)
def create_token(user_id: str, name: str, workspace: str) -> None:
    """Issue an API token for a user; it is printed once."""
    state = get_state()
    ws = ensure_workspace(state.session, workspace)
    token = issue_token(state.session, workspace_id=ws.id, user_id=user_id, name=name)
    state.session.commit()
    click.echo(token)
