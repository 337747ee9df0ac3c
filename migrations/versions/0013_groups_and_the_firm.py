"""groups and the firm above portfolios; firm marks; the firm's records on the `_system` chain

`groups` is the tree above portfolios (SPEC §12): the firm (the row `firm`, made here) and groups under it, each
with its limits and its kill-switch state; `portfolios.group_id` places a portfolio in a group (NULL: directly
under the firm). `firm_marks` holds the latest firm-wide price of each symbol, derived from the `mark_updates` of
no portfolio. What happens above portfolios — firm marks posted, a group's switches tripped and cleared, its
halts — is recorded on the `_system` chain: switch events and mark updates of no portfolio join its admin
actions, and the chain-head guard reads all three.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 10:00:00
"""
from alembic import op
import sqlalchemy as sa
import app.store.models

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

APP_ROLE = "rpm_app"
CHAINED = ("decisions", "switch_events", "admin_actions", "mark_updates", "config_versions", "fills",
           "ledger_entries", "equity_points")
SYSTEM = ("admin_actions", "switch_events", "mark_updates")


def _hash_at(system: tuple[str, ...]) -> str:
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
       " UNION ALL ".join(f"SELECT row_hash FROM {t} WHERE portfolio_id = p AND audit_seq = s" for t in CHAINED))


def upgrade() -> None:
    op.create_table(
        'groups',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('parent_id', sa.String(length=64), nullable=True),
        sa.Column('currency', sa.String(length=3), nullable=False),
        sa.Column('limits', app.store.models.Json, nullable=False),
        sa.Column('switches', app.store.models.Json, nullable=False),
        sa.Column('peak_equity', sa.Numeric(28, 10), nullable=True),
        sa.Column('day_key', sa.String(length=10), nullable=True),
        sa.Column('day_start_equity', sa.Numeric(28, 10), nullable=True),
        sa.Column('day_peak_equity', sa.Numeric(28, 10), nullable=True),
        sa.Column('week_key', sa.String(length=10), nullable=True),
        sa.Column('week_start_equity', sa.Numeric(28, 10), nullable=True),
        sa.Column('created_at', app.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('updated_at', app.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['parent_id'], ['groups.id'], name=op.f('fk_groups_parent_id_groups')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_groups')),
        sa.CheckConstraint("(id = 'firm') = (parent_id IS NULL)", name=op.f('ck_groups_one_root')),
    )
    op.execute("INSERT INTO groups (id, parent_id, currency, limits, switches, created_at, updated_at) "
               "VALUES ('firm', NULL, 'USD', '{}', '{}', now(), now())")
    with op.batch_alter_table('portfolios', schema=None) as batch_op:
        batch_op.add_column(sa.Column('group_id', sa.String(length=64), nullable=True))
        batch_op.create_foreign_key(op.f('fk_portfolios_group_id_groups'), 'groups', ['group_id'], ['id'])
        batch_op.create_index('ix_portfolios_group', ['group_id'], unique=False)
    op.create_table(
        'firm_marks',
        sa.Column('symbol', sa.String(length=32), nullable=False),
        sa.Column('price', sa.Numeric(28, 10), nullable=False),
        sa.Column('history', app.store.models.Json, nullable=False),
        sa.Column('history_hash', sa.String(length=64), nullable=False),
        sa.Column('updated_at', app.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('symbol', name=op.f('pk_firm_marks')),
    )
    for table in ("switch_events", "mark_updates"):  # (rows of no portfolio: the `_system` chain's)
        op.alter_column(table, 'portfolio_id', existing_type=sa.String(length=64), nullable=True)
    op.create_index('ix_switch_events_system_audit', 'switch_events', ['audit_seq'], unique=False,
                    postgresql_where=sa.text('portfolio_id IS NULL'))
    op.create_index('ix_mark_updates_system_audit', 'mark_updates', ['audit_seq'], unique=False,
                    postgresql_where=sa.text('portfolio_id IS NULL'))
    # the new JSON columns compressed as the others are (0009), when this PostgreSQL has lz4
    has_lz4 = op.get_bind().execute(sa.text(
        "SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")).scalar()
    if has_lz4 is not None and "lz4" in has_lz4:
        op.execute("ALTER TABLE groups ALTER COLUMN limits SET COMPRESSION lz4, ALTER COLUMN switches SET COMPRESSION lz4")
        op.execute("ALTER TABLE firm_marks ALTER COLUMN history SET COMPRESSION lz4")
    op.execute(_hash_at(SYSTEM))
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON groups, firm_marks TO {APP_ROLE}")


def downgrade() -> None:
    op.execute(_hash_at(("admin_actions",)))
    op.drop_index('ix_mark_updates_system_audit', table_name='mark_updates')
    op.drop_index('ix_switch_events_system_audit', table_name='switch_events')
    op.drop_table('firm_marks')
    with op.batch_alter_table('portfolios', schema=None) as batch_op:
        batch_op.drop_index('ix_portfolios_group')
        batch_op.drop_constraint(op.f('fk_portfolios_group_id_groups'), type_='foreignkey')
        batch_op.drop_column('group_id')
    op.drop_table('groups')
