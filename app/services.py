"""The use cases of the service: load state under the portfolio lock, let the engine decide, commit.

Services take primitives and return JSON-ready dicts; the HTTP layer only translates.
An answer is returned only after the transaction holding it has committed.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import psycopg
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.risk import (
    ConfigError,
    CooldownActive,
    FillError,
    IntentError,
    OutOfRange,
    ResumeError,
    RPMConfig,
    TradeIntent,
    domain,
    engine,
)
from app.risk.config import canonical_json
from app.risk.metrics import RiskMetrics
from app.risk.model import Booking, symbol_error

from .errors import Conflict, Invalid, NotFound, ServiceError, Unavailable
from .group_commit import GroupCommit
from .store import models as m
from .store import repository
from .store.audit import SYSTEM_CHAIN, Chain, document, document_text
from .store.database import Database, DatabaseUnavailable, DataRejected
from .store.repository import Loaded, PortfolioNotFound

log = logging.getLogger("rpm")


@dataclass(frozen=True)
class Actor:
    """Who made a request: the API key's id, name and role (or the CLI's operator)."""

    name: str
    role: str
    key_id: str | None = None
    request_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "name": self.name, "role": self.role}


@dataclass
class Record:
    """The rows one decision writes, sealed on the chain."""

    decision: dict[str, Any]
    ledger: dict[str, Any] | None
    events: list[dict[str, Any]]


@dataclass(frozen=True)
class Checked:
    """An intent validated before the lock, and the configuration version it was validated under."""

    config_version: int
    intent: TradeIntent
    request_hash: str


# an intent to decide: its fields, who sent it, when its request started, and its early validation
Item = tuple[dict[str, Any], "Actor", float, Checked | None]


def check_portfolio_id(value: Any) -> str:
    """A portfolio id as given, or Invalid (422)."""
    if not domain.PORTFOLIO_ID.matches(value):
        raise Invalid("invalid portfolio_id", {"portfolio_id": [f"must be {domain.PORTFOLIO_ID.description}"]})
    return value


def in_batch(index: int, exc: Invalid) -> Invalid:
    """A refused intent of a batch, named by its place in the list."""
    return Invalid(f"intent {index}: {exc.message}", {str(index): exc.errors})


def request_hash(intent: TradeIntent) -> str:
    return hashlib.sha256(canonical_json(intent.to_dict()).encode()).hexdigest()


def _portfolio_of(fields: dict[str, Any]) -> str:
    return fields.get("portfolio_id") or domain.DEFAULT_PORTFOLIO


def _wanted(items: list[Item]) -> dict[str, Any]:
    """What the decisions of ``items`` need read, by portfolio: their intent ids (retries?) and symbols (ATRs)."""
    from .store.pipeline import Wanted

    requests: dict[str, Wanted] = {}
    for fields, *_ in items:
        wanted = requests.setdefault(_portfolio_of(fields), Wanted())
        if isinstance(fields.get("intent_id"), str):
            wanted.intent_ids.append(fields["intent_id"])
        if isinstance(fields.get("symbol"), str):
            wanted.symbols.add(fields["symbol"])
    return requests


@dataclass(frozen=True)
class Heads:
    """What a decision advances on its portfolio's row: put back when deciding it failed (_decide_items)."""

    last_seq: int
    last_ledger_seq: int
    audit_seq: int
    audit_head: str | None
    counters: dict[str, Any]

    @classmethod
    def of(cls, row: Any) -> Heads:
        return cls(row.last_seq, row.last_ledger_seq, row.audit_seq, row.audit_head, row.counters)

    def restore(self, row: Any) -> None:
        row.last_seq, row.last_ledger_seq, row.audit_seq = self.last_seq, self.last_ledger_seq, self.audit_seq
        row.audit_head, row.counters = self.audit_head, self.counters


def system_clock() -> datetime:
    return datetime.now(UTC)


def _f(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


class _DefaultMissing(Exception):
    """The `default` portfolio is not in the database yet (_decide_pipelined makes it)."""


class RPMService:
    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime] = system_clock,
        default_config: RPMConfig | None = None,
        default_capital: float | None = None,
        group_commit: bool = True,
    ):
        self.db = db
        self.clock = clock
        self.default_config = default_config or RPMConfig()
        self.default_capital = default_capital
        # concurrent single intents of this process share a transaction (PostgreSQL; RPM_GROUP_COMMIT=0: off)
        self.group_commit = group_commit
        # one group per portfolio: a transaction locks every portfolio it decides for, so intents of another
        # portfolio in it would wait for (and time out with) a lock that is not theirs
        self._groups: dict[str, GroupCommit] = {}
        self._groups_lock = threading.Lock()
        # the last configuration version seen per portfolio (to validate intents before the lock)
        self._configs: dict[str, tuple[int, RPMConfig]] = {}

    # -- plumbing --------------------------------------------------------------------
    # TEST ONLY (RPM_TEST_UNSAFE_DISABLE_PORTFOLIO_LOCK): read the state without the lock, as a naive
    # implementation would, so that the race tests can show the breach the lock prevents
    unsafe_disable_portfolio_lock = False

    def _load(self, session, portfolio_id: str, *, lock: bool = True) -> Loaded:
        check_portfolio_id(portfolio_id)
        try:
            return repository.load(session, portfolio_id, lock=lock)
        except PortfolioNotFound:
            if portfolio_id != domain.DEFAULT_PORTFOLIO:
                raise NotFound(f"unknown portfolio {portfolio_id!r}") from None
        # the `default` portfolio always exists: created on first use
        self._create_default(session)
        return repository.load(session, portfolio_id, lock=lock)

    def _create_default(self, session) -> None:
        capital = None if self.default_capital is None else Decimal(repr(self.default_capital))
        try:
            with session.begin_nested():
                repository.create_portfolio(session, domain.DEFAULT_PORTFOLIO, self.default_config, self.clock(), capital)
        except IntegrityError:
            pass  # created concurrently by another request

    def _write(self, fn: Callable[[Any], Any]) -> Any:
        try:
            with self.db.transaction() as session:
                return fn(session)
        except DataRejected as exc:
            raise Invalid(str(exc)) from exc
        except DatabaseUnavailable as exc:
            raise Unavailable(str(exc)) from exc

    def _read(self, fn: Callable[[Any], Any]) -> Any:
        try:
            with self.db.reader() as session:
                return fn(session)
        except DataRejected as exc:
            raise Invalid(str(exc)) from exc
        except DatabaseUnavailable as exc:
            raise Unavailable(str(exc)) from exc

    def ensure_default_portfolio(self) -> None:
        def run(session):
            if session.get(m.Portfolio, domain.DEFAULT_PORTFOLIO) is None:
                self._create_default(session)

        self._write(run)

    # -- trading ---------------------------------------------------------------------
    def process_trade(self, fields: dict[str, Any], actor: Actor) -> dict[str, Any]:
        started = time.perf_counter()
        portfolio_id = check_portfolio_id(_portfolio_of(fields))
        if self.group_commit and not self.unsafe_disable_portfolio_lock:
            return self._group(portfolio_id).submit((fields, actor, started, self._prevalidated(portfolio_id, fields)))
        answers, locked = self._refused_as_invalid(self._decide_pipelined, [(fields, actor, started, None)])
        row, replay = answers[0]
        return self._trade_response(locked[portfolio_id].loaded, row, replay=replay)

    def process_trades(self, items: list[dict[str, Any]], actor: Actor) -> dict[str, Any]:
        """A list of intents decided in order, one transaction per portfolio, each its own decision.

        Portfolios are locked in sorted order (no deadlock between two batches); an invalid intent
        refuses the whole batch and nothing is written.
        """
        started = time.perf_counter()
        portfolio_ids = [check_portfolio_id(_portfolio_of(fields)) for fields in items]
        answers, locked = self._refused_as_invalid(
            self._decide_pipelined, [(fields, actor, started, self._prevalidated(pid, fields))
                                     for fields, pid in zip(items, portfolio_ids, strict=True)])
        return {"decisions": [decision_payload(row, replay=replay) for row, replay in answers],
                "portfolio_states": {pid: engine.portfolio_summary(lk.loaded.state, lk.loaded.config)
                                     for pid, lk in sorted(locked.items())}}

    @staticmethod
    def _refused_as_invalid(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except DataRejected as exc:
            raise Invalid(str(exc)) from exc

    def _decide_pipelined(self, items: list[Item], *, one_by_one: bool = False,
                          more: Callable[[Callable[[Item], bool]], list[Item]] | None = None):
        """Decide ``items`` in two round trips (app/store/pipeline.py): their answers, and the portfolios locked.

        ``one_by_one`` (intents of separate requests decided together): an intent refused (422,
        409) is that request's answer and changes nothing, the others go on; each answer carries
        the portfolio state, configuration and counters right after its decision. Otherwise (one request) a
        refused intent refuses them all. An unknown portfolio is a 404; `default`, which always exists,
        is made first if a database lacks it (one made without `rpm db upgrade`). ``more`` (group
        commit): gives the intents that queued meanwhile for the portfolios locked, decided after
        ``items`` in the same transaction (their answers follow those of ``items``).
        """
        try:
            return self._decide_once(items, one_by_one, more, created_default=False)
        except _DefaultMissing:
            self.ensure_default_portfolio()
            return self._decide_once(items, one_by_one, more, created_default=True)

    def _decide_once(self, items: list[Item], one_by_one: bool,
                     more: Callable[[Callable[[Item], bool]], list[Item]] | None, created_default: bool):
        from .store.pipeline import DecisionTransaction

        unsafe = self.unsafe_disable_portfolio_lock
        try:
            with self.db.connection() as conn:
                tx = DecisionTransaction(conn, self.db.cache_key)
                locked = tx.lock(_wanted(items), lock=not unsafe)
                missing = sorted(pid for pid, lk in locked.items() if lk is None)
                if missing:
                    if missing != [domain.DEFAULT_PORTFOLIO] or created_default:
                        raise NotFound(f"unknown portfolio {missing[0]!r}")
                    raise _DefaultMissing
                extra = more(lambda item: _portfolio_of(item[0]) in locked) if more is not None else []
                if extra:  # joined while the lock was awaited: one more round trip, and a larger transaction
                    tx.read_more(locked, _wanted(extra))
                    items = [*items, *extra]
                for pid, lk in locked.items():
                    self._configs[pid] = (lk.loaded.row.config_version, lk.loaded.config)
                with tx.writing():
                    answers = self._decide_items(tx, locked, items, one_by_one, unsafe)
                    now = self.clock()
                    for lk in locked.values():
                        tx.save(lk, now)
                    tx.commit()
                decided = sum(1 for a in answers if not isinstance(a, Exception) and not a[1])
                if decided:
                    from .observability import PER_TRANSACTION

                    PER_TRANSACTION.observe(decided)
                return answers, locked
        except DatabaseUnavailable as exc:
            raise Unavailable(str(exc)) from exc

    def _decide_items(self, tx: Any, locked: dict[str, Any], items: list[Item], one_by_one: bool,
                      unsafe: bool) -> list[Any]:
        """Decide ``items`` in order on their locked portfolios; each answer, or its refusal.

        ``one_by_one``: a failure while deciding one item — a refusal (422, 409) or anything unexpected
        — is that item's answer alone; what it had advanced (sequence numbers, chain head, counters) is
        put back and it queued no row, so the others are decided and committed as if it had not been sent.
        """
        answers: list[Any] = []
        seen: dict[tuple[str, str], Any] = {}
        for index, (fields, actor, started, checked) in enumerate(items):
            lk = locked[_portfolio_of(fields)]
            advanced = Heads.of(lk.loaded.row)
            try:
                answer = self._decide_item(tx, lk, fields, actor, started, checked, seen, unsafe)
            except (Invalid, Conflict) as exc:
                if one_by_one:
                    answers.append(exc)
                    continue
                if len(items) == 1 or not isinstance(exc, Invalid):
                    raise
                raise in_batch(index, exc) from None
            except psycopg.Error:
                # the server refused a row sent meanwhile (rows go out in batches, a decision's error may
                # surface with a later one's): the transaction is lost, for every answer in it
                raise
            except Exception:
                if not one_by_one:
                    raise
                log.exception("unexpected error deciding one intent of a group commit")
                advanced.restore(lk.loaded.row)
                answers.append(ServiceError("internal error: this intent could not be decided"))
                continue
            if one_by_one:  # what the answer reports after this decision, summarised once the lock is released
                answer += (lk.loaded.state, lk.loaded.config, lk.loaded.row.counters)
            answers.append(answer)
        return answers

    def _decide_item(self, tx: Any, lk: Any, fields: dict[str, Any], actor: Actor, started: float,
                     checked: Checked | None, seen: dict[tuple[str, str], Any], unsafe: bool) -> tuple[Any, bool]:
        """One intent of a pipelined transaction: (its decision row, whether it is a replay)."""
        if checked is not None and checked.config_version == lk.loaded.row.config_version:
            intent, request_hash = checked.intent, checked.request_hash
        else:
            intent, request_hash = self._intent(lk.loaded, fields)
        key = (intent.portfolio_id, intent.intent_id)
        stored = None if intent.intent_id is None else seen.get(key) or lk.decided.get(intent.intent_id)
        if stored is not None:
            return self._replayed(stored, request_hash, intent), True
        now = self.clock()
        outcome = engine.decide(lk.loaded.state, intent, lk.loaded.config, now, str(uuid.uuid4()))
        if unsafe:
            tx.refresh_head(lk.loaded.row)
        record = self._record(lk.loaded, intent, request_hash, outcome, now, actor, started)
        tx.insert([(m.Decision, record.decision),
                   *([(m.LedgerEntry, record.ledger)] if record.ledger is not None else []),
                   *((m.SwitchEventRow, event) for event in record.events)])
        lk.loaded.state = outcome.state
        row = SimpleNamespace(**record.decision)
        if intent.intent_id is not None:
            seen[key] = row
        return row, False

    def _prevalidated(self, portfolio_id: str, fields: dict[str, Any]) -> Checked | None:
        """The intent validated before the lock, under the last configuration this process saw of the
        portfolio: used if that is still the portfolio's version once locked (else validated again)."""
        seen = self._configs.get(portfolio_id)
        if seen is None:
            return None
        version, config = seen
        try:
            intent = TradeIntent.create(config, **{**fields, "portfolio_id": portfolio_id})
        except Exception:  # an optimisation only: the locked version's validation gives the answer
            return None
        return Checked(version, intent, request_hash(intent))

    def _group(self, portfolio_id: str) -> GroupCommit:
        group = self._groups.get(portfolio_id)
        if group is None:
            with self._groups_lock:
                group = self._groups.setdefault(portfolio_id, GroupCommit(self._decide_group))
        return group

    def _decide_group(self, items: list[Item], more: Callable[[Callable[[Item], bool]], list[Item]]) -> list[Any]:
        """Single intents of concurrent requests, decided together (see app/group_commit.py).

        Each item's answer, or the exception that is its answer.
        """
        taken = list(items)

        def more_taken(accept: Callable[[Item], bool]) -> list[Item]:
            extra = more(accept)
            taken.extend(extra)
            return extra

        try:
            answers, _locked = self._decide_pipelined(items, one_by_one=True, more=more_taken)
        except DataRejected:
            # a value the database refused: whose, it does not say. Each request again in a transaction of its
            # own, so that the refusal is the answer of the one that sent it alone
            return [self._decided_alone(item) for item in taken]
        return [a if isinstance(a, Exception) else {
            "decision": decision_payload(a[0], replay=a[1]), "portfolio_state": engine.portfolio_summary(a[2], a[3]),
            "risk_metrics": RiskMetrics.from_counters(a[4]).to_dict()} for a in answers]

    def _decided_alone(self, item: Item) -> Any:
        """One intent in a transaction of its own: its answer, or the exception that is its answer."""
        try:
            answers, locked = self._decide_pipelined([item])
        except DataRejected as exc:
            return Invalid(str(exc))
        except Exception as exc:  # (a 422, 409, 503...: this request's answer alone)
            return exc
        row, replay = answers[0]
        return self._trade_response(locked[_portfolio_of(item[0])].loaded, row, replay=replay)

    def _intent(self, loaded: Loaded, fields: dict[str, Any]) -> tuple[TradeIntent, str]:
        """The validated intent and the hash of its request (what a retry must repeat exactly)."""
        try:
            intent = TradeIntent.create(loaded.config, **{**fields, "portfolio_id": loaded.row.id})
        except IntentError as exc:
            raise Invalid("invalid trade intent", {k: [v] for k, v in exc.errors.items()}) from None
        return intent, request_hash(intent)

    @staticmethod
    def _replayed(stored: Any, request_hash: str, intent: TradeIntent) -> Any:
        if stored.request_hash != request_hash:
            raise Conflict(f"intent_id {intent.intent_id!r} was already used with a different payload",
                           decision_id=stored.id)
        return stored

    def _record(self, loaded: Loaded, intent: TradeIntent, request_hash: str, outcome: engine.Outcome,
                now: datetime, actor: Actor, started: float) -> Record:
        """The rows a decision writes, on the portfolio's chain: the decision, its ledger entry, its events.

        Advances the locked row's counters, sequence numbers and chain head.
        """
        d = outcome.decision
        row = loaded.row
        portfolio_id = row.id
        row.last_seq += 1
        metrics = RiskMetrics.from_counters(row.counters)
        metrics.record(d)
        row.counters = metrics.counters()
        chain = Chain(row)
        decision = chain.seal(m.Decision, dict(
            id=d.id,
            portfolio_id=portfolio_id,
            seq=row.last_seq,
            intent_id=intent.intent_id,
            request_hash=request_hash,
            symbol=intent.symbol,
            direction=intent.direction,
            status=d.status.value,
            reason_code=d.reason,
            message=d.message,
            approved_units=d.units,
            price=intent.current_price,
            reducing=d.reducing,
            decided_at=now,
            config_hash=d.config_hash,
            config_version=row.config_version,
            intent=intent.to_dict(),
            breakdown=document_text(d.breakdown),
            context=dict(d.context),
            state_before=document_text(
                repository.audit_state(loaded, engine.decision_inputs(loaded.state, intent, now))),
            booking=outcome.booking.to_dict() if outcome.booking else None,
            latency_ms=Decimal(f"{(time.perf_counter() - started) * 1000:.3f}"),
            key_id=actor.key_id,
            key_name=actor.name,
            key_role=actor.role,
            request_id=actor.request_id,
        ))
        ledger = None
        if outcome.booking is not None:
            b = outcome.booking
            ledger = repository.ledger_values(row, kind=b.kind, symbol=b.symbol, units=b.units * b.direction,
                                              price=b.price, realised=outcome.realised_pnl, state=outcome.state,
                                              at=now, actor=actor.name, decision_id=d.id)
        events = [chain.seal(m.SwitchEventRow, repository.event_values(portfolio_id, e, d.id))
                  for e in outcome.events]
        return Record(decision, ledger, events)

    def _trade_response(self, loaded: Loaded, row: m.Decision, replay: bool) -> dict[str, Any]:
        return {
            "decision": decision_payload(row, replay=replay),
            "portfolio_state": engine.portfolio_summary(loaded.state, loaded.config),
            "risk_metrics": RiskMetrics.from_counters(loaded.row.counters).to_dict(),
        }

    def what_if(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The decision an intent would get now: computed from a plain read, nothing stored."""
        portfolio_id = _portfolio_of(fields)

        def run(session):
            loaded = self._load(session, portfolio_id, lock=False)
            try:
                intent = TradeIntent.create(loaded.config, **{**fields, "portfolio_id": portfolio_id})
            except IntentError as exc:
                raise Invalid("invalid trade intent", {k: [v] for k, v in exc.errors.items()}) from None
            d = engine.decide(loaded.state, intent, loaded.config, self.clock(), "what-if").decision
            return {"decision": {**d.to_dict(), "what_if": True}}

        return self._read(run)

    @staticmethod
    def _equity_point(session, portfolio_id: str, outcome: engine.Outcome, now: datetime) -> None:
        from .risk.kill_switches import drawdown

        session.add(m.EquityPoint(portfolio_id=portfolio_id, at=now, equity=outcome.equity,
                                  drawdown=Decimal(repr(drawdown(outcome.state, outcome.equity)))))

    def equity_curve(self, portfolio_id: str, since: datetime | None, limit: int = 500) -> dict[str, Any]:
        """Equity and drawdown over time (after each mark, fill and close), at most ``limit`` points."""
        def run(session):
            self._load(session, portfolio_id, lock=False)
            query = select(m.EquityPoint.at, m.EquityPoint.equity, m.EquityPoint.drawdown).where(
                m.EquityPoint.portfolio_id == portfolio_id)
            if since is not None:
                query = query.where(m.EquityPoint.at >= since)
            rows = session.execute(query.order_by(m.EquityPoint.at)).all()
            step = max(1, -(-len(rows) // limit))
            picked = rows[::step] + ([rows[-1]] if rows and (len(rows) - 1) % step else [])
            return {"portfolio_id": portfolio_id, "points": [
                {"at": at.isoformat(), "equity": float(eq), "drawdown": float(dd)} for at, eq, dd in picked]}
        return self._read(run)

    def apply_marks(self, portfolio_id: str, prices: dict[str, Any], actor: Actor) -> dict[str, Any]:
        def run(session):
            loaded = self._load(session, portfolio_id)
            problems = {s: symbol_error(s, loaded.config) for s in prices}
            errors = {s: [problem] for s, problem in problems.items() if problem}
            if errors:
                raise Invalid("invalid symbols", {"prices": errors})
            now = self.clock()
            try:
                outcome = engine.mark(loaded.state, prices, loaded.config, now)
            except OutOfRange as exc:
                raise Invalid("marks out of range", {"prices": [f"at these marks, {exc}"]}) from None
            repository.save(session, loaded, outcome.state, now)
            self._equity_point(session, portfolio_id, outcome, now)
            repository.add_events(session, Chain(loaded.row), portfolio_id, outcome.events)
            return {
                "portfolio_state": engine.portfolio_summary(outcome.state, loaded.config),
                "events": [e.to_dict() for e in outcome.events],
                "tripped": [e.switch for e in outcome.events if e.action == "TRIPPED"],
            }

        return self._write(run)

    def record_fill(self, portfolio_id: str, decision_id: str, units: Any, price: Any, actor: Actor) -> dict[str, Any]:
        def run(session):
            loaded = self._load(session, portfolio_id)
            decision = session.get(m.Decision, decision_id)
            if decision is None or decision.portfolio_id != portfolio_id:
                raise NotFound(f"unknown decision {decision_id!r}")
            if decision.status != "APPROVED" or decision.booking is None:
                raise Conflict("only an approved decision can be filled", decision_id=decision_id)
            if session.execute(select(m.Fill.id).where(m.Fill.decision_id == decision_id)).first():
                raise Conflict("this decision was already filled: a fill is final", decision_id=decision_id)
            now = self.clock()
            try:
                outcome = engine.fill(
                    loaded.state,
                    Booking.from_dict(decision.booking),
                    decision.decided_at,
                    units,
                    price,
                    loaded.config,
                    now,
                )
            except FillError as exc:
                raise Conflict(str(exc), decision_id=decision_id) from None
            except OutOfRange as exc:
                raise Invalid("fill out of range", {"fill_price": [f"at this fill, {exc}"]}) from None
            session.add(
                m.Fill(
                    portfolio_id=portfolio_id,
                    decision_id=decision_id,
                    filled_units=Decimal(repr(units)),
                    fill_price=Decimal(repr(price)),
                    realised_delta=outcome.realised_pnl,
                    at=now,
                )
            )
            repository.add_ledger(
                session,
                loaded.row,
                kind="fill",
                symbol=decision.symbol,
                units=Decimal(repr(units)),
                price=Decimal(repr(price)),
                realised=outcome.realised_pnl,
                state=outcome.state,
                at=now,
                actor=actor.name,
                decision_id=decision_id,
            )
            repository.save(session, loaded, outcome.state, now)
            self._equity_point(session, portfolio_id, outcome, now)
            repository.add_events(session, Chain(loaded.row), portfolio_id, outcome.events, decision_id)
            return {
                "decision_id": decision_id,
                "filled_units": float(units),
                "fill_price": float(price),
                "released_units": float(Decimal(decision.booking["units"]) - Decimal(repr(units))),
                "realised_pnl_change": float(outcome.realised_pnl),
                "portfolio_state": engine.portfolio_summary(outcome.state, loaded.config),
                "events": [e.to_dict() for e in outcome.events],
            }

        return self._write(run)

    def close_position(self, portfolio_id: str, symbol: str, price: Any, actor: Actor) -> dict[str, Any]:
        def run(session):
            loaded = self._load(session, portfolio_id)
            if symbol not in loaded.state.positions:
                raise NotFound(f"no open position in {symbol!r}")
            now = self.clock()
            try:
                outcome = engine.close(loaded.state, symbol, price, loaded.config, now)
            except OutOfRange as exc:
                raise Invalid("close out of range", {"price": [f"at this price, {exc}"]}) from None
            closed = loaded.state.positions[symbol]
            repository.add_ledger(
                session,
                loaded.row,
                kind="close",
                symbol=symbol,
                units=-closed.units,
                price=Decimal(repr(price)),
                realised=outcome.realised_pnl,
                state=outcome.state,
                at=now,
                actor=actor.name,
            )
            repository.save(session, loaded, outcome.state, now)
            self._equity_point(session, portfolio_id, outcome, now)
            repository.add_events(session, Chain(loaded.row), portfolio_id, outcome.events)
            return {
                "closed": outcome.extra["closed"],
                "price": float(price),
                "realised_pnl": float(outcome.realised_pnl),
                "portfolio_state": engine.portfolio_summary(outcome.state, loaded.config),
                "events": [e.to_dict() for e in outcome.events],
            }

        return self._write(run)

    # -- operator --------------------------------------------------------------------
    def halt(self, portfolio_id: str, reason: str, actor: Actor) -> dict[str, Any]:
        def run(session):
            loaded = self._load(session, portfolio_id)
            now = self.clock()
            try:
                outcome = engine.halt(loaded.state, reason, loaded.config, now)
            except ResumeError as exc:
                raise Invalid(str(exc), {"reason": [str(exc)]}) from None
            before = _trading(loaded.state)
            repository.save(session, loaded, outcome.state, now)
            repository.add_events(session, Chain(loaded.row), portfolio_id, outcome.events)
            repository.add_admin_action(
                session,
                Chain(loaded.row),
                actor,
                portfolio_id=portfolio_id,
                action="halt",
                at=now,
                reason=reason,
                before=before,
                after=_trading(outcome.state),
            )
            return {
                "portfolio_id": portfolio_id,
                **_trading(outcome.state),
                "events": [e.to_dict() for e in outcome.events],
            }

        return self._write(run)

    def resume(self, portfolio_id: str, actor: Actor, force: bool = False, reason: str | None = None) -> dict[str, Any]:
        def run(session):
            loaded = self._load(session, portfolio_id)
            now = self.clock()
            try:
                outcome = engine.resume(loaded.state, loaded.config, now, force=force, reason=reason)
            except CooldownActive as exc:
                raise Conflict(
                    "resume refused: an automatic kill switch is in its cooldown; send force with a reason",
                    {"cooldown": exc.switches},
                ) from None
            except ResumeError as exc:
                raise Invalid(str(exc), {"reason": [str(exc)]}) from None
            before = _trading(loaded.state)
            repository.save(session, loaded, outcome.state, now)
            repository.add_events(session, Chain(loaded.row), portfolio_id, outcome.events)
            rebase = next((e.detail for e in outcome.events if e.action == "REBASED"), {})
            repository.add_admin_action(
                session,
                Chain(loaded.row),
                actor,
                portfolio_id=portfolio_id,
                action="resume",
                at=now,
                reason=reason,
                before={**before, "references": rebase.get("before")},
                after={
                    **_trading(outcome.state),
                    "references": rebase.get("after"),
                    "forced": bool(rebase.get("forced")),
                },
            )
            return {
                "portfolio_id": portfolio_id,
                **_trading(outcome.state),
                "events": [e.to_dict() for e in outcome.events],
            }

        return self._write(run)

    # -- portfolios --------------------------------------------------------------------
    def create_portfolio(
        self, portfolio_id: str, capital: float | None, preset: str | None, config: dict[str, Any] | None, actor: Actor
    ) -> dict[str, Any]:
        from .presets import load_preset

        check_portfolio_id(portfolio_id)
        if portfolio_id == SYSTEM_CHAIN:
            raise Invalid("reserved portfolio id", {"portfolio_id": [f"{SYSTEM_CHAIN} names the key-administration chain"]})
        try:
            if config is not None:
                cfg = RPMConfig.from_dict(config)
            else:
                cfg = load_preset(preset or "balanced")
            if capital is not None:
                cfg = cfg.replace(total_capital=capital)
        except ConfigError as exc:
            raise Invalid("invalid configuration", {"config": {exc.field: [exc.message]}}) from None

        def run(session):
            if session.get(m.Portfolio, portfolio_id) is not None:
                raise Conflict(f"portfolio {portfolio_id!r} already exists")
            now = self.clock()
            try:
                with session.begin_nested():
                    row = repository.create_portfolio(session, portfolio_id, cfg, now, created_by=actor.name)
            except IntegrityError:
                raise Conflict(f"portfolio {portfolio_id!r} already exists") from None
            repository.add_admin_action(
                session,
                Chain(row),
                actor,
                portfolio_id=portfolio_id,
                action="portfolio_create",
                at=now,
                reason=None,
                before=None,
                after={"capital": str(row.starting_capital), "preset": preset, "config_hash": cfg.config_hash},
            )
            return _portfolio_row(row, cfg)

        return self._write(run)

    def list_portfolios(self, allowed: tuple[str, ...] | None) -> list[dict[str, Any]]:
        def run(session):
            self._load(session, domain.DEFAULT_PORTFOLIO, lock=False)  # it always exists
            query = select(m.Portfolio).order_by(m.Portfolio.id)
            if allowed is not None:
                query = query.where(m.Portfolio.id.in_(allowed))
            return [
                _portfolio_row(row, repository.config_for(session, row.id, row.config_version))
                for row in session.scalars(query)
            ]

        return self._read(run)

    # -- reading ---------------------------------------------------------------------
    def _ticked(self, session, portfolio_id: str) -> tuple[Loaded, engine.Outcome]:
        """The state as of now (calendar rolled, expired cooldowns cleared), without writing."""
        loaded = self._load(session, portfolio_id, lock=False)
        return loaded, engine.tick(loaded.state, loaded.config, self.clock())

    def portfolio(self, portfolio_id: str) -> dict[str, Any]:
        def run(session):
            loaded, outcome = self._ticked(session, portfolio_id)
            return engine.portfolio_summary(outcome.state, loaded.config)

        return self._read(run)

    def health(self, portfolio_id: str) -> dict[str, Any]:
        def run(session):
            started = time.perf_counter()
            loaded, outcome = self._ticked(session, portfolio_id)
            out = engine.health(outcome.state, loaded.config, self.clock())
            out["risk_metrics"] = self._metrics(session, loaded).to_dict()
            out["database"] = {
                "status": "ok",
                "dialect": self.db.engine.dialect.name,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            }
            out["config_version"] = loaded.row.config_version
            out["config_hash"] = loaded.config.config_hash
            return out

        return self._read(run)

    def _metrics(self, session, loaded: Loaded) -> RiskMetrics:
        latencies = session.scalars(
            select(m.Decision.latency_ms)
            .where(m.Decision.portfolio_id == loaded.row.id)
            .order_by(m.Decision.seq.desc())
            .limit(10_000)
        ).all()
        return RiskMetrics.from_counters(loaded.row.counters, [float(v) for v in latencies if v is not None])

    def metrics(self, portfolio_id: str) -> dict[str, Any]:
        def run(session):
            loaded = self._load(session, portfolio_id, lock=False)
            return {"portfolio_id": portfolio_id, **self._metrics(session, loaded).to_dict()}

        return self._read(run)

    def get_config(self, portfolio_id: str) -> dict[str, Any]:
        def run(session):
            loaded = self._load(session, portfolio_id, lock=False)
            version = session.execute(
                select(m.ConfigVersion).where(
                    m.ConfigVersion.portfolio_id == portfolio_id, m.ConfigVersion.version == loaded.row.config_version
                )
            ).scalar_one()
            return _config_payload(version)

        return self._read(run)

    def put_config(self, portfolio_id: str, body: dict[str, Any], reason: str | None, actor: Actor) -> dict[str, Any]:
        """Replace the configuration. ``total_capital`` is the starting capital the portfolio was created with:
        absent, it is kept; given otherwise, refused (a configuration does not move capital)."""
        def parsed(current: RPMConfig) -> RPMConfig:
            given = body.get("total_capital", current.total_capital)
            if given != current.total_capital:
                raise Invalid("invalid configuration", {"config": {"total_capital": [
                    f"is the starting capital the portfolio was created with ({current.total_capital:,.2f}); "
                    "a configuration cannot change it"]}})
            try:
                return RPMConfig.from_dict({**body, "total_capital": current.total_capital})
            except ConfigError as exc:
                raise Invalid("invalid configuration", {"config": {exc.field: [exc.message]}}) from None
            except TypeError as exc:
                raise Invalid("invalid configuration", {"config": [str(exc)]}) from None

        def run(session):
            loaded = self._load(session, portfolio_id)
            config = parsed(loaded.config)
            now = self.clock()
            row = loaded.row
            before = {"version": row.config_version, "config_hash": loaded.config.config_hash}
            row.config_version += 1
            version = m.ConfigVersion(
                portfolio_id=portfolio_id,
                version=row.config_version,
                body=config.to_dict(),
                config_hash=config.config_hash,
                created_at=now,
                created_by=actor.name,
                reason=reason,
            )
            session.add(version)
            row.updated_at = now
            old, new = loaded.config.to_dict(), config.to_dict()
            changed = {k: {"before": old[k], "after": new[k]} for k in new if old.get(k) != new[k]}
            repository.add_admin_action(
                session,
                Chain(loaded.row),
                actor,
                portfolio_id=portfolio_id,
                action="config_change",
                at=now,
                reason=reason,
                before=before,
                after={"version": row.config_version, "config_hash": config.config_hash, "changed": changed},
            )
            session.flush()
            return _config_payload(version)

        return self._write(run)


def _portfolio_row(row: m.Portfolio, config: RPMConfig) -> dict[str, Any]:
    return {
        "portfolio_id": row.id,
        "starting_capital": float(row.starting_capital),
        "account_currency": row.account_currency,
        "trading_state": row.trading_state,
        "config_version": row.config_version,
        "config_hash": config.config_hash,
        "created_at": row.created_at.isoformat(),
    }


def _trading(state) -> dict[str, Any]:
    return {
        "trading_state": engine.trading_state(state),
        "tripped_switches": sorted(state.switches),
        "halted_symbols": sorted(state.symbol_halts),
    }


def _config_payload(version: m.ConfigVersion) -> dict[str, Any]:
    return {
        "portfolio_id": version.portfolio_id,
        "version": version.version,
        "config_hash": version.config_hash,
        "config": version.body,
        "created_at": version.created_at.isoformat(),
        "created_by": version.created_by,
        "reason": version.reason,
    }


def decision_payload(row: m.Decision, replay: bool = False) -> dict[str, Any]:
    """The one JSON shape of a stored decision (SPEC §5)."""
    intent = row.intent
    approved = row.status == "APPROVED"
    breakdown = document(row.breakdown)
    sizing = (breakdown or {}).get("sizing") or {}
    return {
        "id": row.id,
        "portfolio_id": row.portfolio_id,
        "seq": row.seq,
        "intent_id": row.intent_id,
        "status": row.status,
        "reason": row.reason_code,
        "message": row.message,
        "decided_at": row.decided_at.isoformat(),
        "approved_trade": {
            "symbol": row.symbol,
            "direction": row.direction,
            "position_units": float(row.approved_units),
            "confidence_score": intent["confidence_score"],
            "regime": intent["regime"],
            "atr": intent["atr"],
            "risk_per_trade": 0.0 if row.reducing else sizing.get("risk_capital", 0.0),
            "current_price": intent["current_price"],
            "reducing": row.reducing,
        }
        if approved
        else None,
        "rejected_trade": None
        if approved
        else {
            "rejection_reason": row.message,
            "reason_code": row.reason_code,
            "context": row.context,
        },
        "breakdown": breakdown,
        "config_hash": row.config_hash,
        "config_version": row.config_version,
        "intent": intent,
        "replay": replay,
    }
