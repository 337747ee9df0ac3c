"""ORM rows. The schema is created only by the Alembic migrations in ``migrations/``."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator):
    """Timezone-aware datetimes, written and read back in UTC (a naive one is refused)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Money = Numeric(28, 10)
Json = JSON().with_variant(JSONB(), "postgresql")
BigId = BigInteger()


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ChainedRecord:
    """A record on its portfolio's audit chain (see app/store/audit.py)."""

    audit_seq: Mapped[int] = mapped_column(BigInteger)
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))


class Portfolio(Base):
    """One portfolio: its capital, equity bookkeeping, trading state, config version and audit head."""

    __tablename__ = "portfolios"
    __table_args__ = (Index("ix_portfolios_group", "group_id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_currency: Mapped[str] = mapped_column(String(3), default="USD")
    starting_capital: Mapped[Decimal] = mapped_column(Money)
    realised_pnl: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    peak_equity: Mapped[Decimal | None] = mapped_column(Money)
    day_key: Mapped[str | None] = mapped_column(String(10))
    day_start_equity: Mapped[Decimal | None] = mapped_column(Money)
    day_peak_equity: Mapped[Decimal | None] = mapped_column(Money)
    week_key: Mapped[str | None] = mapped_column(String(10))
    week_start_equity: Mapped[Decimal | None] = mapped_column(Money)
    trading_state: Mapped[str] = mapped_column(String(16), default="ACTIVE")
    # the tripped switches (portfolio-wide and per symbol), as the engine's SwitchState dicts
    switches: Mapped[dict] = mapped_column(Json, default=dict)
    # bounded histories the engine reads: recent confidences, intent times (ATRs: atr_histories)
    memory: Mapped[dict] = mapped_column(Json, default=dict)
    # running decision counters for risk_metrics (updated in the decision's transaction)
    counters: Mapped[dict] = mapped_column(Json, default=dict)
    config_version: Mapped[int] = mapped_column(Integer, default=1)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    last_ledger_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # the head of the portfolio's audit chain
    audit_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    audit_head: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # the group it belongs to (None: directly under the firm)
    group_id: Mapped[str | None] = mapped_column(ForeignKey("groups.id"))


class Group(Base):
    """A group of portfolios, or the firm (``firm``, the root): its limits on their aggregate and its kill-switch
    state (app/risk/firm.py). Its records are on the `_system` chain."""

    __tablename__ = "groups"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("groups.id"))
    currency: Mapped[str] = mapped_column(String(3))
    limits: Mapped[dict] = mapped_column(Json, default=dict)
    switches: Mapped[dict] = mapped_column(Json, default=dict)
    peak_equity: Mapped[Decimal | None] = mapped_column(Money)
    day_key: Mapped[str | None] = mapped_column(String(10))
    day_start_equity: Mapped[Decimal | None] = mapped_column(Money)
    day_peak_equity: Mapped[Decimal | None] = mapped_column(Money)
    week_key: Mapped[str | None] = mapped_column(String(10))
    week_start_equity: Mapped[Decimal | None] = mapped_column(Money)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class FirmMark(Base):
    """The latest firm-wide price of a symbol (POST /marks of no portfolio), which every portfolio reads unless its
    own mark is newer; derived from the `_system` chain's mark updates."""

    __tablename__ = "firm_marks"

    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    price: Mapped[Decimal] = mapped_column(Money)
    history: Mapped[list] = mapped_column(Json, default=list)
    history_hash: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Position(Base):
    __tablename__ = "positions"

    portfolio_id: Mapped[str] = mapped_column(ForeignKey("portfolios.id"), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    units: Mapped[Decimal] = mapped_column(Money)  # signed: > 0 long, < 0 short
    avg_price: Mapped[Decimal] = mapped_column(Money)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Mark(Base):
    """The latest price of a symbol for a portfolio, and a bounded history for correlations."""

    __tablename__ = "marks"

    portfolio_id: Mapped[str] = mapped_column(ForeignKey("portfolios.id"), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    price: Mapped[Decimal] = mapped_column(Money)
    history: Mapped[list] = mapped_column(Json, default=list)
    # the content address of `history` in mark_snapshots, which decisions refer to
    history_hash: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LaterChained:
    """A record chained since 0012 (rows written before hold no place on the chain: NULL)."""

    audit_seq: Mapped[int | None] = mapped_column(BigInteger)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    row_hash: Mapped[str | None] = mapped_column(String(64))


class ConfigVersion(LaterChained, Base):
    __tablename__ = "config_versions"
    __table_args__ = (UniqueConstraint("portfolio_id", "version"),
                      Index("ix_config_versions_portfolio_audit", "portfolio_id", "audit_seq"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    portfolio_id: Mapped[str] = mapped_column(ForeignKey("portfolios.id"))
    version: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict] = mapped_column(Json)
    config_hash: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)


class Decision(ChainedRecord, Base):
    """Every decision ever made. Append-only."""

    __tablename__ = "decisions"
    # partitioned by month of decided_at (app/store/partitions.py): its unique keys include it, and idempotency
    # is kept by decision_intents
    __table_args__ = (
        UniqueConstraint("portfolio_id", "seq", "decided_at"),
        Index("ix_decisions_portfolio_decided", "portfolio_id", "decided_at", "id"),
        Index("ix_decisions_symbol_decided", "portfolio_id", "symbol", "decided_at"),
        Index("ix_decisions_portfolio_audit", "portfolio_id", "audit_seq"),
        Index("ix_decisions_intent", "intent_id"),
        Index("ix_decisions_config_hash", "config_hash"),
        Index("ix_decisions_key", "key_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    portfolio_id: Mapped[str] = mapped_column(ForeignKey("portfolios.id"))
    seq: Mapped[int] = mapped_column(BigInteger)
    intent_id: Mapped[str | None] = mapped_column(String(128))
    request_hash: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(32))
    direction: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(8))
    reason_code: Mapped[str | None] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    approved_units: Mapped[Decimal] = mapped_column(Money)
    price: Mapped[Decimal] = mapped_column(Money)
    reducing: Mapped[bool] = mapped_column(Boolean, default=False)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    config_hash: Mapped[str] = mapped_column(String(64))
    config_version: Mapped[int] = mapped_column(Integer)
    intent: Mapped[dict] = mapped_column(Json)
    # how the decision was reached, as its JSON text (rows written before 0010: the document itself;
    # read either through app.store.audit.document, or in SQL through the view decision_documents)
    breakdown: Mapped[str | dict] = mapped_column(Json)
    context: Mapped[dict] = mapped_column(Json)
    # everything the engine read to make this decision (replayable), stored as the breakdown is
    state_before: Mapped[str | dict] = mapped_column(Json)
    booking: Mapped[dict | None] = mapped_column(Json)
    latency_ms: Mapped[float | None] = mapped_column(Numeric(12, 3))
    # who submitted it (MiFID II RTS 6: every order traceable to who sent it)
    key_id: Mapped[str | None] = mapped_column(String(36))
    key_name: Mapped[str | None] = mapped_column(String(128))
    key_role: Mapped[str | None] = mapped_column(String(16))
    # the request that carried it (X-Request-ID, also in the logs)
    request_id: Mapped[str | None] = mapped_column(String(64))


class Fill(LaterChained, Base):
    """An execution report reconciling an approved decision. Append-only."""

    __tablename__ = "fills"
    __table_args__ = (Index("ix_fills_portfolio_audit", "portfolio_id", "audit_seq"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    portfolio_id: Mapped[str] = mapped_column(ForeignKey("portfolios.id"))
    # (no foreign key: an archived month's decisions leave the database, their fills stay)
    decision_id: Mapped[str] = mapped_column(String(36), unique=True)
    filled_units: Mapped[Decimal] = mapped_column(Money)
    fill_price: Mapped[Decimal] = mapped_column(Money)
    realised_delta: Mapped[Decimal] = mapped_column(Money)
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class SwitchEventRow(ChainedRecord, Base):
    """Kill-switch transitions: tripped, cleared, references re-based. Append-only."""

    __tablename__ = "switch_events"
    __table_args__ = (Index("ix_switch_events_portfolio_at", "portfolio_id", "at"),
                      Index("ix_switch_events_portfolio_audit", "portfolio_id", "audit_seq"),
                      Index("ix_switch_events_system_audit", "audit_seq", postgresql_where=text("portfolio_id IS NULL")))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # None: an event of a group or the firm (its id in ``detail["level"]``), on the `_system` chain
    portfolio_id: Mapped[str | None] = mapped_column(ForeignKey("portfolios.id"))
    switch: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(16))
    symbol: Mapped[str | None] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    value: Mapped[float | None] = mapped_column(Money)
    threshold: Mapped[float | None] = mapped_column(Money)
    cooldown_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict] = mapped_column(Json, default=dict)
    decision_id: Mapped[str | None] = mapped_column(String(36))


class AdminAction(ChainedRecord, Base):
    """Who did what, when, why, with before and after. Append-only."""

    __tablename__ = "admin_actions"
    __table_args__ = (Index("ix_admin_actions_portfolio_at", "portfolio_id", "at"),
                      Index("ix_admin_actions_portfolio_audit", "portfolio_id", "audit_seq"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    portfolio_id: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128))
    actor_role: Mapped[str | None] = mapped_column(String(16))
    actor_key_id: Mapped[str | None] = mapped_column(String(36))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(Text)
    before: Mapped[dict | None] = mapped_column(Json)
    after: Mapped[dict | None] = mapped_column(Json)


class ApiKey(Base):
    """An API key: only its sha256 is stored; the public prefix finds it."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    # None: every portfolio; otherwise the list of portfolio ids the key may use
    portfolios: Mapped[list | None] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str | None] = mapped_column(String(128))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LedgerEntry(LaterChained, Base):
    """Every change of the books, in order: opens, reducing trades, fills, closes. Append-only.

    Positions and realised PnL can be recomputed from these alone.
    """

    __tablename__ = "ledger_entries"
    __table_args__ = (UniqueConstraint("portfolio_id", "seq"),
                      Index("ix_ledger_entries_portfolio_audit", "portfolio_id", "audit_seq"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    portfolio_id: Mapped[str] = mapped_column(ForeignKey("portfolios.id"))
    seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(8))  # open | reduce | fill | close
    symbol: Mapped[str] = mapped_column(String(32))
    decision_id: Mapped[str | None] = mapped_column(String(36))
    units: Mapped[Decimal] = mapped_column(Money)  # signed for open/reduce/close: the trade's units
    price: Mapped[Decimal] = mapped_column(Money)
    realised_pnl: Mapped[Decimal] = mapped_column(Money)
    position_units: Mapped[Decimal] = mapped_column(Money)  # the position after this entry
    position_avg_price: Mapped[Decimal | None] = mapped_column(Money)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str | None] = mapped_column(String(128))


class AuditHead(Base):
    """The head of an audit chain that belongs to no portfolio (`_system`: keys)."""

    __tablename__ = "audit_heads"

    chain: Mapped[str] = mapped_column(String(64), primary_key=True)
    audit_seq: Mapped[int] = mapped_column(BigInteger)
    audit_head: Mapped[str] = mapped_column(String(64))


class AtrHistory(Base):
    """The ATRs RPM has seen for one symbol of a portfolio (its volatility baseline), newest last.

    One row per symbol, not a key of the portfolio row: a decision rewrites only its symbol's.
    """

    __tablename__ = "atr_histories"

    portfolio_id: Mapped[str] = mapped_column(ForeignKey("portfolios.id"), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    history: Mapped[list] = mapped_column(Json)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class MarkSnapshot(Base):
    """A mark history as a decision read it, stored once and named by its sha256. Append-only.

    Decisions refer to these instead of copying up to 100 prices per symbol each time.
    """

    __tablename__ = "mark_snapshots"

    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(32))
    prices: Mapped[list] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class EquityPoint(LaterChained, Base):
    """Equity, drawdown and peak equity after each change of the books (marks, fills, closes) and whenever the
    peak moves: the equity curve, and what the stored peak equity is reconciled with."""

    __tablename__ = "equity_points"
    __table_args__ = (Index("ix_equity_points_portfolio_at", "portfolio_id", "at"),
                      Index("ix_equity_points_portfolio_audit", "portfolio_id", "audit_seq"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    portfolio_id: Mapped[str] = mapped_column(ForeignKey("portfolios.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    equity: Mapped[Decimal] = mapped_column(Money)
    drawdown: Mapped[float] = mapped_column(Money)  # below zero equity it exceeds 1, without bound
    peak_equity: Mapped[Decimal | None] = mapped_column(Money)


class MarkUpdate(ChainedRecord, Base):
    """Prices posted (POST /marks), on the portfolio's chain: the marks table is derived from these. Append-only."""

    __tablename__ = "mark_updates"
    __table_args__ = (Index("ix_mark_updates_portfolio_audit", "portfolio_id", "audit_seq"),
                      Index("ix_mark_updates_system_audit", "audit_seq", postgresql_where=text("portfolio_id IS NULL")))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # None: firm marks, on the `_system` chain
    portfolio_id: Mapped[str | None] = mapped_column(ForeignKey("portfolios.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    # {symbol: price as its decimal text}, and {symbol: the hash of its mark history after it}
    prices: Mapped[dict] = mapped_column(Json)
    history_hashes: Mapped[dict] = mapped_column(Json)


class MerkleNode(Base):
    """The hash of a perfect subtree of a chain's Merkle tree (RFC 6962): 2**level leaves from idx * 2**level.

    Leaves are the chain's rows (their row_hash), in sequence order. Written by the checkpointer, outside any
    portfolio lock; what proofs are built from. Append-only."""

    __tablename__ = "merkle_nodes"

    chain: Mapped[str] = mapped_column(String(64), primary_key=True)
    level: Mapped[int] = mapped_column(Integer, primary_key=True)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditTrail(Base):
    """The trail's id (one row, made by the migration): every checkpoint names it. Append-only."""

    __tablename__ = "audit_trail"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AuditCheckpoint(Base):
    """A signed checkpoint (chain, size, root, time) as appended to the sink outside the database; this copy
    serves proofs, the sink's is the one verify trusts. Append-only."""

    __tablename__ = "audit_checkpoints"

    chain: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    root: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    statement: Mapped[str] = mapped_column(Text)  # the signed bytes: canonical JSON
    signature: Mapped[str] = mapped_column(String(128))  # base64 Ed25519


class RiskEvent(ChainedRecord, Base):
    """A risk event (app/store/events.py): a switch tripped or cleared, a halt, a resume, a change of configuration,
    instruments or capital, a correction, an approval expired, an audit failure. Written in the transaction of its
    cause, on the same chain; the outbox webhooks and the stream read. Append-only.

    ``id`` orders every event by commit (each is numbered under one lock taken at commit); ``seq`` numbers a chain's
    events from 1. Neither is hashed: the database gives both at insert."""

    __tablename__ = "risk_events"
    __table_args__ = (UniqueConstraint("chain", "seq"),
                      Index("ix_risk_events_portfolio_audit", "portfolio_id", "audit_seq"),
                      Index("ix_risk_events_system_audit", "audit_seq", postgresql_where=text("portfolio_id IS NULL")))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # None: an event of a group, the firm or the service, on the `_system` chain
    portfolio_id: Mapped[str | None] = mapped_column(ForeignKey("portfolios.id"))
    chain: Mapped[str] = mapped_column(String(64))  # the portfolio's id, or `_system`
    seq: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(32))
    level: Mapped[str | None] = mapped_column(String(64))  # a `_system` event's group (`firm`: the firm)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    data: Mapped[dict] = mapped_column(Json, default=dict)


class Webhook(Base):
    """An endpoint risk events are delivered to (app/webhooks.py): its URL, its secret (requests are signed with
    it), the event types and portfolios it wants (None: all), and how far the deliverer has queued for it."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(128))
    types: Mapped[list | None] = mapped_column(Json)
    portfolios: Mapped[list | None] = mapped_column(Json)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str | None] = mapped_column(String(128))
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # the events up to this id are queued (webhook_deliveries) or did not concern it
    queued_to: Mapped[int] = mapped_column(BigInteger, default=0)


class WebhookDelivery(Base):
    """One event for one endpoint: pending, delivered, or failed (its attempts spent; retried on request)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_pending", "webhook_id", "event_id",
                            postgresql_where=text("status = 'pending'")),)

    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id"), primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("risk_events.id"), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DecisionIntent(Base):
    """Idempotency: the decision an intent id of a portfolio got, whatever its month (written by a trigger in the
    decision's own insert; app/store/partitions.py)."""

    __tablename__ = "decision_intents"

    portfolio_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    intent_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    decision_id: Mapped[str] = mapped_column(String(36))
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AuditArchive(Base):
    """A month of decisions archived (`rpm audit archive`): detached from the table, exported to ``file``."""

    __tablename__ = "audit_archives"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    month: Mapped[date] = mapped_column(Date, unique=True)
    partition: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(BigInteger)
    file: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    archived_at: Mapped[datetime] = mapped_column(UTCDateTime)
    archived_by: Mapped[str | None] = mapped_column(String(128))
    dropped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditArchivedHead(Base):
    """The hash of a chain's last row when an archive took it (the chain-head guard reads it)."""

    __tablename__ = "audit_archived_heads"

    chain: Mapped[str] = mapped_column(String(64), primary_key=True)
    audit_seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    row_hash: Mapped[str] = mapped_column(String(64))
