"""contact tags: index (tag_id, contact_id) instead of (tag_id)

An audience asks "which contacts carry these tags" for every freeze and live count.  With the
contact id in the index PostgreSQL answers it from the index alone (an index-only scan) instead
of visiting a heap page per tagging: 0.2-0.3 s of a 1,000,000-contact freeze (bench/audience.py).
The new index still serves everything the old one did (tag_id leads).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 06:00:00
"""

from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('marketing_contact_tags', schema=None) as batch_op:
        batch_op.create_index('ix_marketing_contact_tags_tag_id_contact_id', ['tag_id', 'contact_id'], unique=False)
        batch_op.drop_index('ix_marketing_contact_tags_tag_id')


def downgrade() -> None:
    with op.batch_alter_table('marketing_contact_tags', schema=None) as batch_op:
        batch_op.create_index('ix_marketing_contact_tags_tag_id', ['tag_id'], unique=False)
        batch_op.drop_index('ix_marketing_contact_tags_tag_id_contact_id')
