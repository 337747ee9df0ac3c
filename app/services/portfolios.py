"""Portfolios: made (with their first configuration, on their own audit chain) and listed."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from app.errors import Conflict, Invalid
from app.presets import load_preset, with_shared_instruments
from app.risk import ConfigError, RPMConfig
from app.store.audit import SYSTEM_CHAIN

from .payloads import portfolio_payload
from .unit_of_work import Actor, UnitOfWork, check_portfolio_id


def new_config(capital: float | None, preset: str | None, config: dict[str, Any] | None) -> RPMConfig:
    """A new portfolio's configuration: given, or a preset's (balanced by default); ``capital`` its capital."""
    try:
        cfg = (RPMConfig.from_dict(with_shared_instruments(config)) if config is not None
               else load_preset(preset or "balanced"))
        return cfg if capital is None else cfg.replace(total_capital=capital)
    except ConfigError as exc:
        raise Invalid("invalid configuration", {"config": {exc.field: [exc.message]}}) from None


def create_portfolio(uow: UnitOfWork, portfolio_id: str, capital: float | None, preset: str | None,
                     config: dict[str, Any] | None, actor: Actor) -> dict[str, Any]:
    check_portfolio_id(portfolio_id)
    if portfolio_id == SYSTEM_CHAIN:
        raise Invalid("reserved portfolio id", {"portfolio_id": [f"{SYSTEM_CHAIN} names the key-administration chain"]})
    cfg = new_config(capital, preset, config)
    with uow.creating(portfolio_id, cfg, actor.name) as p:
        if p is None:
            raise Conflict(f"portfolio {portfolio_id!r} already exists")
        now = p.row.created_at
        p.admin_action(actor, "portfolio_create", now, None, after={
            "capital": str(Decimal(repr(cfg.total_capital))), "preset": preset, "config_hash": cfg.config_hash})
        p.commit(p.state, now)
        return portfolio_payload(p.row, cfg)


def list_portfolios(uow: UnitOfWork, allowed: tuple[str, ...] | None) -> list[dict[str, Any]]:
    """The portfolios (those of ``allowed`` only, unless None), by id."""
    return [portfolio_payload(row, config) for row, config in uow.listed(allowed)]
