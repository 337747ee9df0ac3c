"""The unit of work: how a use case reaches the database, and the one way it changes a portfolio.

``portfolios(wanted)`` opens a portfolio transaction (app/store/transaction.py): the portfolios locked
(in sorted order) and read in one round trip. A use case lets the engine decide on ``Portfolio.state``,
queues the rows that record it (``add``, ``ledger``, ``events``, ``admin_action``...), and commits the new state
with them in one more round trip; nothing is written unless it commits. ``lock=False`` reads the state as
committed, for the reads of the API. The `default` portfolio, which always exists, is made inside the
transaction that finds it missing.

``session()`` and ``reading()`` are the ORM's, for what is not a portfolio's state: API keys (on the
``_system`` chain), the decision history, equity curves. Database failures become the service's errors
here, in one place: 503, or 422 for a value the database refuses.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text

from app.errors import DatabaseRefused, Invalid, NotFound, Unavailable
from app.risk import PortfolioState, RPMConfig, domain, engine
from app.risk.model import SwitchEvent
from app.store import models as m
from app.store import partitions
from app.store.audit import Chain
from app.store.database import LAG_SQL, Database, DatabaseUnavailable, DataRejected, note_read
from app.store.events import REQUEST_ID
from app.store.repository import admin_values, equity_point_values, event_values, ledger_values, new_portfolio
from app.store.transaction import Locked, PortfolioTransaction, Wanted, release_rows

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Actor:
    """Who made a request: the API key's id, name and role (or the CLI's operator), and the request's id."""

    name: str
    role: str
    key_id: str | None = None
    request_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "name": self.name, "role": self.role}


@dataclass
class Portfolio:
    """One portfolio of an open transaction: its state as read, and what the use case records of it."""

    tx: Any  # PortfolioTransaction, or the fake of the unit tests
    locked: Locked

    @property
    def id(self) -> str:
        return self.locked.loaded.row.id

    @property
    def row(self) -> Any:
        """The portfolio row: its counters, sequence numbers and the head of its audit chain."""
        return self.locked.loaded.row

    @property
    def config(self) -> RPMConfig:
        return self.locked.loaded.config

    @property
    def state(self) -> PortfolioState:
        return self.locked.loaded.state

    @state.setter
    def state(self, state: PortfolioState) -> None:
        self.locked.loaded.state = state

    def sealed(self, model: type, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` given the next place on the portfolio's audit chain."""
        return Chain(self.row).seal(model, values)

    def add(self, *rows: tuple[type, dict[str, Any]]) -> None:
        self.tx.add(list(rows))

    def release_expired(self, now: datetime) -> None:
        """The approvals due now released first, their rows ahead of the use case's on the chain."""
        if any(a.expires_at <= now for a in self.state.open_approvals):
            released = engine.expire(self.state, self.config, now)
            self.add(*release_rows(self.row, released, now))
            self.state = released

    def events(self, events: list[SwitchEvent], decision_id: str | None = None) -> None:
        """Switch events, on the chain (a group's or the firm's on the `_system` chain, at commit)."""
        events = self.tx.level_events(events, decision_id)
        self.add(*((m.SwitchEventRow, self.sealed(m.SwitchEventRow, event_values(self.id, e, decision_id)))
                   for e in events))

    def admin_action(self, actor: Actor, action: str, at: datetime, reason: str | None, before: Any = None,
                     after: Any = None) -> None:
        """Who did what, when, why, with before and after: on the chain."""
        model, values = admin_row(actor, portfolio_id=self.id, action=action, at=at, reason=reason, before=before,
                                  after=after)
        self.add((model, self.sealed(model, values)))

    def ledger(self, **values: Any) -> None:
        """One change of the books, numbered in the portfolio's ledger."""
        self.add((m.LedgerEntry, self.sealed(m.LedgerEntry, ledger_values(self.row, **values))))

    def equity_point(self, outcome: engine.Outcome, at: datetime) -> None:
        """Equity, drawdown and peak after a change of the books, on the chain."""
        self.add((m.EquityPoint, self.sealed(m.EquityPoint, equity_point_values(self.id, outcome.state, outcome.equity,
                                                                                 at))))

    def stored_decision(self, decision_id: str) -> Any:
        return self.tx.stored_decision(self.id, decision_id)

    def config_version(self) -> dict[str, Any]:
        """The row of the configuration version in force."""
        return self.tx.config_version(self.id, self.row.config_version)

    def latencies(self) -> list[float]:
        return self.tx.latencies(self.id)

    def commit(self, state: PortfolioState, now: datetime) -> None:
        """The transaction of this portfolio alone: ``state`` and the rows queued written, and COMMIT."""
        self.state = state
        with self.tx.writing():
            self.tx.save(self.locked, now)
            self.tx.commit()


@dataclass
class Transaction:
    """An open portfolio transaction: the portfolios it locked, by id."""

    tx: Any
    portfolios: dict[str, Portfolio] = field(default_factory=dict)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """The pipeline rows go into as they are queued (the server writes them while the next are decided)."""
        with self.tx.writing():
            yield

    def commit(self, now: datetime) -> None:
        """Write what changed of each portfolio's state, the rows queued, and COMMIT (inside ``writing``)."""
        for portfolio in self.portfolios.values():
            self.tx.save(portfolio.locked, now)
        self.tx.commit()


def admin_row(actor: Actor, **values: Any) -> tuple[type, dict[str, Any]]:
    """An admin action (app/store/repository.py: ``admin_values``) for a portfolio transaction to seal, with the
    request that made it (for its risk events' log lines; neither stored nor hashed)."""
    return m.AdminAction, {**admin_values(actor, **values), REQUEST_ID: actor.request_id}


def announce(events: list[dict[str, Any]]) -> None:
    """Risk events just committed: a log line each (app/store/events.py), counted by type."""
    from app.observability import count_events, current_request_id
    from app.store.events import log_committed

    log_committed(events, current_request_id())
    count_events(events)


def check_portfolio_id(value: Any) -> str:
    """A portfolio id as given, or Invalid (422)."""
    if not domain.PORTFOLIO_ID.matches(value):
        raise Invalid("invalid portfolio_id", {"portfolio_id": [f"must be {domain.PORTFOLIO_ID.description}"]})
    return value


class UnitOfWork:
    # TEST ONLY (RPM_TEST_UNSAFE_DISABLE_GROUP_LOCK): the groups above portfolios read without their lock
    unsafe_groups = False

    def __init__(self, db: Database, clock: Clock = system_clock, default_config: RPMConfig | None = None,
                 history_db: Database | None = None, history_reads: int = 4):
        self.db = db
        # where the compliance reads go (DATABASE_READ_URL: a streaming replica), the primary unless given, and how
        # many may run at once in this process
        self.history_db = history_db or db
        self._history_slots = threading.BoundedSemaphore(max(1, history_reads))
        self.clock = clock
        self.default_config = default_config or RPMConfig()

    @contextmanager
    def portfolios(self, wanted: dict[str, Wanted], *, lock: bool = True,
                   levels: bool | None = None) -> Iterator[Transaction]:
        """A transaction on the portfolios of ``wanted`` (read what each needs; locked unless ``lock`` is
        False), rolled back unless committed. 404 for a portfolio that does not exist. ``levels`` (by default when
        locking): the groups and the firm above them read too (locked after them when locking)."""
        for portfolio_id in wanted:
            check_portfolio_id(portfolio_id)
        with self._transaction() as tx:
            locked = tx.lock(wanted, lock=lock, levels=levels)
            missing = sorted(pid for pid, found in locked.items() if found is None)
            unknown = [pid for pid in missing if pid != domain.DEFAULT_PORTFOLIO]
            if unknown:
                raise NotFound(f"unknown portfolio {unknown[0]!r}")
            if missing:  # `default`, which always exists
                locked.update(self._made_default(tx, wanted[domain.DEFAULT_PORTFOLIO], lock, levels))
            opened = {pid: Portfolio(tx, found) for pid, found in locked.items()}
            if lock:  # a change to come: what expired is released first
                now = self.clock()
                for portfolio in opened.values():
                    portfolio.release_expired(now)
            yield Transaction(tx, opened)

    @contextmanager
    def portfolio(self, portfolio_id: str, *, lock: bool = True) -> Iterator[Portfolio]:
        """A transaction on one portfolio: ``commit`` it, or nothing is written."""
        with self.portfolios({portfolio_id: Wanted()}, lock=lock) as opened:
            yield opened.portfolios[portfolio_id]

    def listed(self, allowed: tuple[str, ...] | None) -> list[tuple[Any, RPMConfig]]:
        """Every portfolio as committed (those of ``allowed`` only, unless None), by id: its row and its
        configuration; `default` among them (made in this transaction if missing, never committed here)."""
        with self.portfolios({domain.DEFAULT_PORTFOLIO: Wanted()}, lock=False) as opened:
            return opened.tx.listed(allowed)

    def known(self, portfolio_id: str) -> None:
        """NotFound (404) unless the portfolio exists."""
        with self.portfolio(portfolio_id, lock=False):
            pass

    @contextmanager
    def creating(self, portfolio_id: str, config: RPMConfig, created_by: str) -> Iterator[Portfolio | None]:
        """A transaction on a portfolio it makes: the portfolio, locked, or None when one of that id exists."""
        with self._transaction() as tx:
            if not tx.create(*new_portfolio(portfolio_id, config, self.clock(), created_by)):
                yield None
                return
            yield Portfolio(tx, tx.lock({portfolio_id: Wanted()})[portfolio_id])

    def ensure_default(self) -> None:
        """Make the `default` portfolio if the database lacks it (as `rpm db upgrade` does)."""
        with self._transaction() as tx:
            if tx.create(*new_portfolio(domain.DEFAULT_PORTFOLIO, self.default_config, self.clock(), "system")):
                tx.commit()

    def ensure_partitions(self) -> list[Any]:
        """Make this month's partition of the decisions and the months ahead (app/store/partitions.py); the months
        made. Needs the right to create tables (the schema's owner, as `rpm db upgrade`)."""
        with self.session() as session:
            return partitions.ensure(session.connection(), self.clock())

    @contextmanager
    def firm(self) -> Iterator[PortfolioTransaction]:
        """A transaction on the groups and the firm (app/services/firm.py), rolled back unless committed."""
        with self._transaction() as tx:
            yield tx

    @contextmanager
    def _transaction(self) -> Iterator[PortfolioTransaction]:
        """A portfolio transaction on a connection of the pool, rolled back unless committed (the seam the
        unit tests replace with a transaction in memory)."""
        with self._errors(), self.db.connection() as conn:
            tx = PortfolioTransaction(conn, self.db.cache_key, unsafe_groups=self.unsafe_groups)
            try:
                yield tx
            finally:
                tx.forget_uncommitted()
            if tx.committed_events:
                announce(tx.committed_events)

    def _made_default(self, tx: PortfolioTransaction, wanted: Wanted, lock: bool,
                      levels: bool | None) -> dict[str, Locked | None]:
        tx.create(*new_portfolio(domain.DEFAULT_PORTFOLIO, self.default_config, self.clock(), "system"))
        return tx.lock({domain.DEFAULT_PORTFOLIO: wanted}, lock=lock, levels=levels)

    @contextmanager
    def session(self) -> Iterator[Any]:
        """An ORM transaction (what is not a portfolio's state: keys on the `_system` chain), committed when
        the block succeeds."""
        with self._errors(), self.db.transaction() as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Any]:
        """An ORM session that reads and writes nothing (the decision history, equity curves)."""
        with self._errors(), self.db.reader() as session:
            yield session

    @contextmanager
    def history(self) -> Iterator[Any]:
        """An ORM session that only reads, on the replica when one is set (the compliance reads: the decisions,
        their export, audit events, reports, replay), which notes how far behind the primary it is."""
        with self.history_slot(), self.history_errors(), self.history_db.reader() as session:
            self.note_history_read(session)
            yield session

    @contextmanager
    def history_slot(self) -> Iterator[None]:
        """One of this process's compliance reads at once (RPM_HISTORY_READS), or 503 at once: the other threads
        are trading's."""
        if not self._history_slots.acquire(blocking=False):
            raise Unavailable("too many compliance reads at once in this process (RPM_HISTORY_READS): try again")
        try:
            yield
        finally:
            self._history_slots.release()

    @contextmanager
    def history_errors(self) -> Iterator[None]:
        """The database errors of a compliance read, naming the replica when it is one."""
        try:
            with self._errors():
                yield
        except Unavailable as exc:
            if self.history_db is self.db:
                raise
            raise Unavailable(f"the read replica (DATABASE_READ_URL) is unavailable: {exc.message}") from exc

    def note_history_read(self, session_or_connection: Any) -> None:
        """Note, for the answer's headers, where a compliance read is served from (and the replica's lag)."""
        if self.history_db is not self.db:
            note_read(*session_or_connection.execute(text(LAG_SQL)).one())

    @staticmethod
    @contextmanager
    def _errors() -> Iterator[None]:
        try:
            yield
        except DataRejected as exc:
            raise DatabaseRefused(str(exc)) from exc
        except DatabaseUnavailable as exc:
            raise Unavailable(str(exc)) from exc
