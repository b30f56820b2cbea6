"""inbox events waiting for their room key

Revision ID: 0003
Revises: 0002

Patient rooms created through the outbox need no schema change (patient.room_id is nullable and
the creation attempt is a bot_state row).
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('inbox_event', schema=None) as batch_op:
        batch_op.add_column(sa.Column('session_id', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('waiting_since_ms', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('inbox_event', schema=None) as batch_op:
        batch_op.drop_column('waiting_since_ms')
        batch_op.drop_column('session_id')
