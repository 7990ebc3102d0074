"""SQLite: hours of the statistics counters and recipients' send times in SQLAlchemy's text format

The runner's bulk writes handed sqlite3 a datetime, which it writes without microseconds when
they are zero ("2026-12-07 12:00:00"), where SQLAlchemy writes "2026-12-07 12:00:00.000000".
SQLite compares the text, so a range starting at a whole hour missed the counters of that hour
(the first hour of a day in the account's daily table).  Rewrites the short form; PostgreSQL
stores timestamps natively and has nothing to change.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 13:30:00
"""

from alembic import op


revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_SHORT = "length({column}) = 19"


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # Every counter written so far took the short form, so no cell exists in both forms.
    op.execute(
        "UPDATE marketing_stat_counters SET bucket = bucket || '.000000' WHERE "
        + _SHORT.format(column="bucket")
    )
    op.execute(
        "UPDATE marketing_campaign_recipients SET sent_at = sent_at || '.000000' "
        "WHERE sent_at IS NOT NULL AND " + _SHORT.format(column="sent_at")
    )


def downgrade() -> None:
    """Nothing to undo: both forms read back as the same time."""
