"""``flask marketing ...``: database migrations, API tokens, contact import, scheduler, workers, send."""

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


@cli_group.command("sync-quota")
@click.option("--workspace", default=None, help="organization key (default: every workspace)")
def sync_quota(workspace: str | None) -> None:
    """Fetch balance and quota of the sending accounts now and reconcile today's ledgers.

    The scheduler does this every MARKETING_QUOTA_SYNC_MINUTES; this is for cron-less setups and
    for checking an account by hand. Exits with 1 when an account could not be synced.
    """
    from flask import current_app
    from sqlalchemy import select

    from . import quota_sync
    from .channels import provider_factory
    from .models import ProviderAccount

    state = get_state()
    factory = provider_factory(current_app.extensions, secrets=state.secrets, settings=state.settings)
    if workspace is not None:
        ws = ensure_workspace(state.session, workspace)
        state.session.commit()
        workspace_ids = [ws.id]
    else:
        workspace_ids = sorted(set(state.session.scalars(select(ProviderAccount.workspace_id)).all()))
    failed = 0
    total = 0
    for workspace_id in workspace_ids:
        for outcome in quota_sync.sync_workspace(state.session, workspace_id, factory=factory):
            total += 1
            snap = outcome.snapshot
            if snap is None:
                failed += 1
                click.echo(f"{outcome.account_name}: FAILED {outcome.error}", err=True)
            else:
                click.echo(
                    f"{outcome.account_name}: balance {snap.balance}, available {snap.available_balance}, "
                    f"quota {snap.daily_quota}, used today {snap.used_today}"
                )
    click.echo(f"synced {total - failed} of {total} accounts")
    if failed:
        raise SystemExit(1)


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


# ----------------------------------------------------------------------- scheduler and workers


@cli_group.command("scheduler")
@click.option(
    "--tick", "tick_seconds", type=float, default=None, help="seconds between ticks (default: setting)"
)
def scheduler_command(tick_seconds: float | None) -> None:
    """Run the campaign scheduler in the foreground until Ctrl-C or SIGTERM.

    Run it in exactly one place per deployment; a second one waits idle (database lease) and
    takes over when the first stops.
    """
    import signal
    import threading

    from flask import current_app

    from .scheduler import Scheduler

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    scheduler = Scheduler(app, tick_seconds=tick_seconds)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    scheduler.start()
    click.echo(
        f"scheduler {scheduler.holder}: tick every {scheduler.tick_seconds:g} s, "
        f"backend {get_state().settings.execution_backend}; Ctrl-C to stop"
    )
    try:
        while not done.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        click.echo("stopping (running batches finish first)")
        scheduler.stop()


@cli_group.command("worker")
@click.option("--concurrency", "-c", default=4, show_default=True, help="campaigns run at once")
@click.option("--pool", default="threads", show_default=True, help="celery pool: threads, solo or prefork")
@click.option("--queue", "-Q", default=None, help="queue (default: MARKETING_CELERY_QUEUE or 'marketing')")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
def worker_command(concurrency: int, pool: str, queue: str | None, loglevel: str) -> None:
    """Run a Celery worker for this app (execution backend ``celery``; Redis broker)."""
    import os

    from flask import current_app

    from .tasks import celery_queue, make_celery

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    celery = make_celery(app)
    celery.worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            f"--pool={pool}",
            f"--queues={queue or celery_queue(app)}",
            f"--loglevel={loglevel}",
            f"--hostname=marketing-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@cli_group.command("send")
@click.argument("campaign_id", type=int)
def send_command(campaign_id: int) -> None:
    """Start CAMPAIGN_ID if it is not running yet and run it here until it completes or pauses."""
    import signal
    import threading

    from flask import current_app
    from sqlalchemy import select

    from .campaigns import lifecycle, runner
    from .errors import InvalidTransition
    from .models import Campaign
    from .tasks import Heartbeat, run_in_app, worker_identity

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    state = get_state()
    session = state.session
    status = session.execute(select(Campaign.status).where(Campaign.id == campaign_id)).scalar()
    if status is None:
        raise click.ClickException(f"no campaign {campaign_id}")
    if status in lifecycle.FINAL or status == lifecycle.PAUSED:
        raise click.ClickException(
            f"campaign {campaign_id} is {status}: nothing to send"
            + (" (resume it first)" if status == lifecycle.PAUSED else "")
        )
    if status in (lifecycle.DRAFT, lifecycle.SCHEDULED, lifecycle.MISSED, lifecycle.AWAITING_APPROVAL):
        try:
            runner.start(session, campaign_id, runner.context_from_app(app))
        except InvalidTransition as exc:
            session.rollback()
            raise click.ClickException(str(exc)) from exc
    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = worker_identity("cli")
    beat = Heartbeat(state.db.engine, worker)
    beat.add(campaign_id)
    try:
        result = run_in_app(app, campaign_id, worker_id=worker, should_stop=stop.is_set)
    except KeyboardInterrupt:
        stop.set()
        result = "interrupted"
    finally:
        beat.remove(campaign_id)
        beat.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    session.expire_all()
    campaign = session.get(Campaign, campaign_id)
    click.echo(
        f"campaign {campaign_id}: {result}; status {campaign.status}"
        + (f" ({campaign.pause_reason})" if campaign.pause_reason else "")
        + f"; sent {campaign.sent} of {campaign.total}, failed {campaign.failed}, skipped {campaign.skipped}"
    )
    if result == "error":
        raise SystemExit(1)
