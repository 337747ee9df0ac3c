"""equity_points.drawdown as NUMERIC(28, 10), as every other number of the books

A drawdown is 1 - equity / peak, the peak taken as at least 1 unit of the account currency. Equity may
fall below zero (down to -1e15, the range the books are kept within: app/risk/domain.py): its drawdown
then exceeds the 9,999.99999999 that NUMERIC(12, 8) holds, and the mark that caused it could not be
stored. NUMERIC(28, 10) holds every drawdown of that range.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 05:00:00
"""
from alembic import op
import sqlalchemy as sa
import app.store.models

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('equity_points', schema=None) as batch_op:
        batch_op.alter_column('drawdown', existing_type=sa.Numeric(12, 8), type_=sa.Numeric(28, 10), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('equity_points', schema=None) as batch_op:
        batch_op.alter_column('drawdown', existing_type=sa.Numeric(28, 10), type_=sa.Numeric(12, 8), existing_nullable=False)
