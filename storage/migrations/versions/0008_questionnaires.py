"""questionnaires: one row per questionnaire run (vigie J0/J7/J30), answers encrypted

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

import storage.models

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('questionnaire',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('patient_code', sa.String(length=20), nullable=False),
    sa.Column('room_id', sa.String(length=255), nullable=False),
    sa.Column('inclusion_id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=50), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('addressee', sa.String(length=255), nullable=True),
    sa.Column('current', sa.Integer(), nullable=True),
    sa.Column('current_ref', sa.String(length=100), nullable=True),
    sa.Column('created_at', storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('started_at', storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('answers_enc', sa.LargeBinary(), nullable=True),
    sa.Column('trail', sa.JSON(), nullable=False),
    sa.Column('told', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('inclusion_id', 'code', name='uq_questionnaire_inclusion_code')
    )
    with op.batch_alter_table('questionnaire', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_questionnaire_patient_code'), ['patient_code'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('questionnaire', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_questionnaire_patient_code'))
    op.drop_table('questionnaire')
