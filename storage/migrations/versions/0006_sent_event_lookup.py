"""sent event lookup: an index on outbox.event_id

A poll vote or a reply names the bot's event it answers; the outbox row that sent it gives its ref.

Revision ID: 0006
Revises: 0005
"""
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_outbox_event_id', 'outbox', ['event_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_outbox_event_id', table_name='outbox')
