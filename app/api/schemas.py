"""Marshmallow schemas: what the API accepts (strictly) and what it documents it returns."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate, validates_schema

from app.risk import domain
from app.risk.config import REGIMES
from app.risk.model import ReasonCode


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
    reason = fields.String(required=True, validate=validate.Length(1, domain.REASON_LENGTH))
    portfolio_id = portfolio_field()


class CorrectSchema(Schema):
    units = within(domain.SIGNED_AMOUNT, required=True, metadata={
        "description": "the position as the broker holds it: signed units (> 0 long, < 0 short, 0: none)"})
    avg_price = within(domain.PRICE, metadata={"description": "its average entry price (required unless units is 0)"})
    reason = fields.String(required=True, validate=validate.Length(1, domain.REASON_LENGTH))
    portfolio_id = portfolio_field()


class HaltSchema(Schema):
    reason = fields.String(required=True, validate=validate.Length(1, domain.REASON_LENGTH))
    portfolio_id = portfolio_field()

    @validates_schema
    def reason_not_blank(self, data: dict, **_: Any) -> None:
        if not data.get("reason", "").strip():
            raise ValidationError("a reason is required", "reason")


class ResumeSchema(Schema):
    force = StrictBoolean(load_default=False)
    reason = fields.String(validate=validate.Length(1, domain.REASON_LENGTH))
    portfolio_id = portfolio_field()

    @validates_schema
    def force_needs_reason(self, data: dict, **_: Any) -> None:
        if data.get("force") and not (data.get("reason") or "").strip():
            raise ValidationError("a forced resume needs a reason", "reason")


class ConfigPutSchema(Schema):
    config = fields.Dict(required=True, metadata={"description": "every parameter; absent ones take the defaults"})
    reason = fields.String(validate=validate.Length(1, domain.REASON_LENGTH))
    portfolio_id = portfolio_field()


class InstrumentsPutSchema(Schema):
    instruments = fields.Dict(required=True, metadata={
        "description": "symbol -> {asset_class, currency, multiplier, lot_size, min_quantity, tick_size, max_units, "
                       "max_notional_order, max_notional_position, price_band}: the whole table (a symbol absent is "
                       "no longer listed)"})
    reason = fields.String(validate=validate.Length(1, domain.REASON_LENGTH))
    portfolio_id = portfolio_field()


# -- responses ------------------------------------------------------------------------
# Documentation only: every view answers with the JSON its service builds (``ok(...)``, a Response that
# flask-smorest passes through untouched), never dumped through these. Fields beyond the ones listed are
# welcome (SPEC §5): each schema admits others (``additionalProperties``).

class Answer(Schema):
    class Meta:
        unknown = INCLUDE


def _number(**kwargs: Any) -> fields.Float:
    return fields.Float(required=True, **kwargs)


def _text(**kwargs: Any) -> fields.String:
    return fields.String(required=True, **kwargs)


def _maybe(field: type[fields.Field], **kwargs: Any) -> fields.Field:
    """A field always present, null when there is nothing to say."""
    return field(required=True, allow_none=True, **kwargs)


TRADING_STATES = ["ACTIVE", "HALTED"]


class ErrorSchema(Answer):
    """Every error answer (4xx, 5xx): one shape. Some add fields of their own: ``required_roles`` (403),
    ``decision_id`` (409 of a fill), ``retry_after`` (429), the readiness details (503 of /health/ready)."""

    code = fields.Integer(required=True, metadata={"description": "the HTTP status"})
    status = _text(metadata={"description": "its reason phrase"})
    message = _text()
    errors = fields.Dict(required=True, metadata={
        "description": "a message list per field (a map for a nested field: an intent of a batch, a parameter of a "
                       "configuration); `_body` for the body as a whole"})
    required_roles = fields.List(fields.String(), metadata={"description": "403: the roles the route admits"})


class DecisionIntentSchema(Answer):
    """The intent as it was accepted (its portfolio filled in)."""

    symbol = _text()
    direction = fields.Integer(required=True)
    confidence_score = _number()
    regime = _text()
    atr = _number()
    vol_percentile = _number()
    current_price = _number()
    intent_id = fields.String(allow_none=True)
    portfolio_id = fields.String()
    units = fields.Float()
    reduce_only = fields.Boolean()
    time_in_force_seconds = fields.Float()


class ApprovedTradeSchema(Answer):
    symbol = _text()
    direction = fields.Integer(required=True, metadata={"description": "1 buy, -1 sell"})
    position_units = _number(metadata={"description": "the units approved: what to send to execution (rounded "
                                                      "down to the instrument's lot)"})
    confidence_score = _number()
    regime = _text()
    atr = _number()
    risk_per_trade = _number(metadata={"description": "the capital put at risk, in the account currency (0 for a "
                                                      "reduction)"})
    current_price = _number()
    reducing = fields.Boolean(required=True, metadata={"description": "it reduces (or closes) an open position"})
    expires_at = fields.String(allow_none=True, metadata={
        "description": "unfilled by then, the approval is released (null: it stands until filled); absent from a "
                       "what-if"})


class RejectedTradeSchema(Answer):
    rejection_reason = _text()
    reason_code = _text(metadata={"enum": [r.value for r in ReasonCode]})
    context = fields.Dict(required=True, metadata={"description": "the values that decided it"})


class DecisionSchema(Answer):
    """A decision. Stored ones (every answer but /what_if) also carry portfolio_id, seq, intent_id,
    config_version and replay."""

    id = _text(metadata={"description": "the decision's id (`what-if` for one not stored)"})
    status = _text(metadata={"enum": ["APPROVED", "REJECTED"]})
    reason = _maybe(fields.String, metadata={"description": "the reason code of a rejection"})
    message = _text()
    decided_at = _text()
    approved_trade = fields.Nested(ApprovedTradeSchema, required=True, allow_none=True)
    rejected_trade = fields.Nested(RejectedTradeSchema, required=True, allow_none=True)
    breakdown = _maybe(fields.Dict, metadata={"description": "each step of the pipeline: kill switches, intent "
                                                             "checks, sizing, constraints, the final result"})
    config_hash = _text()
    intent = fields.Nested(DecisionIntentSchema, required=True)
    portfolio_id = fields.String()
    seq = fields.Integer(metadata={"description": "its place in the portfolio's decisions"})
    intent_id = fields.String(allow_none=True)
    config_version = fields.Integer()
    replay = fields.Boolean(metadata={"description": "true: the stored answer to an intent_id seen before"})
    what_if = fields.Boolean()


class PositionSchema(Answer):
    symbol = _text()
    direction = fields.Integer(required=True)
    units = _number()
    avg_price = _number()
    mark = _number()
    notional = _number(metadata={"description": "in the account currency"})
    opened_at = _text()


class OpenApprovalSchema(Answer):
    decision_id = _text()
    symbol = _text()
    kind = _text()
    direction = fields.Integer(required=True)
    units = _number()
    booked_at = _text()
    expires_at = _text()


class ExposuresSchema(Answer):
    symbol = fields.Dict(keys=fields.String(), values=fields.Float(), required=True)
    currency = fields.Dict(keys=fields.String(), values=fields.Float(), required=True)
    gross = _number()
    net = _number()
    gross_pct = _maybe(fields.Float, metadata={"description": "gross / equity (null when equity is not positive)"})
    net_pct = _maybe(fields.Float)


class PortfolioStateSchema(Answer):
    portfolio_id = _text()
    account_currency = _text()
    starting_capital = _number()
    equity = _number()
    realised_pnl = _number()
    unrealised_pnl = _number()
    peak_equity = _number()
    drawdown = _number(metadata={"description": "a fraction of the peak"})
    drawdown_pct = _number()
    daily_pnl = _number()
    weekly_pnl = _number()
    trading_day = _maybe(fields.String)
    trading_state = _text(metadata={"enum": TRADING_STATES})
    open_positions = fields.Integer(required=True)
    positions = fields.List(fields.Nested(PositionSchema), required=True)
    open_approvals = fields.List(fields.Nested(OpenApprovalSchema), required=True, metadata={
        "description": "approvals that expire, not yet filled"})
    exposures = fields.Nested(ExposuresSchema, required=True)


class SizingStatsSchema(Answer):
    avg_approved_units = _maybe(fields.Float)
    min_approved_units = _maybe(fields.Float)
    max_approved_units = _maybe(fields.Float)
    total_approved_units = _maybe(fields.Float)


class LatencySchema(Answer):
    count = fields.Integer(required=True)
    avg = _maybe(fields.Float)
    p50 = _maybe(fields.Float)
    p99 = _maybe(fields.Float)
    max = _maybe(fields.Float)


class RiskMetricsSchema(Answer):
    total_decisions = fields.Integer(required=True)
    trades_approved = fields.Integer(required=True)
    trades_rejected = fields.Integer(required=True)
    approval_rate = _number()
    rejections_by_reason = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    rejections_by_category = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    sizing = fields.Nested(SizingStatsSchema, required=True)
    latency_ms = fields.Nested(LatencySchema, required=True)


class MetricsSchema(RiskMetricsSchema):
    portfolio_id = _text()


class ProcessTradeResponseSchema(Answer):
    decision = fields.Nested(DecisionSchema, required=True)
    portfolio_state = fields.Nested(PortfolioStateSchema, required=True, metadata={"description": "right after it"})
    risk_metrics = fields.Nested(RiskMetricsSchema, required=True)


class ProcessTradesResponseSchema(Answer):
    decisions = fields.List(fields.Nested(DecisionSchema), required=True, metadata={"description": "in the "
                                                                                                   "intents' order"})
    portfolio_states = fields.Dict(keys=fields.String(), values=fields.Nested(PortfolioStateSchema), required=True,
                                   metadata={"description": "each portfolio's state after the batch"})


class WhatIfResponseSchema(Answer):
    decision = fields.Nested(DecisionSchema, required=True)


class SwitchEventSchema(Answer):
    """A kill switch tripped or cleared."""

    switch = _text()
    action = _text()
    at = _text()
    value = _maybe(fields.Raw)
    threshold = _maybe(fields.Raw)
    cooldown_until = _maybe(fields.String)
    symbol = _maybe(fields.String)
    reason = _maybe(fields.String)
    detail = fields.Dict(required=True)


class BookChangeSchema(Answer):
    """The portfolio after a change of its books, and the switches that moved."""

    portfolio_state = fields.Nested(PortfolioStateSchema, required=True)
    events = fields.List(fields.Nested(SwitchEventSchema), required=True)


class MarksResponseSchema(BookChangeSchema):
    tripped = fields.List(fields.String(), required=True, metadata={"description": "the switches the marks tripped"})


class FillResponseSchema(BookChangeSchema):
    decision_id = _text()
    filled_units = _number()
    fill_price = _number()
    released_units = _number(metadata={"description": "approved but not filled: released"})
    realised_pnl_change = _number()


class CloseResponseSchema(BookChangeSchema):
    closed = _maybe(fields.Raw, metadata={"description": "the position closed"})
    closed_units = _number()
    price = _number()
    realised_pnl = _number()


class CorrectionSchema(BookChangeSchema):
    portfolio_id = _text()
    symbol = _text()
    before = _maybe(fields.Dict, metadata={"description": "the position before (null: none)"})
    after = _maybe(fields.Dict, metadata={"description": "the position after (null: none)"})
    difference_units = _number()


class CapitalResponseSchema(BookChangeSchema):
    portfolio_id = _text()
    amount = _number()
    before = fields.Dict(required=True, metadata={"description": "the references moved (capital, peaks, day and "
                                                                 "week starts), before"})
    after = fields.Dict(required=True)


class TradingStateSchema(Answer):
    """A portfolio's trading state after a halt or a resume."""

    portfolio_id = _text()
    trading_state = _text(metadata={"enum": TRADING_STATES})
    tripped_switches = fields.List(fields.String(), required=True)
    halted_symbols = fields.List(fields.String(), required=True)
    events = fields.List(fields.Nested(SwitchEventSchema), required=True)


class ConfigVersionSchema(Answer):
    portfolio_id = _text()
    version = fields.Integer(required=True)
    config_hash = _text()
    config = fields.Dict(required=True, metadata={"description": "every parameter, the instruments included"})
    created_at = _text()
    created_by = _maybe(fields.String)
    reason = _maybe(fields.String)


class InstrumentsSchema(Answer):
    portfolio_id = _text()
    version = fields.Integer(required=True)
    config_hash = _text()
    instruments = fields.Dict(keys=fields.String(), values=fields.Dict(), required=True)
    unlisted = _text(metadata={"description": "what a symbol not listed is"})


class HealthSchema(Answer):
    health = _text()
    trading_state = _text(metadata={"enum": TRADING_STATES})
    kill_switches = fields.Dict(keys=fields.String(), values=fields.Dict(), required=True, metadata={
        "description": "each switch: its current value, threshold and state"})
    portfolio_state = fields.Nested(PortfolioStateSchema, required=True)
    risk_metrics = fields.Nested(RiskMetricsSchema, required=True)
    database = fields.Dict(required=True)
    config_version = fields.Integer(required=True)
    config_hash = _text()


class LiveSchema(Answer):
    status = _text()


class ReadySchema(Answer):
    ready = fields.Boolean(required=True)
    database = _text()
    message = _text()
    current = _maybe(fields.List, cls_or_instance=fields.String())
    head = fields.List(fields.String(), required=True)


class EquityPointSchema(Answer):
    at = _text()
    equity = _number()
    drawdown = _number()
    peak_equity = _maybe(fields.Float, metadata={"description": "the peak the drawdown is measured from"})


class EquityCurveSchema(Answer):
    portfolio_id = _text()
    points = fields.List(fields.Nested(EquityPointSchema), required=True)


class WhoAmISchema(Answer):
    name = _text()
    role = _text()
    key_id = _maybe(fields.String)
    portfolios = _maybe(fields.List, cls_or_instance=fields.String(), metadata={
        "description": "the portfolios the key may use (null: every one)"})


class PortfolioSchema(Answer):
    portfolio_id = _text()
    starting_capital = _number()
    account_currency = _text()
    trading_state = _text(metadata={"enum": TRADING_STATES})
    config_version = fields.Integer(required=True)
    config_hash = _text()
    created_at = _text()


class PortfolioListSchema(Answer):
    portfolios = fields.List(fields.Nested(PortfolioSchema), required=True)


class LevelSchema(Answer):
    """The firm or a group: the aggregate of its portfolios, in the shape of a portfolio's view."""

    level = _text(metadata={"enum": ["firm", "group"]})
    id = _text()
    currency = _text()
    starting_capital = _number()
    equity = _number()
    realised_pnl = _number()
    unrealised_pnl = _number()
    peak_equity = _number()
    drawdown = _number()
    drawdown_pct = _number()
    daily_pnl = _number()
    trading_state = _text(metadata={"enum": TRADING_STATES})
    switches = fields.Dict(required=True)
    open_positions = fields.Integer(required=True)
    limits = fields.Dict(required=True)
    limits_used = fields.Dict(required=True)
    exposures = fields.Nested(ExposuresSchema, required=True)
    positions = fields.List(fields.Dict(), required=True)
    portfolios = fields.List(fields.Dict(), required=True)
    groups = fields.List(fields.Dict(), required=True)


class GroupTreeSchema(Answer):
    id = _text()
    trading_state = _text(metadata={"enum": TRADING_STATES})
    limits = fields.Dict(required=True)
    groups = fields.List(fields.Dict(), required=True, metadata={"description": "each group, in this same shape"})
    portfolios = fields.List(fields.String(), required=True)


class MembershipSchema(Answer):
    portfolio_id = _text()
    group = _text()
    previous_group = _maybe(fields.String)


class GroupStateSchema(Answer):
    group = _text()
    trading_state = _text(metadata={"enum": TRADING_STATES})
    events = fields.List(fields.Nested(SwitchEventSchema), required=True)


class FirmMarksResponseSchema(Answer):
    firm_marks = fields.Dict(keys=fields.String(), values=fields.Float(), required=True)
    at = _text()
    events = fields.List(fields.Nested(SwitchEventSchema), required=True)


class RegisteredWebhookSchema(Answer):
    id = _text()
    url = _text()
    types = _maybe(fields.List, cls_or_instance=fields.String(), metadata={"description": "null: every type"})
    portfolios = _maybe(fields.List, cls_or_instance=fields.String(), metadata={"description": "null: every event"})
    description = _maybe(fields.String)
    created_at = _text()
    created_by = _maybe(fields.String)
    active = fields.Boolean(required=True)
    disabled_at = _maybe(fields.String)
    queued_to = _maybe(fields.Integer, metadata={"description": "the last event queued for it"})
    secret = fields.String(metadata={"description": "the signing secret: in the answer to its creation only"})
    deliveries = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata={
        "description": "how many deliveries are pending, delivered, failed (GET /webhooks/{webhook_id})"})


class WebhookListSchema(Answer):
    webhooks = fields.List(fields.Nested(RegisteredWebhookSchema), required=True)


class DeliveriesSchema(Answer):
    webhook_id = _text()
    deliveries = fields.List(fields.Dict(), required=True)
    next_after = _maybe(fields.Integer, metadata={"description": "the `after` of the next page (null: the last)"})


class RetriedSchema(Answer):
    webhook_id = _text()
    retried = fields.List(fields.Raw(), required=True, metadata={"description": "the events sent again"})


class DecisionRowSchema(Answer):
    portfolio_id = _text()
    seq = fields.Integer(required=True)
    id = _text()
    decided_at = _text()
    intent_id = _maybe(fields.String)
    symbol = _text()
    direction = fields.Integer(required=True)
    status = _text(metadata={"enum": ["APPROVED", "REJECTED"]})
    reason_code = _maybe(fields.String)
    approved_units = _number()
    config_hash = _text()
    message = _text()


class DecisionPageSchema(Answer):
    decisions = fields.List(fields.Nested(DecisionRowSchema), required=True)
    count = fields.Integer(required=True)
    next_cursor = _maybe(fields.String, metadata={"description": "the `cursor` of the next page (null: the last)"})


class DecisionRecordSchema(DecisionSchema):
    """A stored decision with everything behind it."""

    context = fields.Dict(allow_none=True)
    state_before = fields.Dict(allow_none=True, metadata={"description": "the portfolio state it was decided on"})
    booking = fields.Dict(allow_none=True)
    submitted_by = fields.Dict(allow_none=True)
    config = fields.Dict(allow_none=True, metadata={"description": "the configuration it was decided under"})
    fills = fields.List(fields.Dict())
    switch_events = fields.List(fields.Dict())
    latency_ms = fields.Float(allow_none=True)
    audit = fields.Dict(allow_none=True)


class ProofSchema(Answer):
    format = _text()
    decision_id = _text()
    chain = _text()
    audit_seq = fields.Integer(required=True)
    prev_hash = _text()
    canonical = _text(metadata={"description": "the decision's record as hashed"})
    row_hash = _text()
    leaf_index = fields.Integer(required=True)
    inclusion_proof = fields.List(fields.String(), required=True)
    checkpoint = fields.Dict(required=True, metadata={"description": "the signed checkpoint: statement and signature"})


class AuditEventsSchema(Answer):
    chain = _text()
    events = fields.List(fields.Dict(), required=True)
    count = fields.Integer(required=True)
    next_after_seq = _maybe(fields.Integer, metadata={"description": "the `after_seq` of the next page"})


class VerifySchema(Answer):
    ok = fields.Boolean(required=True)
    chains = fields.List(fields.Dict(), required=True)
    count = fields.Integer(required=True)
    broken = fields.Dict(metadata={"description": "when not ok: per chain, the first broken sequence number and what "
                                                  "is wrong"})


class ReplayResultSchema(Answer):
    differences = fields.List(fields.Dict(), required=True)
    summary = fields.Dict(required=True, metadata={"description": "before and after: decisions, approvals, "
                                                                  "rejections by reason, approved exposure"})


class EndOfDaySchema(Answer):
    report = _text()
    trading_day = _text()
    start = _text()
    cutoff = _text()
    final = fields.Boolean(required=True, metadata={"description": "the day is over"})
    calendar = fields.Dict(required=True)
    firm = fields.Dict(required=True)
    groups = fields.List(fields.Dict(), required=True)
    portfolios = fields.List(fields.Dict(), required=True)
