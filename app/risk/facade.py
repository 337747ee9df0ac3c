"""The in-process engine of SPEC §8: the same rules as the service, over an in-memory state."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import engine
from .config import RPMConfig
from .domain import DEFAULT_PORTFOLIO
from .metrics import RiskMetrics
from .model import Booking, Decision, PortfolioState, SwitchEvent, TradeIntent


@dataclass(frozen=True, slots=True)
class RPMOutput:
    decision: Decision
    portfolio_state: dict[str, Any]
    risk_metrics: dict[str, Any]
    events: tuple[SwitchEvent, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision.to_dict(),
            "portfolio_state": self.portfolio_state,
            "risk_metrics": self.risk_metrics,
            "events": [e.to_dict() for e in self.events],
        }


def _system_clock() -> datetime:
    return datetime.now(UTC)


class RiskPortfolioManager:
    """One portfolio, in memory. Only this facade may read the system clock (by default)."""

    def __init__(
        self,
        config: RPMConfig | None = None,
        portfolio_id: str = DEFAULT_PORTFOLIO,
        clock: Callable[[], datetime] | None = None,
        state: PortfolioState | None = None,
    ):
        self.config = config or RPMConfig()
        self.clock = clock or _system_clock
        self.state = state or PortfolioState.new(self.config, portfolio_id)
        self.metrics = RiskMetrics()
        self.bookings: dict[str, tuple[Booking, datetime]] = {}
        self.events: list[SwitchEvent] = []
        self.decisions: list[Decision] = []

    # -- trading -------------------------------------------------------------
    def process_trade_intent(self, **fields: Any) -> RPMOutput:
        fields.setdefault("portfolio_id", self.state.portfolio_id)
        intent = TradeIntent.create(self.config, **fields)
        started = time.perf_counter()
        now = self.clock()
        outcome = engine.decide(self.state, intent, self.config, now, str(uuid.uuid4()))
        self._apply(outcome)
        decision = outcome.decision
        if outcome.booking is not None:
            self.bookings[decision.id] = (outcome.booking, now)
        self.decisions.append(decision)
        self.metrics.record(decision, (time.perf_counter() - started) * 1000)
        return RPMOutput(decision, self.get_portfolio_state(), self.metrics.to_dict(), tuple(outcome.events))

    def what_if(self, **fields: Any) -> Decision:
        """The decision an intent would get now; changes nothing."""
        fields.setdefault("portfolio_id", self.state.portfolio_id)
        intent = TradeIntent.create(self.config, **fields)
        return engine.decide(self.state, intent, self.config, self.clock(), "what-if").decision

    def update_marks(self, prices: Mapping[str, Any]) -> list[SwitchEvent]:
        return self._apply(engine.mark(self.state, prices, self.config, self.clock()))

    def record_fill(self, decision_id: str, filled_units: Any, fill_price: Any) -> list[SwitchEvent]:
        booking, booked_at = self.bookings[decision_id]
        events = self._apply(engine.fill(self.state, booking, booked_at, filled_units, fill_price, self.config,
                                         self.clock()))
        del self.bookings[decision_id]
        return events

    def close_position(self, symbol: str, price: Any, units: Any = None) -> float:
        """Close a position (``units`` of it, or all of it) at ``price``; the PnL realised."""
        outcome = engine.close(self.state, symbol, price, self.config, self.clock(), units)
        self._apply(outcome)
        return float(outcome.realised_pnl)

    # -- operator ------------------------------------------------------------
    def halt(self, reason: str) -> list[SwitchEvent]:
        return self._apply(engine.halt(self.state, reason, self.config, self.clock()))

    def resume(self, force: bool = False, reason: str | None = None) -> list[SwitchEvent]:
        return self._apply(engine.resume(self.state, self.config, self.clock(), force=force, reason=reason))

    # -- reading -------------------------------------------------------------
    def get_portfolio_state(self) -> dict[str, Any]:
        return engine.portfolio_summary(self.state, self.config)

    def get_metrics(self) -> dict[str, Any]:
        return self.metrics.to_dict()

    def get_health_status(self) -> dict[str, Any]:
        outcome = engine.tick(self.state, self.config, self.clock())
        self._apply(outcome)
        out = engine.health(self.state, self.config, self.clock())
        out["risk_metrics"] = self.metrics.to_dict()
        return out

    def _apply(self, outcome: engine.Outcome) -> list[SwitchEvent]:
        self.state = outcome.state
        self.state.released.clear()  # (in-process, nothing writes them)
        self.events.extend(outcome.events)
        return list(outcome.events)
