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


@cli_group.command("setup")
@click.option("--domain", required=True, help="sending domain, e.g. newsletter.example.com")
@click.option("--api-user", required=True, help="API_USER of the SendCloud account")
@click.option("--api-key", default=None, help="its API_KEY (asked with hidden input when omitted)")
@click.option("--workspace", default="default", show_default=True, help="organization key")
@click.option("--yes", is_flag=True, help="confirm that the domain binding cannot be changed later")
@click.option(
    "--webhook-app-key", default=None, help="webhook APP KEY from the SendCloud console (asked when needed)"
)
@click.option("--from-address", default=None, help="sender address on the domain (step 5)")
@click.option("--from-name", default=None, help="sender name")
@click.option("--reply-to", default=None, help="reply-to address (confirmed by mail)")
@click.option("--company", default=None, help="company name for the mail footer")
@click.option("--postal-address", default=None, help="postal address for the mail footer")
def setup(
    domain: str,
    api_user: str,
    api_key: str | None,
    workspace: str,
    yes: bool,
    webhook_app_key: str | None,
    from_address: str | None,
    from_name: str | None,
    reply_to: str | None,
    company: str | None,
    postal_address: str | None,
) -> None:
    """Bind a workspace to SendCloud: the setup wizard's steps, non-interactively.

    Safe to run again: every step finds what exists instead of creating it twice, and the run
    stops (exit status 2) where something outside is still needed (DNS records, the reply-to
    confirmation), printing what to do.
    """
    from .errors import InvalidInput, InvalidTransition
    from .setup_wizard import SetupWizard

    state = get_state()
    ws = ensure_workspace(state.session, workspace)
    wizard = SetupWizard(state.session, ws.id, state.settings, state.secrets)

    def step(action, *args, **kwargs):
        try:
            result = action(*args, **kwargs)
        except (InvalidInput, InvalidTransition) as exc:
            state.session.rollback()
            where = getattr(exc, "errors", None) or (
                {exc.field: str(exc)} if getattr(exc, "field", None) else {}
            )
            detail = "; ".join(f"{field}: {message}" for field, message in where.items()) or str(exc)
            raise click.ClickException(detail) from None
        state.session.commit()
        return result

    # 1. domain
    review = step(wizard.review_domain, domain)
    if review.is_apex:
        click.echo(
            f"warning: {review.name} is an apex domain: marketing mail would share "
            "its reputation with company mail."
        )
    if review.has_mx:
        click.echo(
            f"warning: {review.name} already receives mail (MX {', '.join(review.mx_hosts)}): "
            "replies and company mail could be affected."
        )
    if review.suggestion:
        click.echo(f"         consider a subdomain such as {review.suggestion}")
    if not yes:
        yes = click.confirm(f"Bind {review.name}? The binding cannot be changed later", default=False)
    step(wizard.submit_domain, review.name, confirmed=yes, warnings_acknowledged=True)
    click.echo(f"[1/6] domain        {review.name}")

    # 2. credentials
    if api_key is None:
        account = wizard.account()
        if account is None or account.api_user != api_user or not account.api_key_encrypted:
            api_key = click.prompt("API_KEY", hide_input=True)
    info = step(wizard.submit_credentials, api_user, api_key or "")
    click.echo(
        f"[2/6] credentials   {info.account_name or api_user} ({info.account_type or 'unknown type'}), "
        f"daily quota {info.daily_quota if info.daily_quota is not None else '?'}"
    )

    # 3. domain at SendCloud and DNS
    step(wizard.register_domain)
    checks = step(wizard.check_dns)
    click.echo("[3/6] DNS records")
    marks = {"pass": "ok", "fail": "FAIL", "error": "ERROR", "advice": "advice"}
    for check in checks:
        click.echo(
            f"  {marks.get(check.status, check.status):<7}{check.purpose:<10}{check.type:<6}{check.host}"
        )
        click.echo(f"         value: {check.expected}")
        if check.found:
            click.echo(f"         found: {' | '.join(check.found)}")
        if check.status != "pass":
            click.echo(f"         {check.message} {check.hint}".rstrip())
    if not wizard.dns_ready():
        click.echo("Publish the records above (DNS can take up to 48 hours), then run this command again.")
        raise SystemExit(2)
    step(wizard.finish_dns)

    # 4. API_USERs and webhook
    account = wizard.account()
    if not webhook_app_key and not account.webhook_app_key_encrypted:
        webhook_app_key = click.prompt("Webhook APP KEY (SendCloud console, WebHook page)", hide_input=True)
    step(wizard.finish_api_users, webhook_app_key or "")
    account = wizard.account()
    click.echo(f"[4/6] API_USERs     batch {account.batch_api_user}, trigger {account.trigger_api_user}")
    click.echo(f"      webhook       {account.webhook_url}")

    # 5. senders
    sender = wizard.sender()
    if from_address:
        sender = step(
            wizard.submit_sender,
            from_address=from_address,
            from_name=from_name or "",
            reply_to=reply_to or "",
            company_name=company or "",
            postal_address=postal_address or "",
        )
    if sender is None:
        click.echo(
            "[5/6] senders       missing: run again with --from-address, --from-name, --reply-to, "
            "--company and --postal-address"
        )
        raise SystemExit(2)
    if sender.reply_to_verified_at is None:
        click.echo(
            f"[5/6] senders       {sender.from_address}; waiting for the confirmation of {sender.reply_to}"
        )
        click.echo("      open the link in that mailbox, then run this command again.")
        raise SystemExit(2)
    step(wizard.finish_senders)
    click.echo(
        f"[5/6] senders       {sender.from_name} <{sender.from_address}>, replies to {sender.reply_to}"
    )

    # 6. done
    snapshot = step(wizard.finish)
    click.echo(
        f"[6/6] done          balance {snapshot.balance}, today's quota {snapshot.daily_quota} "
        f"(used {snapshot.used_today})"
    )
