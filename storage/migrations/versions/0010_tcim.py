"""tcim: what a TCIM adds to its request (issue 12)

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

import storage.models

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('tcim',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('demande_id', sa.Integer(), nullable=False),
    sa.Column('patient_code', sa.String(length=20), nullable=False),
    sa.Column('etat', sa.String(length=20), nullable=False),
    sa.Column('infirmier', sa.String(length=255), nullable=False),
    sa.Column('medecin', sa.String(length=255), nullable=True),
    sa.Column('created_at', storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('data_enc', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('demande_id')
    )
    with op.batch_alter_table('tcim', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tcim_patient_code'), ['patient_code'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('tcim', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tcim_patient_code'))
    op.drop_table('tcim')
