"""The SMTP channel's batch: one mail per SMTP transaction, each recorded before the next goes out.

Why a module of its own: SendCloud batches are one provider call recorded in one statement, but
an SMTP account has no idempotency key, so the runner hands an SMTP batch here to send mail by
mail over one connection, record each mail as soon as the server has answered, and close the
batch (quota, statistics, campaign figures) from the recorded rows.  After a crash only the mail
in flight can be unrecorded; the worker taking the batch over flags it as a possible duplicate.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from .. import bulk_sql, quota
from ..errors import InvalidInput, ProviderError
from ..models import Campaign, CampaignRecipient, SendBatch
from ..providers.base import BatchMessage, Provider, Recipient, SendResult
from ..providers.smtp import Outgoing, SmtpProvider
from .runner import (
    MAX_RECIPIENT_ATTEMPTS,
    SENT,
    Member,
    RunContext,
    _AccountFacts,
    _Batch,
    _CampaignFacts,
    _provider,
    _retry_later,
)


def send_smtp_batch(
    session: Session,
    campaign: _CampaignFacts,
    account: _AccountFacts,
    batch: _Batch,
    members: Sequence[Member],
    message: BatchMessage,
    ctx: RunContext,
    now: dt.datetime,
) -> str:
    """One recipient per transaction: only the mail in flight at a crash can go out twice.

    A batch taken over after a crash had its first remaining recipient possibly in flight: that
    one is flagged ``possible_duplicate`` (it is re-sent with the same Message-ID).

    Per mail: the SMTP transaction, then ONE prepared UPDATE of the recipient, committed through
    a connection held for the batch (``_RecordConnection``; on PostgreSQL its round trip
    overlaps the next mail's envelope and is confirmed before that mail's message is written).
    The next mail is built while the server digests the one just written (between the
    provider's ``begin`` and ``complete``): only ever one mail is unrecorded at a time.
    The campaign's sent/failed figures, the submitted/sent statistics and the quota settlement
    are written once at the end of the batch from the batch's recorded rows
    (``finish_smtp_batch``), so they are exact whoever recorded which mail (a worker taking over
    after a crash included); the progress shown moves once per batch.
    """
    provider = _provider(session, ctx, account)
    assert batch.grant is not None
    table = CampaignRecipient.__table__
    if batch.status == "sending" and _was_interrupted(session, batch.id):
        first_id = members[0][0]
        session.execute(table.update().where(table.c.id == first_id).values(possible_duplicate=True))
        session.execute(
            update(Campaign)
            .where(Campaign.id == campaign.id)
            .values(possible_duplicates=Campaign.possible_duplicates + 1)
            .execution_options(synchronize_session=False)
        )
        session.commit()
    by_email = {r.email: r for r in message.recipients}
    mailer = _mailer(provider, message)
    session.commit()  # nothing of the session stays open while the records go through ``conn``
    with _RecordConnection(session) as conn:
        recorder = _Recorder(session, batch, conn, ctx)
        in_flight: tuple[Member, Any] | None = None
        for member in members:
            email = member[2]
            try:
                mail = mailer.compose(by_email[email])
            except InvalidInput as exc:
                mail = SendResult(email, "rejected", error=str(exc))
            if in_flight is not None:  # the server digested it while the next mail was built
                recorder.record(in_flight[0], mailer.complete(in_flight[1]))
                in_flight = None
            if isinstance(mail, SendResult):
                recorder.record(member, mail)
                continue
            try:
                refused = mailer.begin(mail, before_message=conn.confirm)
            except ProviderError as exc:
                if not recorder.recorded_any:
                    conn.close()
                    return _retry_later(session, campaign, batch, str(exc), ctx, now, throttled=False)
                refused = SendResult(email, "failed", error=f"temporary: {exc}")
            except InvalidInput as exc:
                refused = SendResult(email, "rejected", error=str(exc))
            if refused is not None:
                recorder.record(member, refused)
            else:
                in_flight = (member, mail)
        if in_flight is not None:
            recorder.record(in_flight[0], mailer.complete(in_flight[1]))
    finish_smtp_batch(session, campaign.workspace_id, campaign.id, batch, batch.grant, ctx.clock())
    session.commit()
    return SENT


class _Mailer(Protocol):
    """One mail in three steps: ``compose`` (pure computation, or the refusal), ``begin`` (the
    message written, ``None``; or the result when it was refused or sent at once), ``complete``
    (the server's final verdict on a mail ``begin`` left open)."""

    def compose(self, recipient: Recipient) -> Any: ...

    def begin(self, mail: Any, *, before_message: Callable[[], None]) -> SendResult | None: ...

    def complete(self, mail: Any) -> SendResult: ...


def _mailer(provider: Provider, message: BatchMessage) -> _Mailer:
    """The provider's own three steps for ``message`` (``SmtpProvider``), or the same steps
    over the generic interface for another provider or a message it cannot prepare."""
    if isinstance(provider, SmtpProvider):
        try:
            return _PreparedSmtp(provider, message, provider.prepare(message))
        except InvalidInput:
            pass  # every recipient gets the refusal through send_batch, below
    return _OneByOne(provider, message)


class _PreparedSmtp:
    """``SmtpProvider``'s three steps with the batch's shared parts prepared once."""

    def __init__(self, provider: SmtpProvider, message: BatchMessage, shared: Any) -> None:
        self._provider, self._message, self._shared = provider, message, shared

    def compose(self, recipient: Recipient) -> Outgoing | SendResult:
        return self._provider.compose(self._message, recipient, self._shared)

    def begin(self, mail: Outgoing, *, before_message: Callable[[], None]) -> SendResult | None:
        return self._provider.begin(mail, before_message=before_message)

    def complete(self, mail: Outgoing) -> SendResult:
        return self._provider.complete(mail)


class _OneByOne:
    """The three steps over ``send_batch``: one single-recipient batch per mail, its result
    known at ``begin``."""

    def __init__(self, provider: Provider, message: BatchMessage) -> None:
        self._provider, self._message = provider, message

    def compose(self, recipient: Recipient) -> Recipient:
        return recipient

    def begin(self, recipient: Recipient, *, before_message: Callable[[], None]) -> SendResult:
        before_message()
        return self._provider.send_batch(dataclasses.replace(self._message, recipients=[recipient]))[0]

    def complete(self, mail: Any) -> SendResult:
        raise AssertionError("a one-by-one send has its result at begin")


class _Recorder:
    """Records each mail's result as it is known, and keeps the batch's lease alive."""

    def __init__(self, session: Session, batch: _Batch, conn: _RecordConnection, ctx: RunContext) -> None:
        self._session, self._batch, self._conn, self._ctx = session, batch, conn, ctx
        self._lease_renewed_at = time.monotonic()
        self.recorded_any = False

    def record(self, member: Member, result: SendResult) -> None:
        recipient_id, _contact_id, _email, attempts = member
        ctx, conn = self._ctx, self._conn
        self.recorded_any = True
        ctx.step("smtp:after_send")
        attempts += 1
        reason = (result.error or None) and str(result.error)[:255]
        if result.status == "failed" and attempts < MAX_RECIPIENT_ATTEMPTS:
            conn.retry(recipient_id, reason, attempts)
        else:
            final = result.status if result.status in ("accepted", "unknown") else "failed"
            at = ctx.clock() if final != "failed" else None
            conn.final(recipient_id, final, reason, attempts, result.provider_message_id, at)
        ctx.step("smtp:recorded")
        if time.monotonic() - self._lease_renewed_at > ctx.batch_lease.total_seconds() / 3:
            self._lease_renewed_at = time.monotonic()
            self._session.execute(
                update(SendBatch)
                .where(SendBatch.id == self._batch.id)
                .values(lease_until=ctx.clock() + ctx.batch_lease)
                .execution_options(synchronize_session=False)
            )
            assert self._batch.grant is not None
            quota.renew_grant(self._session, self._batch.grant)
            self._session.commit()


class _RecordConnection:
    """The connection an SMTP batch records its mails through: one UPDATE per mail.

    Why not the session: an ORM commit (transaction bookkeeping, expiring the identity map,
    checking a connection in and out of the pool) cost more than the UPDATE itself, about a
    quarter of each mail's time.  A pooled driver connection is held for the batch.

    On SQLite (and PostgreSQL through a driver other than psycopg 3) each UPDATE runs and
    commits before the next mail (``plugin.bulk_sql`` explains
    the values).  On PostgreSQL the UPDATE is a prepared statement in autocommit, *sent* as soon
    as the mail is accepted and *confirmed* (``confirm``) while the next mail's envelope is under
    way, just before its message is written: the database's round trip overlaps the SMTP
    server's instead of adding to it.  Nothing is weaker for that:

    - a statement written to the socket is executed and committed even if the worker is killed
      right after (the server reads what it received before noticing the closed connection; a
      reset can only follow a reply we had not read, i.e. a statement already committed);
    - a failed record is known before the next message goes out, which is then not sent, so
      at most the mail in flight can be unrecorded, as with a synchronous record.

    Commits do not wait for the WAL flush (``synchronous_commit = off`` for this connection
    only, reset before it goes back to the pool): a killed *worker* loses nothing; only a crash
    of the *database server* could lose the last fraction of a second of records, whose mails
    would then be re-sent on takeover (the first of them flagged as a possible duplicate).
    """

    def __init__(self, session: Session) -> None:
        self._engine = session.get_bind()
        self._raw: Any = None
        self._pg: Any = None  # libpq connection (psycopg.pq.PGconn) on PostgreSQL
        self._pending = False
        paramstyle = self._engine.dialect.paramstyle
        self._final_sql = bulk_sql.for_driver(_SMTP_FINAL, paramstyle)
        self._retry_sql = bulk_sql.for_driver(_SMTP_RETRY, paramstyle)
        self._sent_at_to_db = bulk_sql.to_db(session, CampaignRecipient.__table__.c.sent_at)

    def __enter__(self) -> _RecordConnection:
        self._raw = self._engine.raw_connection()
        driver = self._raw.driver_connection
        if self._engine.dialect.name == "postgresql" and hasattr(driver, "pgconn"):  # psycopg 3
            self._raw.rollback()
            driver.autocommit = True
            self._pg = driver.pgconn
            _check_all(self._pg.exec_(_PG_OPEN))
        return self

    def final(
        self,
        recipient_id: int,
        status: str,
        reason: str | None,
        attempts: int,
        message_id: str | None,
        at: dt.datetime | None,
    ) -> None:
        if self._pg is not None:
            sent_at = at.astimezone(dt.UTC).isoformat() if at is not None else None
            self._send(_PG_FINAL, (status, reason, attempts, message_id, sent_at, recipient_id))
            return
        sent_at = self._sent_at_to_db(at) if at is not None else None
        self._run(self._final_sql, (status, reason, attempts, message_id, sent_at, recipient_id))

    def retry(self, recipient_id: int, reason: str | None, attempts: int) -> None:
        if self._pg is not None:
            self._send(_PG_RETRY, (reason, attempts, recipient_id))
            return
        self._run(self._retry_sql, (reason, attempts, recipient_id))

    def confirm(self) -> None:
        """Return once the last record sent is committed; raise its error if it failed."""
        if not self._pending:
            return
        self._pending = False
        results = []
        while (result := self._pg.get_result()) is not None:
            results.append(result)
        _check_all(*results)

    def _run(self, sql: str, params: tuple[Any, ...]) -> None:
        cursor = self._raw.cursor()
        try:
            cursor.execute(sql, params)
        finally:
            cursor.close()
        self._raw.commit()

    def _send(self, name: bytes, params: tuple[Any, ...]) -> None:
        self.confirm()  # one statement in flight at a time
        self._pg.send_query_prepared(name, [None if v is None else str(v).encode() for v in params])
        self._pending = True

    def close(self) -> None:
        raw, self._raw = self._raw, None
        if raw is None:
            return
        try:
            if self._pg is not None:
                self.confirm()
                pg, self._pg = self._pg, None
                _check_all(pg.exec_(_PG_CLOSE))
                raw.driver_connection.autocommit = False
            else:
                raw.rollback()
        except Exception:  # a broken connection must not go back to the pool with our setting
            raw.invalidate()
            raise
        finally:
            raw.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


#: One mail's recorded result, and a temporary failure sending the recipient back to the queue
#: (driver SQL with ``?`` placeholders, see ``plugin.bulk_sql``).
_SMTP_FINAL = (
    "UPDATE marketing_campaign_recipients SET status = ?, reason = ?, attempts = ?, "
    "provider_message_id = ?, sent_at = ? WHERE id = ?"
)
_SMTP_RETRY = (
    "UPDATE marketing_campaign_recipients SET status = 'pending', reason = ?, attempts = ? "
    "WHERE id = ?"
)
#: The same two as server-side prepared statements for the pipelined PostgreSQL record, made
#: and dropped in one round trip each (by name: psycopg keeps prepared statements of its own on
#: the connection).
_PG_FINAL = b"marketing_smtp_final"
_PG_RETRY = b"marketing_smtp_retry"
_PG_OPEN = b"SET synchronous_commit TO off; PREPARE %s AS %s; PREPARE %s AS %s" % (
    _PG_FINAL,
    bulk_sql.for_libpq(_SMTP_FINAL),
    _PG_RETRY,
    bulk_sql.for_libpq(_SMTP_RETRY),
)
_PG_CLOSE = b"DEALLOCATE %s; DEALLOCATE %s; RESET synchronous_commit" % (_PG_FINAL, _PG_RETRY)
_COMMAND_OK = 1  # libpq's PGRES_COMMAND_OK


def _check_all(*results: Any) -> None:
    """Raise the database's own error for the first libpq result that is not a success."""
    for result in results:
        if result.status != _COMMAND_OK:
            from psycopg.errors import error_from_result

            raise error_from_result(result)


#: Recorded outcomes of a batch; a webhook or DSN may already have moved an accepted one on.
_ACCEPTED_LIKE = frozenset({"accepted", "delivered", "bounced", "invalid"})
_BATCH_OUTCOMES = select(CampaignRecipient.email, CampaignRecipient.status, CampaignRecipient.sent_at).where(
    CampaignRecipient.batch_id == bindparam("bid"),
    CampaignRecipient.status.in_(("accepted", "delivered", "bounced", "invalid", "failed", "unknown")),
)


def finish_smtp_batch(
    session: Session,
    workspace_id: int,
    campaign_id: int,
    batch: _Batch,
    grant: quota.Grant | None,
    now: dt.datetime,
) -> None:
    """Close an SMTP batch once: settle its quota and count its outcomes from the recorded rows.

    The conditional status change makes it happen once per batch, and counting the rows (not
    this worker's sends) keeps the figures exact when a worker took the batch over.  Does not
    commit.
    """
    from .. import counters

    closed = session.execute(
        update(SendBatch)
        .where(SendBatch.id == batch.id, SendBatch.status != "sent")
        .values(status="sent", sent_at=now, error=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    if closed != 1:
        return
    rows = session.execute(_BATCH_OUTCOMES, {"bid": batch.id}).all()
    accepted = sum(1 for r in rows if r.status in _ACCEPTED_LIKE)
    unknown = sum(1 for r in rows if r.status == "unknown")
    if grant is not None:
        quota.settle(session, grant, min(accepted + unknown, grant.amount))
    by_hour: dict[dt.datetime, list[tuple[str, bool]]] = {}
    for r in rows:
        at = r.sent_at or now
        by_hour.setdefault(counters.hour_bucket(at), []).append((r.email, r.status in _ACCEPTED_LIKE))
    cells: list[dict] = []
    for at, outcomes in by_hour.items():
        cells += counters.send_rows(
            workspace_id=workspace_id,
            campaign_id=campaign_id,
            at=at,
            template_id=batch.template_id,
            sender_id=batch.sender_id,
            outcomes=outcomes,
        )
    if cells:
        counters.add_rows(session, cells)
    values: dict[str, Any] = {
        "sent": Campaign.sent + accepted,
        "failed": Campaign.failed + len(rows) - accepted,
    }
    if accepted:
        values["consecutive_failures"] = 0
    session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def _was_interrupted(session: Session, batch_id: int) -> bool:
    attempts = session.scalar(select(SendBatch.attempts).where(SendBatch.id == batch_id)) or 0
    return attempts > 1
