"""SQLite: hours of the statistics counters and recipients' send times in SQLAlchemy's text form

The runner's bulk writes converted timestamps with the generic type, so SQLite received other
spellings of the same time than SQLAlchemy writes ("2026-12-07 12:00:00.000000"): the counters
and the runner's send times as ISO text with a "T" ("2026-12-07T12:00:00"), the SMTP channel's
send times and, for a while, the counters without microseconds when they were zero.  SQLite
compares the text, so a day's range (the account's daily table) took in the previous day's late
hours, and a counter cell written before and after the fix would have been two cells.

Every spelling is rewritten to SQLAlchemy's.  Counter cells that become equal are merged (their
counts added), so the unique cell key holds.  PostgreSQL stores timestamps natively: nothing to do.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 13:30:00
"""

from alembic import op


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def _standard(column: str) -> str:
    """SQL for SQLAlchemy's spelling of a naive timestamp text column: a space between date and
    time, and six digits of microseconds."""
    return f"replace(substr({column}, 1, 19), 'T', ' ') || coalesce(nullif(substr({column}, 20), ''), '.000000')"


_CELL = 'workspace_id, campaign_id, metric, dimension, "key"'


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    bucket = _standard("bucket")
    op.execute(
        f"INSERT INTO marketing_stat_counters ({_CELL}, bucket, count) "
        f"SELECT {_CELL}, {bucket}, sum(count) FROM marketing_stat_counters WHERE bucket != {bucket} "
        f"GROUP BY {_CELL}, {bucket} "
        f"ON CONFLICT ({_CELL}, bucket) DO UPDATE SET count = marketing_stat_counters.count + excluded.count"
    )
    op.execute(f"DELETE FROM marketing_stat_counters WHERE bucket != {bucket}")
    sent_at = _standard("sent_at")
    op.execute(
        f"UPDATE marketing_campaign_recipients SET sent_at = {sent_at} "
        f"WHERE sent_at IS NOT NULL AND sent_at != {sent_at}"
    )


def downgrade() -> None:
    """Nothing to undo: every spelling reads back as the same time."""
