"""What the API reads of a portfolio: its state as of now, its health, its metrics, its configuration.
Read as committed, without the portfolio's lock, and nothing written."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from app.risk import engine
from app.risk.metrics import RiskMetrics

from .payloads import config_payload
from .unit_of_work import Portfolio, UnitOfWork


@contextmanager
def _ticked(uow: UnitOfWork, portfolio_id: str) -> Iterator[tuple[Portfolio, engine.Outcome]]:
    """The portfolio as committed, and its state as of now (calendar rolled, expired cooldowns cleared)."""
    with uow.portfolio(portfolio_id, lock=False) as p:
        yield p, engine.tick(p.state, p.config, uow.clock())


def portfolio(uow: UnitOfWork, portfolio_id: str) -> dict[str, Any]:
    with _ticked(uow, portfolio_id) as (p, outcome):
        return engine.portfolio_summary(outcome.state, p.config)


def _metrics(p: Portfolio) -> RiskMetrics:
    return RiskMetrics.from_counters(p.row.counters, p.latencies())


def health(uow: UnitOfWork, portfolio_id: str) -> dict[str, Any]:
    started = time.perf_counter()
    with _ticked(uow, portfolio_id) as (p, outcome):
        out = engine.health(outcome.state, p.config, uow.clock())
        out["risk_metrics"] = _metrics(p).to_dict()
        out["database"] = {"status": "ok", "dialect": uow.db.engine.dialect.name,
                           "latency_ms": round((time.perf_counter() - started) * 1000, 3)}
        out["config_version"] = p.row.config_version
        out["config_hash"] = p.config.config_hash
        return out


def metrics(uow: UnitOfWork, portfolio_id: str) -> dict[str, Any]:
    with uow.portfolio(portfolio_id, lock=False) as p:
        return {"portfolio_id": portfolio_id, **_metrics(p).to_dict()}


def get_instruments(uow: UnitOfWork, portfolio_id: str) -> dict[str, Any]:
    """The portfolio's instrument table, from the configuration in force."""
    with uow.portfolio(portfolio_id, lock=False) as p:
        version = config_payload(p.config_version())
    return {"portfolio_id": portfolio_id, "version": version["version"], "config_hash": version["config_hash"],
            "instruments": version["config"].get("instruments", {}),
            "unlisted": "a six-letter pair not listed is FX spot: lot 0.01, minimum min_position_units; any other "
                        "symbol not listed is refused"}


def get_config(uow: UnitOfWork, portfolio_id: str) -> dict[str, Any]:
    """The portfolio's configuration now: its version, hash, body, and who made it when and why."""
    with uow.portfolio(portfolio_id, lock=False) as p:
        return config_payload(p.config_version())
