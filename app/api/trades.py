"""Trading: decide intents, what-if, marks, fills, closes."""

from __future__ import annotations

import time

from flask.views import MethodView
from marshmallow import Schema, fields, validate

from app.services import books

from .auth import roles
from .common import Blueprint, actor, documented_errors, ok, path_symbol, portfolio_query, services, uow
from .schemas import (
    MAX_BATCH,
    CloseResponseSchema,
    CloseSchema,
    FillResponseSchema,
    FillSchema,
    MarksResponseSchema,
    MarksSchema,
    ProcessTradeResponseSchema,
    ProcessTradesResponseSchema,
    TradeIntentSchema,
    WhatIfResponseSchema,
)
from .scope import BATCH, ONE, acts_on, current

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
    @acts_on(ONE)
    @portfolio_query(blp)
    @blp.arguments(TradeIntentSchema())
    @blp.response(200, ProcessTradeResponseSchema)
    @_errors
    def post(self, body, **_query):
        """Decide one trade intent (the main endpoint)

        APPROVED (with a size) or REJECTED (with a reason code), always HTTP 200.
        The answer is sent only after the decision is committed.
        """
        body["portfolio_id"] = current().portfolio
        answer = services().trading.process_trade(body, actor())
        observed(answer["decision"])
        return ok(answer)


class TradeBatchSchema(Schema):
    intents = fields.List(fields.Nested(TradeIntentSchema), required=True, validate=validate.Length(1, MAX_BATCH))


@blp.route("/process_trades")
class ProcessTrades(MethodView):
    @roles("trader")
    @acts_on(BATCH)
    @portfolio_query(blp)
    @blp.arguments(TradeBatchSchema())
    @blp.response(200, ProcessTradesResponseSchema)
    @_errors
    def post(self, body, **_query):
        """Decide a list of intents in order, atomically per portfolio; each its own decision

        Each intent on its own `portfolio_id`; the query's `portfolio_id` is the portfolio of those
        that name none. Portfolios are taken in sorted order; an invalid intent refuses the whole batch.
        """
        intents = [{**intent, "portfolio_id": portfolio}
                   for intent, portfolio in zip(body["intents"], current().batch, strict=True)]
        answer = services().trading.process_trades(intents, actor())
        observed(*answer["decisions"])
        return ok(answer)


@blp.route("/what_if")
class WhatIf(MethodView):
    @roles("trader", "admin")
    @acts_on(ONE)
    @portfolio_query(blp)
    @blp.arguments(TradeIntentSchema())
    @blp.response(200, WhatIfResponseSchema)
    @_errors
    def post(self, body, **_query):
        """The decision an intent would get now; nothing is stored or changed"""
        body["portfolio_id"] = current().portfolio
        return ok(services().trading.what_if(body))


@blp.route("/marks")
class Marks(MethodView):
    @roles("trader", "market-data")
    @acts_on(ONE)
    @portfolio_query(blp)
    @blp.arguments(MarksSchema())
    @blp.response(200, MarksResponseSchema)
    @_errors
    def post(self, body, **_query):
        """Latest prices: revalue the portfolio and evaluate every kill switch"""
        return ok(books.apply_marks(uow(), current().portfolio, body["prices"], actor()))


@blp.route("/fills")
class Fills(MethodView):
    @roles("trader")
    @acts_on(ONE)
    @portfolio_query(blp)
    @blp.arguments(FillSchema())
    @blp.response(200, FillResponseSchema)
    @_errors
    def post(self, body, **_query):
        """Execution report for an approved decision (final: unfilled units are released)"""
        return ok(books.record_fill(uow(), current().portfolio, body["decision_id"], body["filled_units"],
                                        body["fill_price"], actor()))


@blp.route("/positions/<string:symbol>/close")
class ClosePosition(MethodView):
    @roles("trader")
    @acts_on(ONE)
    @portfolio_query(blp)
    @blp.arguments(CloseSchema())
    @blp.response(200, CloseResponseSchema)
    @_errors
    def post(self, body, symbol, **_query):
        """Close a whole position at a price, realising its PnL"""
        path_symbol(symbol)
        return ok(books.close_position(uow(), current().portfolio, symbol, body["price"], actor(), body.get("units")))
