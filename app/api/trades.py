"""Trading: decide intents, what-if, marks, fills, closes."""

from __future__ import annotations

import time

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from app.errors import Forbidden

from .auth import current_principal, roles
from .common import actor, documented_errors, ok, portfolio_id, portfolio_query, service
from .fast import batch_fields
from .schemas import (
    MAX_BATCH,
    AnyObjectSchema,
    CloseSchema,
    FillSchema,
    MarksSchema,
    ProcessTradeResponseSchema,
    TradeIntentSchema,
    WhatIfResponseSchema,
)

blp = Blueprint("trading", __name__, description="Trade intents, marks, fills and closes")


def observed(*decisions) -> None:
    """After the commit: Prometheus counters, and the decision in the request's log line."""
    from flask import g

    from app.observability import record_decisions

    record_decisions(list(decisions), time.perf_counter() - g.get("started", time.perf_counter()))
    if len(decisions) == 1:
        g.decision_id, g.decision_status = decisions[0]["id"], decisions[0]["status"]


_errors = documented_errors(blp)


@blp.route("/process_trade")
class ProcessTrade(MethodView):
    @roles("trader")
    @portfolio_query(blp)
    @blp.arguments(TradeIntentSchema())
    @blp.response(200, ProcessTradeResponseSchema)
    @_errors
    def post(self, body, **_query):
        """Decide one trade intent (the main endpoint)

        APPROVED (with a size) or REJECTED (with a reason code), always HTTP 200.
        The answer is sent only after the decision is committed.
        """
        body["portfolio_id"] = portfolio_id(body)
        answer = service().process_trade(body, actor())
        observed(answer["decision"])
        return ok(answer)


class TradeBatchSchema(Schema):
    intents = fields.List(fields.Nested(TradeIntentSchema), required=True, validate=validate.Length(1, MAX_BATCH))

    def load(self, data, **kwargs):
        """A batch whose intents are all plainly valid is loaded by the fast path's check, which gives what
        the schema gives at a tenth of its cost (~2 instead of ~27 µs an intent; a property test holds the
        two together); anything else by the schema, which answers it as it always has."""
        if not kwargs:
            loaded = batch_fields(data)
            if loaded is not None:
                return loaded
        return super().load(data, **kwargs)


@blp.route("/process_trades")
class ProcessTrades(MethodView):
    @roles("trader")
    @blp.arguments(TradeBatchSchema())
    @blp.response(200, AnyObjectSchema)
    @_errors
    def post(self, body):
        """Decide a list of intents in order, atomically per portfolio; each its own decision

        Portfolios are taken in sorted order; an invalid intent refuses the whole batch.
        """
        principal = current_principal()
        for intent in body["intents"]:
            if principal is not None and not principal.may_use(intent.get("portfolio_id") or "default"):
                raise Forbidden(f"this key may not use portfolio {intent.get('portfolio_id') or 'default'!r}")
        answer = service().process_trades(body["intents"], actor())
        observed(*answer["decisions"])
        return ok(answer)


@blp.route("/what_if")
class WhatIf(MethodView):
    @roles("trader", "admin")
    @portfolio_query(blp)
    @blp.arguments(TradeIntentSchema())
    @blp.response(200, WhatIfResponseSchema)
    @_errors
    def post(self, body, **_query):
        """The decision an intent would get now; nothing is stored or changed"""
        body["portfolio_id"] = portfolio_id(body)
        return ok(service().what_if(body))


@blp.route("/marks")
class Marks(MethodView):
    @roles("trader")
    @portfolio_query(blp)
    @blp.arguments(MarksSchema())
    @blp.response(200, AnyObjectSchema)
    @_errors
    def post(self, body, **_query):
        """Latest prices: revalue the portfolio and evaluate every kill switch"""
        return ok(service().apply_marks(portfolio_id(body), body["prices"], actor()))


@blp.route("/fills")
class Fills(MethodView):
    @roles("trader")
    @portfolio_query(blp)
    @blp.arguments(FillSchema())
    @blp.response(200, AnyObjectSchema)
    @_errors
    def post(self, body, **_query):
        """Execution report for an approved decision (final: unfilled units are released)"""
        return ok(service().record_fill(portfolio_id(body), body["decision_id"], body["filled_units"],
                                        body["fill_price"], actor()))


@blp.route("/positions/<string:symbol>/close")
class ClosePosition(MethodView):
    @roles("trader")
    @portfolio_query(blp)
    @blp.arguments(CloseSchema())
    @blp.response(200, AnyObjectSchema)
    @_errors
    def post(self, body, symbol, **_query):
        """Close a whole position at a price, realising its PnL"""
        return ok(service().close_position(portfolio_id(body), symbol, body["price"], actor()))
