"""The risk officer's actions: halt, resume, a new configuration, capital moved, a position corrected. Each
is one portfolio transaction whose admin action (who, when, why, before and after) is sealed on the portfolio's
audit chain with it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from app.errors import Conflict, Invalid
from app.risk import CapitalError, ConfigError, CooldownActive, OutOfRange, ResumeError, RPMConfig, engine
from app.risk.instruments import instrument, quote_to_account_rate, rate_needed
from app.risk.model import symbol_error
from app.store import models as m
from app.store.audit import column_unit, to_scale

from .payloads import config_payload, trading_payload
from .unit_of_work import Actor, Portfolio, UnitOfWork


def halt(uow: UnitOfWork, portfolio_id: str, reason: str, actor: Actor) -> dict[str, Any]:
    """Stop new risk on the portfolio until a resume (reductions still pass)."""
    with uow.portfolio(portfolio_id) as p:
        now = uow.clock()
        try:
            outcome = engine.halt(p.state, reason, p.config, now)
        except ResumeError as exc:
            raise Invalid(str(exc), {"reason": [str(exc)]}) from None
        p.events(outcome.events)
        p.admin_action(actor, "halt", now, reason, before=trading_payload(p.state),
                       after=trading_payload(outcome.state))
        p.commit(outcome.state, now)
        return {"portfolio_id": portfolio_id, **trading_payload(outcome.state),
                "events": [e.to_dict() for e in outcome.events]}


def resume(uow: UnitOfWork, portfolio_id: str, actor: Actor, force: bool = False,
           reason: str | None = None) -> dict[str, Any]:
    """Clear the halt and the tripped switches; an automatic switch in its cooldown only with ``force``."""
    with uow.portfolio(portfolio_id) as p:
        now = uow.clock()
        try:
            outcome = engine.resume(p.state, p.config, now, force=force, reason=reason)
        except CooldownActive as exc:
            raise Conflict("resume refused: an automatic kill switch is in its cooldown; send force with a reason",
                           {"cooldown": exc.switches}) from None
        except ResumeError as exc:
            raise Invalid(str(exc), {"reason": [str(exc)]}) from None
        rebase = next((e.detail for e in outcome.events if e.action == "REBASED"), {})
        p.events(outcome.events)
        p.admin_action(actor, "resume", now, reason,
                       before={**trading_payload(p.state), "references": rebase.get("before")},
                       after={**trading_payload(outcome.state), "references": rebase.get("after"),
                              "forced": bool(rebase.get("forced"))})
        p.commit(outcome.state, now)
        return {"portfolio_id": portfolio_id, **trading_payload(outcome.state),
                "events": [e.to_dict() for e in outcome.events]}


def parsed_config(body: dict[str, Any], current: RPMConfig) -> RPMConfig:
    """A new configuration for a portfolio. ``total_capital`` is the starting capital the portfolio was created
    with: absent, it is kept; given otherwise, refused (a configuration does not move capital)."""
    given = body.get("total_capital", current.total_capital)
    if given != current.total_capital:
        raise Invalid("invalid configuration", {"config": {"total_capital": [
            f"is the starting capital the portfolio was created with ({current.total_capital:,.2f}); "
            "a configuration cannot change it: capital moves by POST /capital"]}})
    try:
        return RPMConfig.from_dict({**body, "total_capital": current.total_capital})
    except ConfigError as exc:
        raise Invalid("invalid configuration", {"config": {exc.field: [exc.message]}}) from None
    except TypeError as exc:
        raise Invalid("invalid configuration", {"config": [str(exc)]}) from None


def put_config(uow: UnitOfWork, portfolio_id: str, body: dict[str, Any], reason: str | None,
               actor: Actor) -> dict[str, Any]:
    """Replace the configuration: a new version, which decisions from now on name."""
    with uow.portfolio(portfolio_id) as p:
        return _new_version(uow, p, parsed_config(body, p.config), reason, actor, "config_change")


def put_instruments(uow: UnitOfWork, portfolio_id: str, instruments: dict[str, Any], reason: str | None,
                    actor: Actor) -> dict[str, Any]:
    """Replace the instrument table: a new configuration version like any other (in the hash decisions record)."""
    with uow.portfolio(portfolio_id) as p:
        config = parsed_config({**p.config.to_dict(), "instruments": instruments}, p.config)
        return _new_version(uow, p, config, reason, actor, "instruments_change")


def _new_version(uow: UnitOfWork, p: Portfolio, config: RPMConfig, reason: str | None, actor: Actor,
                 action: str) -> dict[str, Any]:
    """A new configuration version of the locked portfolio ``p``, its admin action, and the commit. Refused (409)
    when it would change how an open position is valued (its instrument dropped, or its currency or multiplier
    changed): close or correct the position first."""
    changed_under = {}
    if p.state.positions and config.account_currency != p.config.account_currency:
        changed_under["account_currency"] = (f"{p.config.account_currency} -> {config.account_currency} with "
                                             f"{len(p.state.positions)} position(s) open")
    for symbol in sorted(p.state.positions):
        old, new = instrument(symbol, p.config), instrument(symbol, config)
        gone = symbol_error(symbol, config)
        if gone or (old.currency, old.multiplier, old.base, old.legs) != (new.currency, new.multiplier, new.base,
                                                                          new.legs):
            changed_under[symbol] = gone or (f"{old.asset_class} in {old.currency} x{old.multiplier} -> "
                                             f"{new.asset_class} in {new.currency} x{new.multiplier}")
    if changed_under:
        raise Conflict("the new configuration would value open positions differently: close or correct them first",
                       {"instruments": changed_under})  # (account_currency among them when it changes)
    now = uow.clock()
    row = p.row
    before = {"version": row.config_version, "config_hash": p.config.config_hash}
    row.config_version += 1
    version = dict(portfolio_id=p.id, version=row.config_version, body=config.to_dict(),
                   config_hash=config.config_hash, created_at=now, created_by=actor.name, reason=reason)
    p.add((m.ConfigVersion, p.sealed(m.ConfigVersion, version)))
    old, new = p.config.to_dict(), config.to_dict()
    changed = {k: {"before": old.get(k), "after": new[k]} for k in new if old.get(k) != new[k]}
    p.admin_action(actor, action, now, reason, before=before,
                   after={"version": row.config_version, "config_hash": config.config_hash, "changed": changed})
    p.commit(p.state, now)
    return config_payload(version)


def move_capital(uow: UnitOfWork, portfolio_id: str, amount: Any, reason: str, actor: Actor) -> dict[str, Any]:
    """A deposit (> 0) or a withdrawal (< 0): the capital, and the references the loss switches measure from,
    move by it (not PnL); recorded as an admin action on the chain, with before and after."""
    with uow.portfolio(portfolio_id) as p:
        now = uow.clock()
        amount = to_scale(amount, _UNIT)  # as the books store it
        if amount == 0:
            raise Invalid("no amount", {"amount": ["is 0 at the books' ten decimals"]})
        try:
            outcome = engine.move_capital(p.state, amount, p.config, now)
        except CapitalError as exc:
            raise Invalid(str(exc), {"amount": [str(exc)]}) from None
        except OutOfRange as exc:
            raise Invalid("capital out of range", {"amount": [f"after it, {exc}"]}) from None
        before, after = _capital(p.state), _capital(outcome.state)
        p.admin_action(actor, "capital_change", now, reason, before=before,
                       after={**after, "amount": str(amount)})
        p.events(outcome.events)
        p.commit(outcome.state, now)
        return {"portfolio_id": portfolio_id, "amount": float(amount), "before": before, "after": after,
                "portfolio_state": engine.portfolio_summary(outcome.state, p.config),
                "events": [e.to_dict() for e in outcome.events]}


# the unit of the books' last digit (NUMERIC(28, 10))
_UNIT = column_unit(m.Portfolio.__table__.c.starting_capital)


def _capital(state: Any) -> dict[str, Any]:
    """What a capital change moves, as exact text."""
    return {name: None if getattr(state, name) is None else str(getattr(state, name))
            for name in ("starting_capital", "peak_equity", "day_start_equity", "day_peak_equity", "week_start_equity")}


def correct_position(uow: UnitOfWork, portfolio_id: str, symbol: str, units: Any, avg_price: Any, reason: str,
                     actor: Actor) -> dict[str, Any]:
    """Set a position to the broker's: a ledger entry of kind `correct` with the difference, an admin action with
    before, after and why, both on the chain; the switches re-evaluated."""
    with uow.portfolio(portfolio_id) as p:
        errors = symbol_error(symbol, p.config)
        if errors:
            raise Invalid("invalid symbol", {"symbol": [errors]})
        now = uow.clock()
        units, avg_price = to_scale(units, _UNIT), to_scale(avg_price, _UNIT)  # as the books store them
        info = instrument(symbol, p.config)
        if units != 0 and quote_to_account_rate(info, avg_price, p.state.marks, p.config.account_currency) is None:
            needed = rate_needed(info, p.config.account_currency)
            raise Invalid("no rate to value the position", {"symbol": [f"no mark for {needed}: post it first"]})
        try:
            outcome = engine.correct(p.state, symbol, units, avg_price, p.config, now)
        except OutOfRange as exc:
            raise Invalid("correction out of range", {"units": [f"after it, {exc}"]}) from None
        before, after = outcome.extra["before"], outcome.extra["after"]
        held = Decimal(before["units"]) if before else Decimal(0)
        p.ledger(kind="correct", symbol=symbol, units=units - held, price=avg_price, realised=Decimal(0),
                 state=outcome.state, at=now, actor=actor.name)
        p.admin_action(actor, "position_correct", now, reason, before={"symbol": symbol, "position": before},
                       after={"symbol": symbol, "position": after})
        p.equity_point(outcome, now)
        p.events(outcome.events)
        p.commit(outcome.state, now)
        return {"portfolio_id": portfolio_id, "symbol": symbol, "before": before, "after": after,
                "difference_units": float(units - held),
                "portfolio_state": engine.portfolio_summary(outcome.state, p.config),
                "events": [e.to_dict() for e in outcome.events]}

