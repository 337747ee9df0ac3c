"""Decisions partitioned by month (PostgreSQL declarative partitioning, RANGE on `decided_at`).

One partition per calendar month (UTC), named ``decisions_YYYY_MM``, plus ``decisions_default`` for a decision
whose month has no partition yet, so that no decision ever fails for want of one. `rpm` makes the months ahead
itself (``MONTHS_AHEAD``: at `rpm db upgrade`, when a worker starts and from the checkpointer's loop), so in
service the default partition stays empty; a month is made only while the default partition holds none of its
rows (moving rows out of it would be a change to the append-only trail).

Only the decisions are partitioned: they are nearly all of the trail's bytes (each carries its breakdown and the
state it saw). The books' records (ledger entries, fills, marks posted) are what positions are recomputed from,
and stay whole. Idempotency is kept by a table of its own, ``decision_intents`` ((portfolio, intent id) ->
decision), filled by a trigger in the decision's own insert: a unique index of a partitioned table must include
the partition key, which would let one intent id be decided once per month.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

from sqlalchemy import Connection, text

TABLE = "decisions"
KEY = "decided_at"
DEFAULT = f"{TABLE}_default"
MONTHS_AHEAD = 3
_NAME = re.compile(rf"^{TABLE}_(\d{{4}})_(\d{{2}})$")
PARTITION = re.compile(rf"^{TABLE}_(\d{{4}}_\d{{2}}|default)$")  # a partition's name


def month_of(value: date | datetime) -> date:
    return date(value.year, value.month, 1)


def start_of(month: date) -> datetime:
    """The first instant of ``month`` (UTC): where its partition begins."""
    return datetime(month.year, month.month, 1, tzinfo=UTC)


def next_month(month: date) -> date:
    return date(month.year + (month.month == 12), month.month % 12 + 1, 1)


def month_text(month: date) -> str:
    """``month`` as YYYY-MM (four digits of year whatever the year)."""
    return month.isoformat()[:7]


def name_of(month: date) -> str:
    return f"{TABLE}_{month.year:04d}_{month.month:02d}"


def parse_month(value: str) -> date:
    """``YYYY-MM`` as the first day of that month (ValueError otherwise)."""
    match = re.fullmatch(r"(\d{4})-(\d{2})", value.strip())
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise ValueError(f"{value!r} is not a month: YYYY-MM")
    return date(int(match.group(1)), int(match.group(2)), 1)


def _bound(month: date) -> str:
    return f"{month.isoformat()} 00:00:00+00"


def months(conn: Connection) -> list[date]:
    """The months that have a partition of their own, oldest first."""
    names = conn.execute(text(
        f"SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        f"WHERE i.inhparent = '{TABLE}'::regclass")).scalars()
    found = [_NAME.match(n) for n in names]
    return sorted(date(int(f.group(1)), int(f.group(2)), 1) for f in found if f)


def create(conn: Connection, month: date) -> bool:
    """Make ``month``'s partition unless it exists or the default partition holds rows of it; whether it was made."""
    if month in months(conn):
        return False
    held = conn.execute(text(f"SELECT 1 FROM {DEFAULT} WHERE {KEY} >= :a AND {KEY} < :b LIMIT 1"),
                        {"a": _bound(month), "b": _bound(next_month(month))}).first()
    if held:
        return False
    name = name_of(month)
    # made alone, then attached: ATTACH takes a SHARE UPDATE EXCLUSIVE lock of the table, which decisions being
    # inserted do not wait for (CREATE TABLE ... PARTITION OF would take an ACCESS EXCLUSIVE one); the new table's
    # indexes, triggers and foreign key come with the attachment
    conn.execute(text(f"CREATE TABLE IF NOT EXISTS {name} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING STORAGE "
                      "INCLUDING COMPRESSION)"))
    conn.execute(text(f"ALTER TABLE {TABLE} ATTACH PARTITION {name} "
                      f"FOR VALUES FROM ('{_bound(month)}') TO ('{_bound(next_month(month))}')"))
    refuse_truncate(conn, name)
    return True


def refuse_truncate(conn: Connection, name: str) -> None:
    """A partition refuses TRUNCATE as the table does (a statement trigger of the table is not one of its
    partitions'; its row triggers, refusing UPDATE and DELETE, are)."""
    conn.execute(text(f"CREATE TRIGGER {name}_no_truncate BEFORE TRUNCATE ON {name} "
                      "FOR EACH STATEMENT EXECUTE FUNCTION rpm_refuse_change()"))
    conn.execute(text(f"ALTER TABLE {name} ENABLE ALWAYS TRIGGER {name}_no_truncate"))


def ensure(conn: Connection, now: datetime | None = None, ahead: int = MONTHS_AHEAD) -> list[date]:
    """Make this month's partition and ``ahead`` more (the caller commits); the months made.

    At most a second is waited for each lock (the months ahead leave time to try again)."""
    month = month_of(now or datetime.now(UTC))
    conn.execute(text("SET LOCAL lock_timeout = '1s'"))
    # one maker at a time (every host's workers try at start and hourly): the others wait, then find them made
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('rpm.partitions'))"))
    made = []
    for _ in range(ahead + 1):
        if create(conn, month):
            made.append(month)
        month = next_month(month)
    return made
