"""campaigns: a claim cursor; send batches: the recipient range they claimed

On PostgreSQL a SendCloud batch no longer marks its hundred recipients when it is claimed: it
takes the next range of pending recipient ids from the campaign's cursor and records the
range on the batch row.  Marking wrote every recipient row one more time (a lock, a new row
version and four index entries each), two fifths of the database's work per batch in the
dispatch benchmark.  The recipients are written once, when the provider's answer is recorded.

Upgrade with the campaign workers stopped: a worker of the previous version does not know the
cursor and would claim the members of a range batch in flight a second time.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 00:45:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('marketing_campaigns', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claim_from', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('claim_cursor', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), server_default='0', nullable=False))
    with op.batch_alter_table('marketing_send_batches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('range_after', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
        batch_op.add_column(sa.Column('range_upto', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('marketing_send_batches', schema=None) as batch_op:
        batch_op.drop_column('range_upto')
        batch_op.drop_column('range_after')
    with op.batch_alter_table('marketing_campaigns', schema=None) as batch_op:
        batch_op.drop_column('claim_cursor')
        batch_op.drop_column('claim_from')
