"""campaign recipients: no foreign key to the campaign (deleted explicitly with it)

Freezing an audience inserts up to millions of recipient rows in one statement, and PostgreSQL
checks a foreign key with one lookup per inserted row: a third of the freeze of 1,000,000
recipients (bench/audience.py).  The rows are only ever written by the freeze, for a campaign
that exists, and deleted with their campaign by ``campaigns.service.delete_draft`` (only drafts can be deleted).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 19:00:00
"""

from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

_FK = 'fk_marketing_campaign_recipients_campaign_id_marketing_campaigns'


def upgrade() -> None:
    with op.batch_alter_table('marketing_campaign_recipients', schema=None) as batch_op:
        batch_op.drop_constraint(op.f(_FK), type_='foreignkey')


def downgrade() -> None:
    # Rows whose campaign is gone would violate the restored key: they belong to nothing.
    op.execute(
        'DELETE FROM marketing_campaign_recipients WHERE campaign_id NOT IN (SELECT id FROM marketing_campaigns)'
    )
    with op.batch_alter_table('marketing_campaign_recipients', schema=None) as batch_op:
        batch_op.create_foreign_key(op.f(_FK), 'marketing_campaigns', ['campaign_id'], ['id'], ondelete='CASCADE')
