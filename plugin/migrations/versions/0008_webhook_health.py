"""provider accounts: when SendCloud's events were last accepted, and since when they are refused

A wrong webhook APP KEY made every event post answer 403 and nothing said so: deliveries,
opens and bounces silently stopped arriving.  The account now keeps when a signed event was last
accepted and, while posts fail the signature check (or no key is stored), since when and why, so
the pages can say it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 18:00:00
"""

from alembic import op
import sqlalchemy as sa
import plugin.models.base


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('marketing_provider_accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('webhook_ok_at', plugin.models.base.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('webhook_refused_since', plugin.models.base.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('webhook_refused_at', plugin.models.base.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('webhook_refused_reason', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('marketing_provider_accounts', schema=None) as batch_op:
        batch_op.drop_column('webhook_refused_reason')
        batch_op.drop_column('webhook_refused_at')
        batch_op.drop_column('webhook_refused_since')
        batch_op.drop_column('webhook_ok_at')
