"""The JSON shapes the use cases answer with: built from rows and states, never from requests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.risk import PortfolioState, RPMConfig, engine
from app.risk.metrics import RiskMetrics
from app.store.audit import document


def decision_payload(row: Any, replay: bool = False) -> dict[str, Any]:
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
            # unfilled then, it is released (None: it stands until filled)
            "expires_at": ((breakdown or {}).get("final") or {}).get("expires_at"),
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


def trade_answer(row: Any, replay: bool, state: PortfolioState, config: RPMConfig,
                 counters: dict[str, Any]) -> dict[str, Any]:
    """The answer to POST /process_trade: the decision, and the portfolio and metrics right after it."""
    return {"decision": decision_payload(row, replay=replay), "portfolio_state": engine.portfolio_summary(state, config),
            "risk_metrics": RiskMetrics.from_counters(counters).to_dict()}


def portfolio_payload(row: Any, config: RPMConfig) -> dict[str, Any]:
    return {
        "portfolio_id": row.id,
        "starting_capital": float(row.starting_capital),
        "account_currency": row.account_currency,
        "trading_state": row.trading_state,
        "config_version": row.config_version,
        "config_hash": config.config_hash,
        "created_at": row.created_at.isoformat(),
    }


def trading_payload(state: PortfolioState) -> dict[str, Any]:
    return {
        "trading_state": engine.trading_state(state),
        "tripped_switches": sorted(state.switches),
        "halted_symbols": sorted(state.symbol_halts),
    }


def config_payload(version: Mapping[str, Any]) -> dict[str, Any]:
    """A configuration version (its row's values)."""
    return {
        "portfolio_id": version["portfolio_id"],
        "version": version["version"],
        "config_hash": version["config_hash"],
        "config": version["body"],
        "created_at": version["created_at"].isoformat(),
        "created_by": version["created_by"],
        "reason": version["reason"],
    }
