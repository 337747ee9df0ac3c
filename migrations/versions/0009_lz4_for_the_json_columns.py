"""JSON columns compressed with lz4 instead of pglz (PostgreSQL 14+ built with lz4)

A decision row is ~5 KB, most of it JSON (`state_before` ~3 KB): PostgreSQL compresses it
before moving it out of line. pglz tries and mostly fails (ATR histories are raw floats), and
its attempt alone cost ~25 µs per decision; lz4 compresses `state_before` by ~20% at a fraction
of the cost: inserting decision rows took 111 instead of 151 µs each (bench in the README).
Only new values are compressed with lz4; stored ones stay as they are (both read the same).
Nothing changes on SQLite, or on a PostgreSQL built without lz4.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24 11:40:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

# every JSONB column of 0001-0008, by table
JSON_COLUMNS = {
    "decisions": ("intent", "breakdown", "context", "state_before", "booking"),
    "portfolios": ("switches", "memory", "counters"),
    "atr_histories": ("history",),
    "marks": ("history",),
    "mark_snapshots": ("prices",),
    "config_versions": ("body",),
    "switch_events": ("detail",),
    "admin_actions": ("before", "after"),
    "api_keys": ("portfolios",),
}


def lz4_available() -> bool:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return False
    values = bind.execute(sa.text(
        "SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")).scalar()
    return values is not None and "lz4" in values


def _compression(method: str) -> None:
    if not lz4_available():
        return
    for table, columns in JSON_COLUMNS.items():
        op.execute(f"ALTER TABLE {table} " + ", ".join(f"ALTER COLUMN {c} SET COMPRESSION {method}" for c in columns))


def upgrade() -> None:
    _compression("lz4")


def downgrade() -> None:
    _compression("default")
