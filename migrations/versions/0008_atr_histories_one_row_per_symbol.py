"""ATR histories: one row per portfolio and symbol, out of the portfolio row's `memory`

A decision appends to its symbol's ATR history: kept in the portfolio row, every decision
rewrote the histories of all symbols (up to 100 ATRs each).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24 00:40:00
"""
import json
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from alembic import op

import app.store.models

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

portfolios = sa.table("portfolios", sa.column("id", sa.String), sa.column("memory", sa.JSON))
atr = sa.table("atr_histories", sa.column("portfolio_id", sa.String), sa.column("symbol", sa.String),
               sa.column("history", sa.JSON), sa.column("updated_at", app.store.models.UTCDateTime()))


def _memory(value):
    return json.loads(value) if isinstance(value, str) else dict(value or {})


def upgrade() -> None:
    op.create_table('atr_histories',
    sa.Column('portfolio_id', sa.String(length=64), nullable=False),
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('history', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('updated_at', app.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['portfolio_id'], ['portfolios.id'], name=op.f('fk_atr_histories_portfolio_id_portfolios')),
    sa.PrimaryKeyConstraint('portfolio_id', 'symbol', name=op.f('pk_atr_histories'))
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON atr_histories TO rpm_app")
    bind = op.get_bind()
    now = datetime.now(UTC)
    for pid, memory in bind.execute(sa.select(portfolios.c.id, portfolios.c.memory)).all():
        memory = _memory(memory)
        histories = memory.pop("atr_history", {})
        for symbol, history in sorted(histories.items()):
            bind.execute(atr.insert().values(portfolio_id=pid, symbol=symbol, history=list(history), updated_at=now))
        bind.execute(portfolios.update().where(portfolios.c.id == pid).values(memory=memory))


def downgrade() -> None:
    bind = op.get_bind()
    histories: dict[str, dict] = {}
    for pid, symbol, history in bind.execute(sa.select(atr.c.portfolio_id, atr.c.symbol, atr.c.history)).all():
        histories.setdefault(pid, {})[symbol] = json.loads(history) if isinstance(history, str) else history
    for pid, memory in bind.execute(sa.select(portfolios.c.id, portfolios.c.memory)).all():
        memory = _memory(memory)
        memory["atr_history"] = histories.get(pid, {})
        bind.execute(portfolios.update().where(portfolios.c.id == pid).values(memory=memory))
    op.drop_table('atr_histories')
