"""everything that decides on the chain: config versions, fills, ledger entries, equity points and posted
marks chained; Merkle nodes and signed checkpoints; a chain head that moves only to the row appended last

Configuration versions, fills, ledger entries and equity points take a place on their portfolio's chain
(rows written before keep none: NULL; a trigger refuses a new row without one); marks posted are recorded in `mark_updates`, chained, and the
`marks` table is derived from them. Equity points carry the peak equity the portfolio's is reconciled with.

`merkle_nodes` keeps the hashes of the perfect subtrees of each chain's Merkle tree (RFC 6962) and
`audit_checkpoints` a copy of the signed checkpoints the service appends outside the database; both are
append-only. `audit_trail` holds the trail's id, which every checkpoint names: a sink serves one trail.

A chain head (`portfolios.audit_seq`/`audit_head`, `audit_heads` for `_system`) is checked at commit by a
deferred trigger: it never moves back, and it names the last row of its chain, as that row's hash. The
application's role can append to a chain and move the head with it, nothing else.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 08:00:00
"""
from alembic import op
import sqlalchemy as sa
import app.store.models

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

NEWLY_CHAINED = ("config_versions", "fills", "ledger_entries", "equity_points")
CHAINED = ("decisions", "switch_events", "admin_actions", "mark_updates") + NEWLY_CHAINED
NEW_APPEND_ONLY = ("equity_points", "mark_updates", "merkle_nodes", "audit_checkpoints", "audit_trail")
APP_ROLE = "rpm_app"

# the row_hash of a chain's row at a sequence number (NULL: none); the `_system` chain's rows are the admin
# actions of no portfolio
_HASH_AT = """
CREATE OR REPLACE FUNCTION rpm_chain_hash_at(p text, s bigint) RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE found text;
BEGIN
    IF p = '_system' THEN
        SELECT row_hash INTO found FROM admin_actions WHERE portfolio_id IS NULL AND audit_seq = s;
        RETURN found;
    END IF;
    SELECT h INTO found FROM (%s) AS rows(h) LIMIT 1;
    RETURN found;
END $$
""" % " UNION ALL ".join(f"SELECT row_hash FROM {t} WHERE portfolio_id = p AND audit_seq = s" for t in CHAINED)

_GUARD = """
CREATE OR REPLACE FUNCTION rpm_chain_head_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE chain text; seq bigint; head text;
BEGIN
    IF TG_TABLE_NAME = 'portfolios' THEN
        chain := NEW.id;
        SELECT audit_seq, audit_head INTO seq, head FROM portfolios WHERE id = NEW.id;
    ELSE
        chain := NEW.chain;
        SELECT audit_seq, audit_head INTO seq, head FROM audit_heads WHERE audit_heads.chain = NEW.chain;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.audit_seq < OLD.audit_seq THEN
        RAISE EXCEPTION 'rpm: the head of chain % may not move back (from % to %)', chain, OLD.audit_seq,
            NEW.audit_seq USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF seq IS NULL THEN
        RETURN NULL;  -- (the row is gone: deleted in this transaction)
    END IF;
    IF (seq > 0 AND rpm_chain_hash_at(chain, seq) IS DISTINCT FROM head)
            OR rpm_chain_hash_at(chain, seq + 1) IS NOT NULL THEN
        RAISE EXCEPTION 'rpm: the head of chain % must name its last row (sequence %, hash %)', chain, seq, head
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NULL;
END $$
"""


def upgrade() -> None:
    for table in NEWLY_CHAINED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('audit_seq', sa.BigInteger(), nullable=True))
            batch_op.add_column(sa.Column('prev_hash', sa.String(length=64), nullable=True))
            batch_op.add_column(sa.Column('row_hash', sa.String(length=64), nullable=True))
            batch_op.create_index(f'ix_{table}_portfolio_audit', ['portfolio_id', 'audit_seq'], unique=False)
    # every row from now on has its place on the chain (rows written before keep none: a trigger, not a CHECK,
    # which could only be NOT VALID, and SQLAlchemy cannot reflect that)
    op.execute("""
        CREATE OR REPLACE FUNCTION rpm_refuse_unchained() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'rpm: a row of % off the chain refused: every row has its place on its chain',
                TG_TABLE_NAME USING ERRCODE = 'check_violation';
        END $$
    """)
    for table in NEWLY_CHAINED:
        op.execute(f"CREATE TRIGGER {table}_chained BEFORE INSERT ON {table} FOR EACH ROW "
                   "WHEN (NEW.audit_seq IS NULL OR NEW.prev_hash IS NULL OR NEW.row_hash IS NULL) "
                   "EXECUTE FUNCTION rpm_refuse_unchained()")
        op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_chained")
    with op.batch_alter_table('equity_points', schema=None) as batch_op:
        batch_op.add_column(sa.Column('peak_equity', sa.Numeric(28, 10), nullable=True))
    op.create_table(
        'mark_updates',
        sa.Column('audit_seq', sa.BigInteger(), nullable=False),
        sa.Column('prev_hash', sa.String(length=64), nullable=False),
        sa.Column('row_hash', sa.String(length=64), nullable=False),
        sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column('portfolio_id', sa.String(length=64), nullable=False),
        sa.Column('at', app.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('prices', app.store.models.Json, nullable=False),
        sa.Column('history_hashes', app.store.models.Json, nullable=False),
        sa.ForeignKeyConstraint(['portfolio_id'], ['portfolios.id'], name=op.f('fk_mark_updates_portfolio_id_portfolios')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_mark_updates')),
    )
    op.create_index('ix_mark_updates_portfolio_audit', 'mark_updates', ['portfolio_id', 'audit_seq'], unique=False)
    op.create_table(
        'merkle_nodes',
        sa.Column('chain', sa.String(length=64), nullable=False),
        sa.Column('level', sa.Integer(), nullable=False),
        sa.Column('idx', sa.BigInteger(), nullable=False),
        sa.Column('hash', sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint('chain', 'level', 'idx', name=op.f('pk_merkle_nodes')),
    )
    op.create_table(
        'audit_checkpoints',
        sa.Column('chain', sa.String(length=64), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('root', sa.String(length=64), nullable=False),
        sa.Column('at', app.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('statement', sa.Text(), nullable=False),
        sa.Column('signature', sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint('chain', 'size', name=op.f('pk_audit_checkpoints')),
    )
    op.create_table(
        'audit_trail',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('created_at', app.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_trail')),
    )
    op.execute("INSERT INTO audit_trail (id, created_at) VALUES (gen_random_uuid()::text, now())")
    for table in NEW_APPEND_ONLY:
        op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                   f"FOR EACH ROW EXECUTE FUNCTION rpm_refuse_change()")
        op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                   f"FOR EACH STATEMENT EXECUTE FUNCTION rpm_refuse_change()")
        op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_append_only")
        op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_no_truncate")
    # the new JSON columns compressed as the others are (0009), when this PostgreSQL has lz4
    has_lz4 = op.get_bind().execute(sa.text(
        "SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")).scalar()
    if has_lz4 is not None and "lz4" in has_lz4:
        for column in ("prices", "history_hashes"):
            op.execute(f"ALTER TABLE mark_updates ALTER COLUMN {column} SET COMPRESSION lz4")
    op.execute(_HASH_AT)
    op.execute(_GUARD)
    for table in ("portfolios", "audit_heads"):
        op.execute(f"CREATE CONSTRAINT TRIGGER {table}_chain_head AFTER INSERT OR UPDATE ON {table} "
                   "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION rpm_chain_head_guard()")
        op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_chain_head")
    op.execute(f"GRANT SELECT, INSERT ON mark_updates, merkle_nodes, audit_checkpoints TO {APP_ROLE}")
    op.execute(f"GRANT SELECT ON audit_trail TO {APP_ROLE}")
    op.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}")


def downgrade() -> None:
    for table in ("portfolios", "audit_heads"):
        op.execute(f"DROP TRIGGER IF EXISTS {table}_chain_head ON {table}")
    op.execute("DROP FUNCTION IF EXISTS rpm_chain_head_guard()")
    op.execute("DROP FUNCTION IF EXISTS rpm_chain_hash_at(text, bigint)")
    op.execute("DROP FUNCTION IF EXISTS rpm_refuse_unchained() CASCADE")
    op.execute("DROP TRIGGER IF EXISTS equity_points_append_only ON equity_points")
    op.execute("DROP TRIGGER IF EXISTS equity_points_no_truncate ON equity_points")
    op.drop_table('audit_trail')
    op.drop_table('audit_checkpoints')
    op.drop_table('merkle_nodes')
    op.drop_index('ix_mark_updates_portfolio_audit', table_name='mark_updates')
    op.drop_table('mark_updates')
    with op.batch_alter_table('equity_points', schema=None) as batch_op:
        batch_op.drop_column('peak_equity')
    for table in NEWLY_CHAINED:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_chained ON {table}")
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f'ix_{table}_portfolio_audit')
            batch_op.drop_column('row_hash')
            batch_op.drop_column('prev_hash')
            batch_op.drop_column('audit_seq')
