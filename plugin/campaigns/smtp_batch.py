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
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from .. import bulk_sql, quota
from ..errors import InvalidInput, ProviderError
from ..models import Campaign, CampaignRecipient, SendBatch
from ..providers.base import BatchMessage, Recipient, SendResult
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

    Per mail: the SMTP transaction, then ONE prepared UPDATE of the recipient and a commit,
    through a connection held for the batch (``_RecordConnection``).  The campaign's sent/failed
    figures, the submitted/sent statistics and the quota settlement are written once at the end
    of the batch from the batch's recorded rows (``finish_smtp_batch``), so they are exact
    whoever recorded which mail (a worker taking over after a crash included); the progress
    shown moves once per batch.
    """
    provider = _provider(ctx, account)
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
    lease_renewed_at = time.monotonic()
    by_email = {r.email: r for r in message.recipients}
    # The parts every recipient shares (From, headers) are prepared once per batch when the
    # provider offers it; otherwise one-recipient batches through the generic interface.
    prepare = getattr(provider, "prepare", None)
    shared = None
    if prepare is not None:
        try:
            shared = prepare(message)
        except InvalidInput:
            shared = None  # every recipient gets the refusal below, as through send_batch

    def send(recipient: Recipient) -> SendResult:
        if shared is not None:
            return provider.send_prepared(message, recipient, shared)  # type: ignore[attr-defined]
        return provider.send_batch(dataclasses.replace(message, recipients=[recipient]))[0]

    session.commit()  # nothing of the session stays open while the records go through ``conn``
    sent_any = False
    with _RecordConnection(session) as conn:
        for recipient_id, _contact_id, email, attempts in members:
            try:
                result = send(by_email[email])
            except ProviderError as exc:
                if not sent_any:
                    conn.close()
                    return _retry_later(session, campaign, batch, str(exc), ctx, now, throttled=False)
                result = SendResult(email, "failed", error=f"temporary: {exc}")
            except InvalidInput as exc:
                result = SendResult(email, "rejected", error=str(exc))
            sent_any = True
            ctx.step("smtp:after_send")
            status = result.status
            attempts += 1
            if status == "failed" and attempts < MAX_RECIPIENT_ATTEMPTS:
                conn.retry(recipient_id, (result.error or None) and str(result.error)[:255], attempts)
            else:
                final = status if status in ("accepted", "unknown") else "failed"
                conn.final(
                    recipient_id,
                    final,
                    (result.error or None) and str(result.error)[:255],
                    attempts,
                    result.provider_message_id,
                    ctx.clock() if final != "failed" else None,
                )
            ctx.step("smtp:recorded")
            if time.monotonic() - lease_renewed_at > ctx.batch_lease.total_seconds() / 3:
                lease_renewed_at = time.monotonic()
                session.execute(
                    update(SendBatch)
                    .where(SendBatch.id == batch.id)
                    .values(lease_until=ctx.clock() + ctx.batch_lease)
                    .execution_options(synchronize_session=False)
                )
                quota.renew_grant(session, batch.grant)
                session.commit()
    finish_smtp_batch(session, campaign.workspace_id, campaign.id, batch, batch.grant, ctx.clock())
    session.commit()
    return SENT


class _RecordConnection:
    """The connection an SMTP batch records its mails through: one UPDATE and one commit each.

    Why not the session: an ORM commit (transaction bookkeeping, expiring the identity map,
    checking a connection in and out of the pool) cost more than the UPDATE itself, about a
    quarter of each mail's time.  A pooled driver connection held for the batch runs the
    prepared statement and commits in two calls (``plugin.bulk_sql`` explains the values).  On
    PostgreSQL its commits do not wait for the WAL flush (``synchronous_commit = off`` for this
    connection only, reset before it goes back to the pool): a killed *worker* still loses
    nothing (the database has the commit); only a crash of the *database server* could lose the
    last fraction of a second of records, whose mails would then be re-sent on takeover (the
    first of them flagged as a possible duplicate).
    """

    def __init__(self, session: Session) -> None:
        self._engine = session.get_bind()
        self._raw: Any = None
        self._relaxed = self._engine.dialect.name == "postgresql"
        paramstyle = self._engine.dialect.paramstyle
        self._final_sql = bulk_sql.for_driver(_SMTP_FINAL, paramstyle)
        self._retry_sql = bulk_sql.for_driver(_SMTP_RETRY, paramstyle)
        self._sent_at_to_db = bulk_sql.to_db(session, CampaignRecipient.__table__.c.sent_at)

    def __enter__(self) -> _RecordConnection:
        self._raw = self._engine.raw_connection()
        if self._relaxed:
            # Autocommit: each UPDATE is its own transaction, one round trip instead of two.
            self._raw.rollback()
            self._raw.driver_connection.autocommit = True
            self._run("SET synchronous_commit TO off", ())
        return self

    def _run(self, sql: str, params: tuple[Any, ...]) -> None:
        cursor = self._raw.cursor()
        try:
            cursor.execute(sql, params)
        finally:
            cursor.close()
        if not self._relaxed:
            self._raw.commit()

    def final(
        self,
        recipient_id: int,
        status: str,
        reason: str | None,
        attempts: int,
        message_id: str | None,
        at: Any,
    ) -> None:
        sent_at = self._sent_at_to_db(at) if at is not None else None
        self._run(self._final_sql, (status, reason, attempts, message_id, sent_at, recipient_id))

    def retry(self, recipient_id: int, reason: str | None, attempts: int) -> None:
        self._run(self._retry_sql, (reason, attempts, recipient_id))

    def close(self) -> None:
        raw, self._raw = self._raw, None
        if raw is None:
            return
        try:
            raw.rollback()
            if self._relaxed:
                cursor = raw.cursor()
                cursor.execute("RESET synchronous_commit")
                cursor.close()
                raw.driver_connection.autocommit = False
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
    "UPDATE marketing_campaign_recipients SET status = 'pending', reason = ?, attempts = ?, batch_id = NULL "
    "WHERE id = ?"
)
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
