"""Decisions partitioned by month; idempotency in a table of its own; archives

`decisions` becomes a table partitioned by RANGE (decided_at), one partition per month (app/store/partitions.py)
and a default one. Its rows are copied into the partitions of their months (a migration that rewrites the table:
on a large trail, plan for it). A partitioned table's unique indexes must include the partition key, so:

- the primary key is (id, decided_at), and (portfolio_id, seq) is unique with decided_at;
- idempotency moves to `decision_intents` ((portfolio_id, intent_id) primary key -> decision id, decided_at),
  filled by a trigger in the same insert as the decision: one intent id is decided once, whatever the month;
- fills name their decision without a foreign key (a fill's decision is checked under the portfolio's lock, and
  an archived month's decisions leave the database while their fills stay).

`audit_archives` lists each archived month (`rpm audit archive`; what `verify` accounts for is read from the
archive's hashed admin action, not from it); `audit_archived_heads` keeps the hash of a chain's last row when
that row was archived (the chain-head guard reads it through rpm_chain_hash_at).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 16:00:00
"""
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import app.store.models
from app.store import partitions

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

APP_ROLE = "rpm_app"
CHAINED = ("decisions", "switch_events", "admin_actions", "mark_updates", "config_versions", "fills",
           "ledger_entries", "equity_points", "risk_events")
SYSTEM = ("admin_actions", "switch_events", "mark_updates", "risk_events")
INDEXES = {
    "ix_decisions_portfolio_decided": "portfolio_id, decided_at, id",
    "ix_decisions_symbol_decided": "portfolio_id, symbol, decided_at",
    "ix_decisions_portfolio_audit": "portfolio_id, audit_seq",
    "ix_decisions_intent": "intent_id",
    "ix_decisions_config_hash": "config_hash",
    "ix_decisions_key": "key_id",
}
_VIEW = ("CREATE VIEW decision_documents AS SELECT id, portfolio_id, seq, "
         "CASE WHEN jsonb_typeof(breakdown) = 'string' THEN (breakdown #>> '{}')::jsonb ELSE breakdown END "
         "AS breakdown, CASE WHEN jsonb_typeof(state_before) = 'string' THEN (state_before #>> '{}')::jsonb "
         "ELSE state_before END AS state_before FROM decisions")


def _hash_at(archived: bool) -> str:
    extra = " UNION ALL SELECT row_hash FROM audit_archived_heads WHERE chain = %s AND audit_seq = s"
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
""" % (" UNION ALL ".join(f"SELECT row_hash FROM {t} WHERE portfolio_id IS NULL AND audit_seq = s" for t in SYSTEM)
       + (extra % "'_system'" if archived else ""),
       " UNION ALL ".join(f"SELECT row_hash FROM {t} WHERE portfolio_id = p AND audit_seq = s" for t in CHAINED)
       + (extra % "p" if archived else ""))


def _append_only(table: str) -> None:
    op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
               "FOR EACH ROW EXECUTE FUNCTION rpm_refuse_change()")
    op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
               "FOR EACH STATEMENT EXECUTE FUNCTION rpm_refuse_change()")
    op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_append_only")
    op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_no_truncate")


def _indexes(unique_seq: str) -> None:
    op.execute(f"ALTER TABLE decisions ADD CONSTRAINT fk_decisions_portfolio_id_portfolios "
               "FOREIGN KEY (portfolio_id) REFERENCES portfolios (id)")
    op.execute(f"ALTER TABLE decisions ADD CONSTRAINT {unique_seq}")
    for name, columns in INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON decisions ({columns})")


def _rename_old() -> None:
    """The unpartitioned table and its constraints out of the way of the new one's names."""
    op.execute("DROP VIEW decision_documents")
    op.execute("ALTER TABLE decisions RENAME TO decisions_before")
    bind = op.get_bind()
    for (name,) in bind.execute(sa.text(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'decisions_before'::regclass AND contype IN ('p', 'u')")):
        op.execute(f'ALTER TABLE decisions_before RENAME CONSTRAINT "{name}" TO "{name}_before"')
    for name in INDEXES:
        op.execute(f"ALTER INDEX IF EXISTS {name} RENAME TO {name}_before")


def upgrade() -> None:
    op.execute("ALTER TABLE fills DROP CONSTRAINT IF EXISTS fk_fills_decision_id_decisions")
    _rename_old()
    op.execute("CREATE TABLE decisions (LIKE decisions_before INCLUDING DEFAULTS INCLUDING STORAGE "
               "INCLUDING COMPRESSION) PARTITION BY RANGE (decided_at)")
    op.execute(f"CREATE TABLE {partitions.DEFAULT} PARTITION OF decisions DEFAULT")
    conn = op.get_bind()
    partitions.refuse_truncate(conn, partitions.DEFAULT)
    held = [row[0] for row in conn.execute(sa.text(
        "SELECT DISTINCT date_trunc('month', decided_at AT TIME ZONE 'UTC')::date FROM decisions_before"))]
    for month in sorted(set(held)):
        partitions.create(conn, month)
    partitions.ensure(conn, datetime.now(UTC))
    op.execute("INSERT INTO decisions SELECT * FROM decisions_before")
    op.execute("DROP TABLE decisions_before")
    op.execute("ALTER TABLE decisions ADD CONSTRAINT pk_decisions PRIMARY KEY (id, decided_at)")
    _indexes("uq_decisions_portfolio_id_seq_decided_at UNIQUE (portfolio_id, seq, decided_at)")
    _append_only("decisions")
    op.execute(_VIEW)

    op.create_table(
        'decision_intents',
        sa.Column('portfolio_id', sa.String(length=64), nullable=False),
        sa.Column('intent_id', sa.String(length=128), nullable=False),
        sa.Column('decision_id', sa.String(length=36), nullable=False),
        sa.Column('decided_at', app.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('portfolio_id', 'intent_id', name=op.f('pk_decision_intents')),
    )
    op.execute("INSERT INTO decision_intents SELECT portfolio_id, intent_id, id, decided_at FROM decisions "
               "WHERE intent_id IS NOT NULL")
    op.execute("""
        CREATE OR REPLACE FUNCTION rpm_decision_intent() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO decision_intents (portfolio_id, intent_id, decision_id, decided_at)
            VALUES (NEW.portfolio_id, NEW.intent_id, NEW.id, NEW.decided_at);
            RETURN NULL;
        END $$""")
    op.execute("CREATE TRIGGER decisions_intent AFTER INSERT ON decisions FOR EACH ROW "
               "WHEN (NEW.intent_id IS NOT NULL) EXECUTE FUNCTION rpm_decision_intent()")
    op.execute("ALTER TABLE decisions ENABLE ALWAYS TRIGGER decisions_intent")

    op.create_table(
        'audit_archives',
        sa.Column('id', sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column('month', sa.Date(), nullable=False),
        sa.Column('partition', sa.String(length=64), nullable=False),
        sa.Column('rows', sa.BigInteger(), nullable=False),
        sa.Column('file', sa.Text(), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('archived_at', app.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('archived_by', sa.String(length=128), nullable=True),
        sa.Column('dropped_at', app.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_archives')),
        sa.UniqueConstraint('month', name=op.f('uq_audit_archives_month')),
    )
    op.create_table(
        'audit_archived_heads',
        sa.Column('chain', sa.String(length=64), nullable=False),
        sa.Column('audit_seq', sa.BigInteger(), nullable=False),
        sa.Column('row_hash', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('chain', 'audit_seq', name=op.f('pk_audit_archived_heads')),
    )
    op.execute(_hash_at(archived=True))
    op.execute(f"GRANT SELECT, INSERT ON decisions, decision_intents TO {APP_ROLE}")
    op.execute(f"GRANT SELECT ON decision_documents, audit_archives, audit_archived_heads TO {APP_ROLE}")


def downgrade() -> None:
    if op.get_bind().execute(sa.text("SELECT count(*) FROM audit_archives")).scalar():
        raise RuntimeError("months of decisions are archived (audit_archives): the chains would have gaps that the "
                           "schema before 0015 cannot account for; a downgrade past 0015 is refused")
    op.execute(_hash_at(archived=False))
    op.drop_table('audit_archived_heads')
    op.drop_table('audit_archives')
    op.execute("DROP VIEW decision_documents")
    op.execute("ALTER TABLE decisions RENAME TO decisions_partitioned")
    op.execute("DROP FUNCTION rpm_decision_intent() CASCADE")
    for (name,) in op.get_bind().execute(sa.text(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'decisions_partitioned'::regclass AND contype IN ('p', 'u', 'f')")):
        op.execute(f'ALTER TABLE decisions_partitioned DROP CONSTRAINT "{name}"')
    for name in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.execute("CREATE TABLE decisions (LIKE decisions_partitioned INCLUDING DEFAULTS INCLUDING STORAGE "
               "INCLUDING COMPRESSION)")
    op.execute("INSERT INTO decisions SELECT * FROM decisions_partitioned")
    op.execute("DROP TABLE decisions_partitioned CASCADE")
    op.execute("ALTER TABLE decisions ADD CONSTRAINT pk_decisions PRIMARY KEY (id)")
    op.execute("ALTER TABLE decisions ADD CONSTRAINT uq_decisions_portfolio_id_intent_id UNIQUE (portfolio_id, intent_id)")
    _indexes("uq_decisions_portfolio_id_seq UNIQUE (portfolio_id, seq)")
    _append_only("decisions")
    op.execute(_VIEW)
    op.drop_table('decision_intents')
    op.execute("ALTER TABLE fills ADD CONSTRAINT fk_fills_decision_id_decisions FOREIGN KEY (decision_id) "
               "REFERENCES decisions (id)")
    op.execute(f"GRANT SELECT, INSERT ON decisions TO {APP_ROLE}")
    op.execute(f"GRANT SELECT ON decision_documents TO {APP_ROLE}")
