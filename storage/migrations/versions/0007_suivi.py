"""suivi: observation (données de base and éléments de suivi, append-only, values encrypted)

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

import storage.models

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'observation',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('patient_code', sa.String(length=20), nullable=False),
        sa.Column('parcours', sa.String(length=50), nullable=False),
        sa.Column('kind', sa.String(length=10), nullable=False),
        sa.Column('element', sa.String(length=60), nullable=False),
        sa.Column('value_enc', sa.LargeBinary(), nullable=False),
        sa.Column('recorded_by', sa.String(length=255), nullable=False),
        sa.Column('recorded_at', storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('previous_id', sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_observation_patient', 'observation', ['patient_code', 'parcours', 'kind', 'element'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_observation_patient', table_name='observation')
    op.drop_table('observation')
