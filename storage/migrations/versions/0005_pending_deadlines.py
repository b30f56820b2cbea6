"""pending deadlines: a partial index on due_at WHERE status = 'pending'

Replaces ix_deadline_status_due, which also indexed every fired and cancelled row.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    op.create_index('ix_deadline_pending_due', 'deadline', ['due_at'], unique=False,
                    sqlite_where=PENDING, postgresql_where=PENDING)
    op.drop_index('ix_deadline_status_due', table_name='deadline')


def downgrade() -> None:
    op.create_index('ix_deadline_status_due', 'deadline', ['status', 'due_at'], unique=False)
    op.drop_index('ix_deadline_pending_due', table_name='deadline')
