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


@cli_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--workspace", default="default", show_default=True, help="organization key")
@click.option("--tag", "tag_name", default=None, help="tag the imported (and matched) contacts")
@click.option(
    "--encoding",
    default="auto",
    show_default=True,
    help="auto, utf-8, utf-8-sig, gb18030 (GBK), big5 or latin-1",
)
@click.option(
    "--map",
    "maps",
    multiple=True,
    metavar="TARGET=COLUMN",
    help="email=Email, name=姓名, custom:industry=行业 ...; COLUMN is a header or a column number. "
    "Without --map the columns are guessed from the header.",
)
@click.option("--update-existing", is_flag=True, help="fill existing contacts with the file's values")
@click.option("--user", "user_id", default=None, help="host user id recorded on the import")
def import_contacts(
    file: str,
    workspace: str,
    tag_name: str | None,
    encoding: str,
    maps: tuple[str, ...],
    update_existing: bool,
    user_id: str | None,
) -> None:
    """Import contacts from a CSV, TXT or XLSX FILE and print the report."""
    from pathlib import Path

    from . import importing
    from .errors import ImportFileError, InvalidInput

    state = get_state()
    settings = state.settings
    path = Path(file)
    try:
        table = importing.read_table(
            path.read_bytes(),
            path.name,
            encoding,
            max_bytes=settings.import_max_bytes,
            max_rows=settings.import_max_rows,
        )
        ws = ensure_workspace(state.session, workspace)
        if maps:
            pairs = {}
            for item in maps:
                target, sep, column = item.partition("=")
                if not sep or not target.strip() or not column.strip():
                    raise click.BadParameter(f"{item!r}: write TARGET=COLUMN", param_hint="--map")
                pairs[target.strip()] = column.strip()
            mapping = importing.mapping_from_names(table, pairs)
        else:
            mapping = importing.suggest_mapping(
                table.header, importing.existing_custom_fields(state.session, ws.id)
            )
        job = importing.run_import(
            state.session,
            ws.id,
            table,
            mapping,
            tag_name=tag_name,
            user_id=user_id,
            filename=path.name,
            update_existing=update_existing,
        )
        state.session.commit()
    except (ImportFileError, InvalidInput) as exc:
        state.session.rollback()
        raise click.ClickException(str(exc)) from exc
    except BaseException:
        state.session.rollback()
        raise
    total_errors = importing.errors_total(job)
    click.echo(f"import #{job.id}: {path.name} ({job.encoding or 'xlsx'})")
    for label, value in (
        ("rows", job.total_rows),
        ("imported", job.imported),
        ("updated", job.updated),
        ("duplicates", job.duplicates),
        ("errors", total_errors),
    ):
        click.echo(f"  {label:<11}{value}")
    for entry in job.errors[:50]:
        click.echo(f"  line {entry['line']}: {entry['email'] or '(empty)'}: {entry['reason']}")
    if total_errors > 50:
        click.echo(f"  ... {total_errors - 50} more errors (see the import report page)")


@cli_group.command("sandbox")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=8025, show_default=True, help="HTTP port of the SendCloud simulator")
@click.option("--dns-port", default=5353, show_default=True, help="UDP+TCP port of the sandbox DNS")
@click.option("--api-user", default="sandbox_main", show_default=True, help="the account's first API_USER")
@click.option("--api-key", default="sandbox-api-key", show_default=True, help="its API_KEY")
@click.option("--app-key", default="sandbox-webhook-app-key", show_default=True, help="webhook APP KEY")
@click.option("--quota", default=1000, show_default=True, help="daily quota of the account")
@click.option("--balance", default="100", show_default=True, help="balance of the account")
@click.option(
    "--publish-dns/--no-publish-dns",
    default=False,
    show_default=True,
    help="publish a domain's records in the sandbox DNS as soon as it is added (skips the DNS step)",
)
def sandbox(
    host: str,
    port: int,
    dns_port: int,
    api_user: str,
    api_key: str,
    app_key: str,
    quota: int,
    balance: str,
    publish_dns: bool,
) -> None:
    """Run the SendCloud simulator (and the sandbox DNS) in the foreground until Ctrl-C."""
    import threading
    from decimal import Decimal

    from .sandbox.sendcloud import SendCloudSimulator, SimulatorServer

    try:
        from .sandbox.dns import DnsResponder
    except ImportError:  # pragma: no cover - the DNS responder is optional
        DnsResponder = None

    dns = DnsResponder(host, dns_port).start() if DnsResponder is not None else None
    simulator = SendCloudSimulator(
        dns_nameserver=dns.nameserver if dns is not None else None,
        webhook_app_key=app_key,
    )
    simulator.add_account(api_user, api_key, balance=Decimal(balance), quota=quota)
    if dns is not None and publish_dns:

        def publish(domain: str, records: dict[str, tuple[str, str, str]]) -> None:
            grouped: dict[tuple[str, str], list[str]] = {}
            for rtype, name, value in records.values():
                grouped.setdefault((name, rtype), []).append(f"10 {value}." if rtype == "MX" else value)
            for (name, rtype), values in grouped.items():
                dns.set(name, rtype, values)

        simulator.on_domain_added = publish
    server = SimulatorServer(simulator, host=host, port=port, quiet=False).start()
    click.echo(f"SendCloud simulator: {server.url}  (SGP style: {server.root}/api)")
    click.echo(f"  outbox page:       {server.root}/_sandbox/")
    click.echo(f"  account:           API_USER={api_user} API_KEY={api_key}")
    click.echo(f"  webhook app key:   {app_key}")
    if dns is not None:
        click.echo(f"Sandbox DNS:         {dns.host}:{dns.port} (UDP and TCP)")
    click.echo("Press Ctrl-C to stop.")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        click.echo("stopping")
    finally:
        server.stop()
        if dns is not None:
            dns.stop()
