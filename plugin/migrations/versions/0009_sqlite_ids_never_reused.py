"""SQLite: tags, views, templates and senders never hand a deleted row's id to a new one

SQLite gives a new row the largest id in use plus one, so deleting the last tag (or template)
and creating another reused its id.  Campaign audiences, statistics and history keep those ids
after the row is gone: a new tag took over a scheduled campaign's deleted one, and a new
template was credited with a finished campaign's sends.  AUTOINCREMENT makes SQLite remember the
largest id ever given; it can only be declared when a table is created, so each table is
rebuilt (its rows, ids and indexes kept).  PostgreSQL's sequences never reuse ids: nothing to do.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 22:10:00
"""

from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

TABLES = ('marketing_tags', 'marketing_views', 'marketing_templates', 'marketing_senders')


def _rebuild(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != 'sqlite':
        return
    for table in TABLES:
        with op.batch_alter_table(
            table, recreate='always', table_kwargs={'sqlite_autoincrement': autoincrement}
        ):
            pass


def upgrade() -> None:
    _rebuild(True)


def downgrade() -> None:
    _rebuild(False)
