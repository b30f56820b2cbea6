"""indemnites: priced ledger lines (state, amount, quarter, rule version), once per act; bordereaux

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

UNPRICED = sa.text('priced_at IS NULL')


def upgrade() -> None:
    with op.batch_alter_table('act') as batch:
        batch.add_column(sa.Column('correction', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('trimestre', sa.String(length=7), nullable=True))
        batch.add_column(sa.Column('etat', sa.String(length=12), nullable=True))
        batch.add_column(sa.Column('montant_cents', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('cpam', sa.String(length=60), nullable=True))
        batch.add_column(sa.Column('motif', sa.String(length=300), nullable=True))
        batch.add_column(sa.Column('regle', sa.String(length=60), nullable=True))
        batch.add_column(sa.Column('version', sa.String(length=40), nullable=True))
        batch.add_column(sa.Column('priced_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('bordereau_id', sa.Integer(), nullable=True))
        batch.create_unique_constraint('uq_act_once', ['user_id', 'kind', 'ref', 'correction'])
    op.create_index('ix_act_trimestre_user', 'act', ['trimestre', 'user_id', 'etat'], unique=False)
    op.create_index('ix_act_bordereau_id', 'act', ['bordereau_id'], unique=False)
    op.create_index('ix_act_unpriced', 'act', ['id'], unique=False, sqlite_where=UNPRICED, postgresql_where=UNPRICED)
    op.create_table(
        'bordereau',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('user_id', sa.String(length=255), nullable=False),
        sa.Column('trimestre', sa.String(length=7), nullable=False),
        sa.Column('total_cents', sa.Integer(), nullable=False),
        sa.Column('lignes', sa.Integer(), nullable=False),
        sa.Column('valide_par', sa.String(length=255), nullable=False),
        sa.Column('valide_le', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('user_id', 'trimestre', name='uq_bordereau_user_trimestre'),
    )


def downgrade() -> None:
    op.drop_table('bordereau')
    op.drop_index('ix_act_unpriced', table_name='act')
    op.drop_index('ix_act_bordereau_id', table_name='act')
    op.drop_index('ix_act_trimestre_user', table_name='act')
    with op.batch_alter_table('act') as batch:
        batch.drop_constraint('uq_act_once', type_='unique')
        for column in ('bordereau_id', 'priced_at', 'version', 'regle', 'motif', 'cpam', 'montant_cents', 'etat',
                       'trimestre', 'correction'):
            batch.drop_column(column)
