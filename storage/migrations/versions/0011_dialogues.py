"""dialogues: commands completed by questions (issue 17)

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

import storage.models

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dialogue',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('sender', sa.String(length=255), nullable=False),
    sa.Column('room_id', sa.String(length=255), nullable=False),
    sa.Column('thread_root', sa.String(length=255), nullable=False),
    sa.Column('command', sa.String(length=50), nullable=False),
    sa.Column('questions', sa.JSON(), nullable=False),
    sa.Column('command_enc', sa.LargeBinary(), nullable=False),
    sa.Column('answers_enc', sa.LargeBinary(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('created_at', storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ended_at', storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('dialogue', schema=None) as batch_op:
        batch_op.create_index('ix_dialogue_active', ['sender', 'room_id', 'status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('dialogue', schema=None) as batch_op:
        batch_op.drop_index('ix_dialogue_active')
    op.drop_table('dialogue')
