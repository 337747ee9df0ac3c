"""A unit of work in memory: the use cases of app/services run on it without a database.

It replaces only the portfolio transaction (``UnitOfWork._transaction``): what a use case reads, decides, queues
and commits goes through the real ``UnitOfWork``, ``Portfolio`` and ``Transaction``. A transaction here sees the
store as committed when it opened, and changes it only when it commits, all at once.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from app.risk import PortfolioState, RPMConfig
from app.services import UnitOfWork
from app.store import models as m
from app.store.repository import to_state
from app.store.transaction import _MUTABLE, Loaded, Locked, Wanted


@dataclass
class Stored:
    """One portfolio as committed: its row, its engine state, its configurations by version."""

    row: SimpleNamespace
    state: PortfolioState
    configs: dict[int, dict[str, Any]]


@dataclass
class Store:
    portfolios: dict[str, Stored] = field(default_factory=dict)
    rows: list[tuple[type, dict[str, Any]]] = field(default_factory=list)  # every row committed, in order
    commits: int = 0

    def of(self, model: type, portfolio_id: str | None = None) -> list[dict[str, Any]]:
        return [v for t, v in self.rows if t is model and (portfolio_id is None or v.get("portfolio_id") == portfolio_id)]


class FakeTransaction:
    def __init__(self, store: Store):
        self.store = store
        self.queued: list[tuple[type, dict[str, Any]]] = []
        self.saved: dict[str, tuple[SimpleNamespace, PortfolioState]] = {}
        self.created: list[Stored] = []

    # no groups in memory: every portfolio is directly under a firm without limits
    groups: dict[str, Any] = {}

    def level_events(self, events: list[Any], decision_id: str | None) -> list[Any]:
        return list(events)

    def take_levels(self, state: Any) -> None:
        pass

    def _stored(self, portfolio_id: str) -> Stored | None:
        return next((s for s in self.created if s.row.id == portfolio_id), None) or self.store.portfolios.get(
            portfolio_id)

    def lock(self, requests: dict[str, Wanted], *, lock: bool = True,
             levels: bool | None = None) -> dict[str, Locked | None]:
        out: dict[str, Locked | None] = {}
        for portfolio_id in sorted(requests):
            stored = self._stored(portfolio_id)
            if stored is None:
                out[portfolio_id] = None
                continue
            row = copy.deepcopy(stored.row)
            config = RPMConfig.from_dict(stored.configs[row.config_version]["body"])
            marks = {s: SimpleNamespace(symbol=s, history_hash=None) for s in stored.state.marks}
            state = stored.state.clone()  # as the database reads it: the ATR histories of the symbols wanted only
            state.atr_history = {s: h for s, h in state.atr_history.items() if s in requests[portfolio_id].symbols}
            out[portfolio_id] = Locked(Loaded(row, marks, state, config), state.clone(),
                                       self._decided(portfolio_id, requests[portfolio_id].intent_ids))
        return out

    def listed(self, allowed: tuple[str, ...] | None) -> list[tuple[SimpleNamespace, RPMConfig]]:
        found = {**self.store.portfolios, **{s.row.id: s for s in self.created}}
        return [(copy.deepcopy(s.row), RPMConfig.from_dict(s.configs[s.row.config_version]["body"]))
                for pid, s in sorted(found.items()) if allowed is None or pid in allowed]

    def forget_uncommitted(self) -> None:
        pass

    def _decided(self, portfolio_id: str, intent_ids: list[str]) -> dict[str, SimpleNamespace]:
        return {d["intent_id"]: SimpleNamespace(**d) for d in self.store.of(m.Decision, portfolio_id)
                if d["intent_id"] in intent_ids}

    def read_more(self, locked: dict[str, Locked], requests: dict[str, Wanted]) -> None:
        for portfolio_id, wanted in requests.items():
            locked[portfolio_id].decided.update(self._decided(portfolio_id, wanted.intent_ids))

    def create(self, portfolio: dict[str, Any], config: dict[str, Any]) -> bool:
        if self._stored(portfolio["id"]) is not None:
            return False
        row = SimpleNamespace(**{**{c.name: None for c in m.Portfolio.__table__.columns}, **portfolio})
        self.created.append(Stored(row, to_state(row, {}, {}, {}, {}), {1: config}))
        return True

    def add(self, rows: list[tuple[type, dict[str, Any]]]) -> None:
        self.queued += rows

    @contextmanager
    def writing(self) -> Iterator[None]:
        yield

    def save(self, locked: Locked, now: datetime) -> None:
        """As the database writes it: the portfolio row's mutable columns; the state's ATR histories merged."""
        locked.loaded.row.updated_at = now
        self.saved[locked.loaded.row.id] = (
            {c: copy.deepcopy(getattr(locked.loaded.row, c)) for c in _MUTABLE}, locked.loaded.state.clone())

    def commit(self) -> None:
        for stored in self.created:
            self.store.portfolios[stored.row.id] = stored
        for model, values in self.queued:
            if model is m.ConfigVersion:
                self.store.portfolios[values["portfolio_id"]].configs[values["version"]] = values
        for portfolio_id, (columns, state) in self.saved.items():
            stored = self.store.portfolios[portfolio_id]
            vars(stored.row).update(columns)
            state.atr_history = {**stored.state.atr_history, **state.atr_history}
            stored.state = state
        self.store.rows += self.queued
        self.store.commits += 1
        self.queued, self.saved, self.created = [], {}, []

    def stored_decision(self, portfolio_id: str, decision_id: str) -> SimpleNamespace | None:
        found = next((d for d in self.store.of(m.Decision, portfolio_id) if d["id"] == decision_id), None)
        if found is None:
            return None
        filled = any(f["decision_id"] == decision_id for f in self.store.of(m.Fill))
        return SimpleNamespace(**found, filled=filled)

    def latencies(self, portfolio_id: str) -> list[float]:
        return [float(d["latency_ms"]) for d in reversed(self.store.of(m.Decision, portfolio_id))]

    def config_version(self, portfolio_id: str, version: int) -> dict[str, Any]:
        return self._stored(portfolio_id).configs[version]

    def refresh_head(self, row: SimpleNamespace) -> None:
        pass


class FakeUnitOfWork(UnitOfWork):
    """The real unit of work, its portfolio transactions in memory (``db`` is None: no ORM session)."""

    def __init__(self, clock: Any, default_config: RPMConfig | None = None):
        super().__init__(None, clock, default_config)
        self.store = Store()
        self.fail_with: Exception | None = None  # raised by the next transaction that opens

    @contextmanager
    def _transaction(self) -> Iterator[FakeTransaction]:
        with self._errors():
            if self.fail_with is not None:
                exc, self.fail_with = self.fail_with, None
                raise exc
            yield FakeTransaction(self.store)
