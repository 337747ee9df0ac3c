"""Marshmallow schemas: what the API accepts (strictly) and what it documents it returns."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from app.risk.config import REGIMES, SYMBOL_RE
from app.risk.model import PORTFOLIO_ID_RE


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


MAX_NUMBER = 1e15  # the largest price, ATR or quantity the API takes
INTENT_ID_LENGTH = 128
MAX_BATCH = 1000  # intents per POST /process_trades


def positive(**kwargs: Any) -> StrictFloat:
    metadata = {"exclusiveMinimum": True, **kwargs.pop("metadata", {})}  # tell the document 0 is excluded
    return StrictFloat(validate=validate.Range(min=0, min_inclusive=False, max=MAX_NUMBER), metadata=metadata, **kwargs)


def unit_interval(**kwargs: Any) -> StrictFloat:
    return StrictFloat(validate=validate.Range(min=0, max=1), **kwargs)


def portfolio_field() -> fields.String:
    # braces doubled: marshmallow formats the error message
    return fields.String(validate=validate.Regexp(PORTFOLIO_ID_RE, error="must match [A-Za-z0-9_-]{{1,64}}"),
                         metadata={"description": "portfolio; absent means `default`"})


class PortfolioQuerySchema(Schema):
    portfolio_id = portfolio_field()


class MetricsQuerySchema(Schema):
    portfolio_id = portfolio_field()
    format = fields.String(validate=validate.OneOf(["json", "prometheus"]),
                           metadata={"description": "prometheus: the text exposition format"})


class TradeIntentSchema(Schema):
    symbol = fields.String(required=True, validate=validate.Regexp(SYMBOL_RE, error="not a valid symbol"),
                           metadata={"example": "EURUSD"})
    direction = StrictInteger(required=True, validate=validate.OneOf([1, -1]), metadata={"example": 1})
    confidence_score = unit_interval(required=True, metadata={"example": 0.75})
    regime = fields.String(required=True, validate=validate.OneOf(REGIMES), metadata={"example": "TRENDING"})
    atr = positive(required=True, metadata={"example": 0.001})
    vol_percentile = unit_interval(required=True, metadata={"example": 0.5})
    current_price = positive(required=True, metadata={"example": 1.1})
    intent_id = fields.String(validate=validate.Length(1, INTENT_ID_LENGTH),
                              metadata={"description": "the client's id: a retry with it returns the stored decision"})
    portfolio_id = portfolio_field()


class MarksSchema(Schema):
    prices = fields.Dict(
        keys=fields.String(validate=validate.Regexp(SYMBOL_RE, error="not a valid symbol")),
        values=positive(),
        required=True,
        validate=validate.Length(min=1, max=1000),
        metadata={"example": {"EURUSD": 1.1012}},
    )
    portfolio_id = portfolio_field()


class FillSchema(Schema):
    decision_id = fields.String(required=True, validate=validate.Length(1, 36))
    filled_units = StrictFloat(required=True, validate=validate.Range(min=0, max=MAX_NUMBER))
    fill_price = positive(required=True)
    portfolio_id = portfolio_field()


class CloseSchema(Schema):
    price = positive(required=True)
    portfolio_id = portfolio_field()


class HaltSchema(Schema):
    reason = fields.String(required=True, validate=validate.Length(1, 1000))
    portfolio_id = portfolio_field()

    @validates_schema
    def reason_not_blank(self, data: dict, **_: Any) -> None:
        if not data.get("reason", "").strip():
            raise ValidationError("a reason is required", "reason")


class ResumeSchema(Schema):
    force = fields.Boolean(load_default=False)
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
