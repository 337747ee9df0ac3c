"""Marshmallow schemas: what the API accepts (strictly) and what it documents it returns."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from app.risk import domain
from app.risk.config import REGIMES


class StrictFloat(fields.Float):
    """A JSON number only: no strings, no booleans, no NaN or infinity."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("allow_nan", False)
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValidationError("Not a valid number.")
        return super()._deserialize(value, attr, data, **kwargs)


class StrictInteger(fields.Integer):
    def __init__(self, **kwargs: Any):
        kwargs.setdefault("strict", True)
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool):
            raise ValidationError("Not a valid integer.")
        return super()._deserialize(value, attr, data, **kwargs)


class Moment(fields.AwareDateTime):
    """An ISO 8601 time with its offset, as the UTC time it names (stored and compared in UTC): one the
    calendar cannot shift to UTC (year 1 at +01:00, year 9999 at -05:00) is refused."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:
            return moment.astimezone(UTC)
        except OverflowError:
            raise ValidationError("a time that cannot be expressed in UTC") from None


class StrictBoolean(fields.Boolean):
    """JSON true or false only (marshmallow's Boolean also takes "yes", 1, "on"...)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if type(value) is not bool:
            raise ValidationError("Not a valid boolean.")
        return value


class Whole(validate.Regexp):
    """An identifier of the domain (app/risk/domain.py), matched whole. ``regex`` is the anchored form the
    OpenAPI document shows (ECMA-262: ``$`` is the end); the check is the domain's own ``fullmatch``."""

    def __init__(self, identifier: domain.Identifier):
        super().__init__(identifier.anchored, error=f"must be {identifier.description}")
        self.identifier = identifier

    def __call__(self, value: Any) -> Any:
        if not self.identifier.matches(value):
            raise ValidationError(self._format_error(value))
        return value


def within(bounds: domain.Bounds, **kwargs: Any) -> StrictFloat:
    """A number of the domain's ``bounds``."""
    metadata = {**({"exclusiveMinimum": True} if bounds.low_open else {}), **kwargs.pop("metadata", {})}
    return StrictFloat(validate=validate.Range(min=bounds.low, max=bounds.high, min_inclusive=not bounds.low_open,
                                               error=f"must be {bounds.description}"), metadata=metadata, **kwargs)


def identifier(of: domain.Identifier, **kwargs: Any) -> fields.String:
    return fields.String(validate=Whole(of), **kwargs)


MAX_BATCH = 1000  # intents per POST /process_trades


def portfolio_field(**kwargs: Any) -> fields.String:
    return identifier(domain.PORTFOLIO_ID, metadata={"description": "portfolio; absent means `default`",
                                                     "example": "default"}, **kwargs)


class PortfolioQuerySchema(Schema):
    portfolio_id = portfolio_field()


class MetricsQuerySchema(Schema):
    portfolio_id = portfolio_field()
    format = fields.String(validate=validate.OneOf(["json", "prometheus"]),
                           metadata={"description": "prometheus: the text exposition format"})


class TradeIntentSchema(Schema):
    """A trade intent: the one definition of a valid one on the API (the fast path loads it too)."""

    symbol = identifier(domain.SYMBOL, required=True, metadata={"example": "EURUSD"})
    direction = StrictInteger(required=True, validate=validate.OneOf([1, -1]), metadata={"example": 1})
    confidence_score = within(domain.UNIT_INTERVAL, required=True, metadata={"example": 0.75})
    regime = fields.String(required=True, validate=validate.OneOf(REGIMES), metadata={"example": "TRENDING"})
    atr = within(domain.ATR, required=True, metadata={"example": 0.001})
    vol_percentile = within(domain.UNIT_INTERVAL, required=True, metadata={"example": 0.5})
    current_price = within(domain.PRICE, required=True, metadata={"example": 1.1})
    intent_id = identifier(domain.INTENT_ID, metadata={
        "description": "the client's id: a retry with it returns the stored decision", "example": "sig-20261203-0001"})
    units = within(domain.QUANTITY, metadata={
        "description": "the quantity asked for: at most this much is approved; on a reduction, at most this much of "
                       "the position is closed (a position never flips in one intent)"})
    time_in_force_seconds = within(domain.TIME_IN_FORCE, metadata={
        "description": "unfilled after this many seconds, the approval is released (at most the configuration's "
                       "approval_ttl_seconds)"})
    reduce_only = StrictBoolean(metadata={"description": "only a reduction of an opposite position may be approved "
                                                         "(else NOTHING_TO_REDUCE)"})
    portfolio_id = portfolio_field()


class MarksSchema(Schema):
    prices = fields.Dict(
        keys=identifier(domain.SYMBOL),
        values=within(domain.PRICE),
        required=True,
        validate=validate.Length(min=1, max=1000),
        metadata={"example": {"EURUSD": 1.1012}},
    )
    portfolio_id = portfolio_field()


class FillSchema(Schema):
    decision_id = identifier(domain.DECISION_ID, required=True)
    filled_units = within(domain.UNITS, required=True)
    fill_price = within(domain.PRICE, required=True)
    portfolio_id = portfolio_field()


class CloseSchema(Schema):
    price = within(domain.PRICE, required=True)
    units = within(domain.QUANTITY, metadata={"description": "close only this much of the position (rounded down to "
                                                             "the lot); absent: all of it"})
    portfolio_id = portfolio_field()


class CapitalSchema(Schema):
    amount = within(domain.SIGNED_AMOUNT, required=True, metadata={
        "description": "a deposit (> 0) or a withdrawal (< 0), in the account currency", "example": 50000})
    reason = fields.String(required=True, validate=validate.Length(1, 1000))
    portfolio_id = portfolio_field()


class CorrectSchema(Schema):
    units = within(domain.SIGNED_AMOUNT, required=True, metadata={
        "description": "the position as the broker holds it: signed units (> 0 long, < 0 short, 0: none)"})
    avg_price = within(domain.PRICE, metadata={"description": "its average entry price (required unless units is 0)"})
    reason = fields.String(required=True, validate=validate.Length(1, 1000))
    portfolio_id = portfolio_field()


class HaltSchema(Schema):
    reason = fields.String(required=True, validate=validate.Length(1, 1000))
    portfolio_id = portfolio_field()

    @validates_schema
    def reason_not_blank(self, data: dict, **_: Any) -> None:
        if not data.get("reason", "").strip():
            raise ValidationError("a reason is required", "reason")


class ResumeSchema(Schema):
    force = StrictBoolean(load_default=False)
    reason = fields.String(validate=validate.Length(1, 1000))
    portfolio_id = portfolio_field()

    @validates_schema
    def force_needs_reason(self, data: dict, **_: Any) -> None:
        if data.get("force") and not (data.get("reason") or "").strip():
            raise ValidationError("a forced resume needs a reason", "reason")


class ConfigPutSchema(Schema):
    config = fields.Dict(required=True, metadata={"description": "every parameter; absent ones take the defaults"})
    reason = fields.String(validate=validate.Length(1, 1000))
    portfolio_id = portfolio_field()


class InstrumentsPutSchema(Schema):
    instruments = fields.Dict(required=True, metadata={
        "description": "symbol -> {asset_class, currency, multiplier, lot_size, min_quantity, tick_size, max_units, "
                       "max_notional_order, max_notional_position, price_band}: the whole table (a symbol absent is "
                       "no longer listed)"})
    reason = fields.String(validate=validate.Length(1, 1000))
    portfolio_id = portfolio_field()


# -- responses (documentation; the payloads are built by the services) ------------------

class DecisionSchema(Schema):
    id = fields.String()
    portfolio_id = fields.String()
    seq = fields.Integer()
    intent_id = fields.String(allow_none=True)
    status = fields.String(metadata={"enum": ["APPROVED", "REJECTED"]})
    reason = fields.String(allow_none=True)
    message = fields.String()
    decided_at = fields.String()
    approved_trade = fields.Dict(allow_none=True)
    rejected_trade = fields.Dict(allow_none=True)
    breakdown = fields.Dict()
    config_hash = fields.String()
    config_version = fields.Integer()
    intent = fields.Dict()
    replay = fields.Boolean()


class ProcessTradeResponseSchema(Schema):
    decision = fields.Nested(DecisionSchema)
    portfolio_state = fields.Dict()
    risk_metrics = fields.Dict()


class WhatIfResponseSchema(Schema):
    decision = fields.Dict()


class AnyObjectSchema(Schema):
    """A JSON object (see the endpoint's description for its fields)."""

    class Meta:
        unknown = "include"
