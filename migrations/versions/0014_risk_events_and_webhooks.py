"""risk events on the chain, the outbox webhooks and the stream read; webhooks and their deliveries

`risk_events` holds what someone must act on (a switch tripped or cleared, a halt, a resume, a change of
configuration, instruments or capital, a correction, an approval expired, an audit failure), each written in the
transaction of its cause and on the same chain (the chain-head guard reads it, with the `_system` chain's other
tables). It is append-only. Its `id` is given at commit under one advisory lock, so that ids follow commit order:
a reader that has seen event n has seen every event before it.

`webhooks` are the endpoints events are delivered to; `webhook_deliveries` one event for one endpoint (pending,
delivered, failed), what the deliverer works through and what an admin reads and retries.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 13:00:00
"""
from alembic import op
import sqlalchemy as sa
import app.store.models

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

APP_ROLE = "rpm_app"
CHAINED = ("decisions", "switch_events", "admin_actions", "mark_updates", "config_versions", "fills",
           "ledger_entries", "equity_points")
SYSTEM = ("admin_actions", "switch_events", "mark_updates")


def _hash_at(chained: tuple[str, ...], system: tuple[str, ...]) -> str:
    return """
CREATE OR REPLACE FUNCTION rpm_chain_hash_at(p text, s bigint) RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE found text;
BEGIN
    IF p = '_system' THEN
        SELECT h INTO found FROM (%s) AS rows(h) LIMIT 1;
        RETURN found;
    END IF;
    SELECT h INTO found FROM (%s) AS rows(h) LIMIT 1;
    RETURN found;
END $$
""" % (" UNION ALL ".join(f"SELECT row_hash FROM {t} WHERE portfolio_id IS NULL AND audit_seq = s" for t in system),
       " UNION ALL ".join(f"SELECT row_hash FROM {t} WHERE portfolio_id = p AND audit_seq = s" for t in chained))


def upgrade() -> None:
    op.create_table(
        'risk_events',
        sa.Column('audit_seq', sa.BigInteger(), nullable=False),
        sa.Column('prev_hash', sa.String(length=64), nullable=False),
        sa.Column('row_hash', sa.String(length=64), nullable=False),
        sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column('portfolio_id', sa.String(length=64), nullable=True),
        sa.Column('chain', sa.String(length=64), nullable=False),
        sa.Column('seq', sa.BigInteger(), nullable=False),
        sa.Column('type', sa.String(length=32), nullable=False),
        sa.Column('level', sa.String(length=64), nullable=True),
        sa.Column('at', app.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('data', app.store.models.Json, nullable=False),
        sa.ForeignKeyConstraint(['portfolio_id'], ['portfolios.id'], name=op.f('fk_risk_events_portfolio_id_portfolios')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_risk_events')),
        sa.UniqueConstraint('chain', 'seq', name=op.f('uq_risk_events_chain_seq')),
    )
    op.create_index('ix_risk_events_portfolio_audit', 'risk_events', ['portfolio_id', 'audit_seq'], unique=False)
    op.create_index('ix_risk_events_system_audit', 'risk_events', ['audit_seq'], unique=False,
                    postgresql_where=sa.text('portfolio_id IS NULL'))
    op.execute("CREATE TRIGGER risk_events_append_only BEFORE UPDATE OR DELETE ON risk_events "
               "FOR EACH ROW EXECUTE FUNCTION rpm_refuse_change()")
    op.execute("CREATE TRIGGER risk_events_no_truncate BEFORE TRUNCATE ON risk_events "
               "FOR EACH STATEMENT EXECUTE FUNCTION rpm_refuse_change()")
    op.execute("ALTER TABLE risk_events ENABLE ALWAYS TRIGGER risk_events_append_only")
    op.execute("ALTER TABLE risk_events ENABLE ALWAYS TRIGGER risk_events_no_truncate")
    op.create_table(
        'webhooks',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('url', sa.Text(), nullable=False),
        sa.Column('secret', sa.String(length=128), nullable=False),
        sa.Column('types', app.store.models.Json, nullable=True),
        sa.Column('portfolios', app.store.models.Json, nullable=True),
        sa.Column('description', sa.Text(), nullable=True),
        sa.Column('created_at', app.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('created_by', sa.String(length=128), nullable=True),
        sa.Column('disabled_at', app.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column('queued_to', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_webhooks')),
    )
    op.create_table(
        'webhook_deliveries',
        sa.Column('webhook_id', sa.String(length=36), nullable=False),
        sa.Column('event_id', sa.BigInteger(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', app.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('last_attempt_at', app.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column('last_status', sa.Integer(), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('delivered_at', app.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column('queued_at', app.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['event_id'], ['risk_events.id'], name=op.f('fk_webhook_deliveries_event_id_risk_events')),
        sa.ForeignKeyConstraint(['webhook_id'], ['webhooks.id'], name=op.f('fk_webhook_deliveries_webhook_id_webhooks')),
        sa.PrimaryKeyConstraint('webhook_id', 'event_id', name=op.f('pk_webhook_deliveries')),
    )
    op.create_index('ix_webhook_deliveries_pending', 'webhook_deliveries', ['webhook_id', 'event_id'], unique=False,
                    postgresql_where=sa.text("status = 'pending'"))
    has_lz4 = op.get_bind().execute(sa.text(
        "SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")).scalar()
    if has_lz4 is not None and "lz4" in has_lz4:
        op.execute("ALTER TABLE risk_events ALTER COLUMN data SET COMPRESSION lz4")
        op.execute("ALTER TABLE webhooks ALTER COLUMN types SET COMPRESSION lz4, "
                   "ALTER COLUMN portfolios SET COMPRESSION lz4")
    op.execute(_hash_at(CHAINED + ("risk_events",), SYSTEM + ("risk_events",)))
    op.execute(f"GRANT SELECT, INSERT ON risk_events TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON webhooks, webhook_deliveries TO {APP_ROLE}")
    op.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}")


def downgrade() -> None:
    op.execute(_hash_at(CHAINED, SYSTEM))
    op.drop_index('ix_webhook_deliveries_pending', table_name='webhook_deliveries')
    op.drop_table('webhook_deliveries')
    op.drop_table('webhooks')
    op.drop_index('ix_risk_events_system_audit', table_name='risk_events')
    op.drop_index('ix_risk_events_portfolio_audit', table_name='risk_events')
    op.drop_table('risk_events')
