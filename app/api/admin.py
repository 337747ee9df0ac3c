"""Operating: halt, resume, configuration, instruments."""

from __future__ import annotations

from flask.views import MethodView

from app.errors import Invalid
from app.services import operator, reading

from .auth import ANY, roles
from .common import Blueprint, actor, documented_errors, ok, path_symbol, portfolio_query, uow
from .schemas import (
    CapitalResponseSchema,
    CapitalSchema,
    ConfigPutSchema,
    ConfigVersionSchema,
    CorrectionSchema,
    CorrectSchema,
    HaltSchema,
    InstrumentsPutSchema,
    InstrumentsSchema,
    ResumeSchema,
    TradingStateSchema,
)
from .scope import ONE, acts_on, current

blp = Blueprint("admin", __name__, description="Halt, resume, configuration and instruments")


_errors = documented_errors(blp)


@blp.route("/halt")
class Halt(MethodView):
    @roles("admin")
    @acts_on(ONE)
    @portfolio_query(blp)
    @blp.arguments(HaltSchema())
    @blp.response(200, TradingStateSchema)
    @_errors
    def post(self, body, **_query):
        """Manual halt (reason required): only reducing trades pass until a manual resume"""
        return ok(operator.halt(uow(), current().portfolio, body["reason"], actor()))


@blp.route("/resume")
class Resume(MethodView):
    @roles("admin")
    @acts_on(ONE)
    @portfolio_query(blp)
    @blp.arguments(ResumeSchema())
    @blp.response(200, TradingStateSchema)
    @_errors
    def post(self, body, **_query):
        """Manual resume: refused (409) during an automatic switch's cooldown unless `force` with a reason"""
        return ok(operator.resume(uow(), current().portfolio, actor(), force=body["force"], reason=body.get("reason")))


@blp.route("/config")
class Config(MethodView):
    @roles(*ANY)
    @acts_on(ONE)
    @portfolio_query(blp)
    @blp.response(200, ConfigVersionSchema)
    @_errors
    def get(self, **_query):
        """The portfolio's configuration with its version and hash"""
        return ok(reading.get_config(uow(), current().portfolio))

    @roles("admin")
    @acts_on(ONE)
    @portfolio_query(blp)
    @blp.arguments(ConfigPutSchema())
    @blp.response(200, ConfigVersionSchema)
    @_errors
    def put(self, body, **_query):
        """Replace the configuration (validated; a new version; audited)"""
        return ok(operator.put_config(uow(), current().portfolio, body["config"], body.get("reason"), actor()))


@blp.route("/instruments")
class Instruments(MethodView):
    @roles(*ANY)
    @acts_on(ONE)
    @portfolio_query(blp)
    @blp.response(200, InstrumentsSchema)
    @_errors
    def get(self, **_query):
        """The portfolio's instruments (part of its configuration: its version and hash)"""
        return ok(reading.get_instruments(uow(), current().portfolio))

    @roles("admin")
    @acts_on(ONE)
    @portfolio_query(blp)
    @blp.arguments(InstrumentsPutSchema())
    @blp.response(200, ConfigVersionSchema)
    @_errors
    def put(self, body, **_query):
        """Replace the instrument table (validated; a new configuration version; audited)"""
        return ok(operator.put_instruments(uow(), current().portfolio, body["instruments"], body.get("reason"),
                                           actor()))


@blp.route("/capital")
class Capital(MethodView):
    @roles("admin")
    @acts_on(ONE)
    @portfolio_query(blp)
    @blp.arguments(CapitalSchema())
    @blp.response(200, CapitalResponseSchema)
    @_errors
    def post(self, body, **_query):
        """A deposit or a withdrawal (reason required; audited): equity moves, not as PnL"""
        if body["amount"] == 0:
            raise Invalid("no amount", {"amount": ["must not be 0"]})
        return ok(operator.move_capital(uow(), current().portfolio, body["amount"], body["reason"], actor()))


@blp.route("/positions/<string:symbol>/correct")
class CorrectPosition(MethodView):
    @roles("admin")
    @acts_on(ONE)
    @portfolio_query(blp)
    @blp.arguments(CorrectSchema())
    @blp.response(200, CorrectionSchema)
    @_errors
    def post(self, body, symbol, **_query):
        """Set a position to the broker's units and average price (reason required; audited; no PnL realised)"""
        path_symbol(symbol)
        if body["units"] != 0 and body.get("avg_price") is None:
            raise Invalid("an average price is needed", {"avg_price": ["required unless units is 0"]})
        return ok(operator.correct_position(uow(), current().portfolio, symbol, body["units"],
                                            body.get("avg_price", 1.0), body["reason"], actor()))

