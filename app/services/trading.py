"""Trading: intents decided and written in one portfolio transaction, alone, in a batch, or grouped.

A decision is: lock the portfolio and read its state (one round trip), let the engine decide, seal the
decision and what it caused on the portfolio's audit chain, write it all with the new state and commit
(one more), answer. ``Trading`` keeps what a process learns between requests: the group commit of
each portfolio (app/group_commit.py) and the last configuration seen of each, to validate an intent
before its lock is taken.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import psycopg

from app.errors import Conflict, DatabaseRefused, Invalid, ServiceError
from app.group_commit import GroupCommit
from app.risk import IntentError, RPMConfig, TradeIntent, domain, engine, firm
from app.risk.config import canonical_json
from app.risk.metrics import RiskMetrics
from app.store import models as m
from app.store.audit import Chain, document_text
from app.store.events import REQUEST_ID
from app.store.repository import audit_state, event_values, ledger_values
from app.store.transaction import Archived, Loaded, Locked, Wanted

from .payloads import decision_payload, trade_answer
from .unit_of_work import Actor, UnitOfWork, check_portfolio_id

log = logging.getLogger("rpm")


@dataclass(frozen=True)
class Checked:
    """An intent validated before the lock, and the configuration version it was validated under."""

    config_version: int
    intent: TradeIntent
    request_hash: str


@dataclass(frozen=True)
class Item:
    """An intent to decide: its fields, who sent it, when its request started, its early validation."""

    fields: dict[str, Any]
    actor: Actor
    started: float
    checked: Checked | None = None

    @property
    def portfolio_id(self) -> str:
        return portfolio_of(self.fields)


@dataclass(frozen=True)
class Decided:
    """A decision row (a new one, or the stored one a retry names), and the state right after it."""

    row: Any
    replay: bool
    state: Any
    config: RPMConfig
    counters: dict[str, Any]

    def answer(self) -> dict[str, Any]:
        return trade_answer(self.row, self.replay, self.state, self.config, self.counters)


@dataclass(frozen=True)
class Heads:
    """What a decision advances on its portfolio's row: put back when deciding it failed."""

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


def portfolio_of(fields: dict[str, Any]) -> str:
    return fields.get("portfolio_id") or domain.DEFAULT_PORTFOLIO


def request_hash(intent: TradeIntent) -> str:
    return hashlib.sha256(canonical_json(intent.to_dict()).encode()).hexdigest()


def in_batch(index: int, exc: Invalid) -> Invalid:
    """A refused intent of a batch, named by its place in the list."""
    return Invalid(f"intent {index}: {exc.message}", {str(index): exc.errors})


def validated(config: RPMConfig, fields: dict[str, Any], portfolio_id: str) -> TradeIntent:
    try:
        return TradeIntent.create(config, **{**fields, "portfolio_id": portfolio_id})
    except IntentError as exc:
        raise Invalid("invalid trade intent", {k: [v] for k, v in exc.errors.items()}) from None


def wanted(items: list[Item]) -> dict[str, Wanted]:
    """What the decisions of ``items`` need read, by portfolio: their intent ids (retries?) and symbols (ATRs)."""
    requests: dict[str, Wanted] = {}
    for item in items:
        want = requests.setdefault(item.portfolio_id, Wanted())
        if isinstance(item.fields.get("intent_id"), str):
            want.intent_ids.append(item.fields["intent_id"])
        if isinstance(item.fields.get("symbol"), str):
            want.symbols.add(item.fields["symbol"])
    return requests


class Trading:
    """The decision use cases of one process, over a unit of work."""

    def __init__(self, uow: UnitOfWork, group_commit: bool = True):
        self.uow = uow
        # concurrent single intents of one portfolio share a transaction (RPM_GROUP_COMMIT=0: off). One group per
        # portfolio: a transaction locks every portfolio it decides for, so intents of another portfolio in it
        # would wait for (and time out with) a lock that is not theirs
        self.group_commit = group_commit
        self._groups: dict[str, GroupCommit] = {}
        self._groups_lock = threading.Lock()
        # the last configuration version seen per portfolio (to validate intents before the lock)
        self._configs: dict[str, tuple[int, RPMConfig]] = {}

    # TEST ONLY (RPM_TEST_UNSAFE_DISABLE_PORTFOLIO_LOCK): read the state without the lock, as a naive
    # implementation would, so that the race tests can show the breach the lock prevents
    unsafe_disable_portfolio_lock = False

    # -- the use cases -------------------------------------------------------------------
    def process_trade(self, fields: dict[str, Any], actor: Actor) -> dict[str, Any]:
        """One intent: its decision, and the portfolio and metrics right after it."""
        started = time.perf_counter()
        portfolio_id = check_portfolio_id(portfolio_of(fields))
        item = Item(fields, actor, started, self._prevalidated(portfolio_id, fields))
        if self.group_commit and not self.unsafe_disable_portfolio_lock:
            return self._group(portfolio_id).submit(item)
        return self._decide([item])[0].answer()

    def process_trades(self, items: list[dict[str, Any]], actor: Actor) -> dict[str, Any]:
        """A list of intents decided in order, in one transaction that locks their portfolios in sorted order
        (no deadlock between two batches); an invalid intent refuses the whole batch and nothing is written."""
        started = time.perf_counter()
        batch = [Item(fields, actor, started, self._prevalidated(check_portfolio_id(portfolio_of(fields)), fields))
                 for fields in items]
        decided = self._decide(batch)
        last: dict[str, Decided] = {item.portfolio_id: d for item, d in zip(batch, decided, strict=True)}
        return {"decisions": [decision_payload(d.row, replay=d.replay) for d in decided],
                "portfolio_states": {pid: engine.portfolio_summary(d.state, d.config)
                                     for pid, d in sorted(last.items())}}

    def what_if(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The decision an intent would get now: decided on the state as committed, nothing stored."""
        portfolio_id = check_portfolio_id(portfolio_of(fields))
        want = Wanted(symbols={fields["symbol"]} if isinstance(fields.get("symbol"), str) else set())
        with self.uow.portfolios({portfolio_id: want}, lock=False, levels=True) as opened:
            p = opened.portfolios[portfolio_id]
            intent = validated(p.config, fields, portfolio_id)
            decision = engine.decide(p.state, intent, p.config, self.uow.clock(), "what-if").decision
            return {"decision": {**decision.to_dict(), "what_if": True}}

    # -- one transaction -----------------------------------------------------------------
    def _decide(self, items: list[Item], *, one_by_one: bool = False,
                more: Callable[[Callable[[Item], bool]], list[Item]] | None = None) -> list[Any]:
        """Decide ``items`` in one transaction: each one's ``Decided``.

        ``one_by_one`` (intents of separate requests decided together): an intent refused (422, 409) is
        that request's answer and changes nothing, the others go on. Otherwise (one request) a refused
        intent refuses them all. ``more`` (group commit): gives the intents that queued meanwhile for the
        portfolios locked, decided after ``items`` in the same transaction (their answers follow).
        """
        unsafe = self.unsafe_disable_portfolio_lock
        with self.uow.portfolios(wanted(items), lock=not unsafe) as opened:
            locked = {pid: p.locked for pid, p in opened.portfolios.items()}
            extra = more(lambda item: item.portfolio_id in locked) if more is not None else []
            if extra:  # joined while the lock was awaited: one more round trip, and a larger transaction
                opened.tx.read_more(locked, wanted(extra))
                items = [*items, *extra]
            for pid, lk in locked.items():
                self._configs[pid] = (lk.loaded.row.config_version, lk.loaded.config)
            with opened.writing():
                answers = self._decide_items(opened.tx, locked, items, one_by_one, unsafe)
                opened.commit(self.uow.clock())
        new = sum(1 for a in answers if isinstance(a, Decided) and not a.replay)
        if new:
            from app.observability import PER_TRANSACTION

            PER_TRANSACTION.observe(new)
        return answers

    def _decide_items(self, tx: Any, locked: dict[str, Locked], items: list[Item], one_by_one: bool,
                      unsafe: bool) -> list[Any]:
        """Decide ``items`` in order on their locked portfolios; each one's ``Decided``, or its refusal.

        ``one_by_one``: a failure while deciding one item — a refusal (422, 409) or anything unexpected
        — is that item's answer alone; what it had advanced (sequence numbers, chain head, counters) is
        put back and it queued no row, so the others are decided and committed as if it had not been sent.
        """
        answers: list[Any] = []
        seen: dict[tuple[str, str], Any] = {}
        for index, item in enumerate(items):
            lk = locked[item.portfolio_id]
            advanced = Heads.of(lk.loaded.row)
            try:
                row, replay = self._decide_item(tx, lk, item, seen, unsafe)
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
            answers.append(Decided(row, replay, lk.loaded.state, lk.loaded.config, lk.loaded.row.counters))
        return answers

    def _decide_item(self, tx: Any, lk: Locked, item: Item, seen: dict[tuple[str, str], Any],
                     unsafe: bool) -> tuple[Any, bool]:
        """One intent: (its decision row, whether it is a replay)."""
        loaded = lk.loaded
        checked = item.checked
        if checked is not None and checked.config_version == loaded.row.config_version:
            intent, hashed = checked.intent, checked.request_hash
        else:
            intent = validated(loaded.config, item.fields, loaded.row.id)
            hashed = request_hash(intent)
        key = (intent.portfolio_id, intent.intent_id)
        stored = None if intent.intent_id is None else seen.get(key) or lk.decided.get(intent.intent_id)
        if isinstance(stored, Archived):
            raise Conflict(f"intent_id {intent.intent_id!r} was decided on {stored.decided_at:%Y-%m-%d}, in a month "
                           "since archived: it is not decided again", decision_id=stored.id)
        if stored is not None:
            if stored.request_hash != hashed:
                raise Conflict(f"intent_id {intent.intent_id!r} was already used with a different payload",
                               decision_id=stored.id)
            return stored, True
        now = self.uow.clock()
        if tx.groups:  # the levels above as this transaction has them now (its other portfolios' decisions)
            tx.give_levels(lk)
        outcome = engine.decide(loaded.state, intent, loaded.config, now, str(uuid.uuid4()))
        if unsafe:
            tx.refresh_head(loaded.row)
        rows = decision_rows(loaded, intent, hashed, outcome, [e for e in outcome.events if not firm.of_level(e)],
                             now, item.actor, item.started)
        tx.add(rows)
        # (the levels' events and states only once the decision's rows are queued: a decision that failed before
        # leaves nothing of itself behind)
        tx.level_events(outcome.events, outcome.decision.id)
        loaded.state = outcome.state
        tx.take_levels(outcome.state)
        row = SimpleNamespace(**rows[0][1])
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

    # -- group commit ----------------------------------------------------------------------
    def _group(self, portfolio_id: str) -> GroupCommit:
        group = self._groups.get(portfolio_id)
        if group is None:
            with self._groups_lock:
                group = self._groups.setdefault(portfolio_id, GroupCommit(self._decide_group))
        return group

    def _decide_group(self, items: list[Item], more: Callable[[Callable[[Item], bool]], list[Item]]) -> list[Any]:
        """Single intents of concurrent requests, decided together: each item's answer, or the exception that
        is its answer."""
        taken = list(items)

        def more_taken(accept: Callable[[Item], bool]) -> list[Item]:
            extra = more(accept)
            taken.extend(extra)
            return extra

        try:
            answers = self._decide(items, one_by_one=True, more=more_taken)
        except DatabaseRefused:
            # a value the database refused: whose, it does not say. Each request again in a transaction of its
            # own, so that the refusal is the answer of the one that sent it alone
            return [self._decided_alone(item) for item in taken]
        return [a if isinstance(a, Exception) else a.answer() for a in answers]

    def _decided_alone(self, item: Item) -> Any:
        """One intent in a transaction of its own: its answer, or the exception that is its answer."""
        try:
            return self._decide([item])[0].answer()
        except Exception as exc:  # (a 422, 409, 503...: this request's answer alone)
            return exc


def decision_rows(loaded: Loaded, intent: TradeIntent, hashed: str, outcome: engine.Outcome,
                  events: list[Any], now: datetime, actor: Actor, started: float) -> list[tuple[type, dict[str, Any]]]:
    """The rows a decision writes, on the portfolio's chain: the decision, its ledger entry, its ``events`` (the
    portfolio's: a level's go to the `_system` chain).

    Advances the locked row's counters, sequence numbers and chain head.
    """
    d = outcome.decision
    row = loaded.row
    row.last_seq += 1
    metrics = RiskMetrics.from_counters(row.counters)
    metrics.record(d)
    row.counters = metrics.counters()
    chain = Chain(row)
    rows: list[tuple[type, dict[str, Any]]] = [(m.Decision, chain.seal(m.Decision, dict(
        id=d.id,
        portfolio_id=row.id,
        seq=row.last_seq,
        intent_id=intent.intent_id,
        request_hash=hashed,
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
        state_before=document_text(audit_state(loaded, engine.decision_inputs(loaded.state, intent, now))),
        booking=outcome.booking.to_dict() if outcome.booking else None,
        latency_ms=Decimal(f"{(time.perf_counter() - started) * 1000:.3f}"),
        key_id=actor.key_id,
        key_name=actor.name,
        key_role=actor.role,
        request_id=actor.request_id,
    )))]
    if outcome.booking is not None:
        b = outcome.booking
        rows.append((m.LedgerEntry, chain.seal(m.LedgerEntry, ledger_values(
            row, kind=b.kind, symbol=b.symbol, units=b.units * b.direction, price=b.price, realised=outcome.realised_pnl,
            state=outcome.state, at=now, actor=actor.name, decision_id=d.id))))
    rows += [(m.SwitchEventRow, {**chain.seal(m.SwitchEventRow, event_values(row.id, e, d.id)),
                                 REQUEST_ID: actor.request_id}) for e in events]
    return rows
