"""Reading: portfolio, health, metrics, liveness and readiness."""

from __future__ import annotations

from flask import current_app, request
from flask.views import MethodView
from marshmallow import RAISE, Schema

from app.errors import Unavailable
from app.services import books, reading

from .auth import ANY, current_principal, public, roles
from .common import Blueprint, documented_errors, error_response, ok, portfolio_query, uow
from .schemas import (
    EquityCurveSchema,
    HealthSchema,
    LiveSchema,
    MetricsQuerySchema,
    MetricsSchema,
    Moment,
    PortfolioStateSchema,
    ReadySchema,
    WhoAmISchema,
    portfolio_field,
)
from .scope import NONE, ONE, VISIBLE, acts_on, current

blp = Blueprint("monitoring", __name__, description="Portfolio, health and metrics")


_errors = documented_errors(blp, (404, 422, 503))


@blp.route("/portfolio")
class PortfolioView(MethodView):
    @roles(*ANY)
    @acts_on(ONE)
    @portfolio_query(blp)
    @blp.response(200, PortfolioStateSchema)
    @_errors
    def get(self, **_query):
        """Positions, exposures (symbol, currency, gross, net), equity, PnL, drawdown"""
        return ok(reading.portfolio(uow(), current().portfolio))


@blp.route("/health")
class HealthView(MethodView):
    @roles(*ANY)
    @acts_on(ONE)
    @portfolio_query(blp)
    @blp.response(200, HealthSchema)
    @_errors
    def get(self, **_query):
        """Overall health, each kill switch (value, threshold, state), risk metrics, database status"""
        try:
            return ok(reading.health(uow(), current().portfolio))
        except Unavailable as exc:
            return error_response(503, str(exc), health="UNAVAILABLE", database={"status": "unavailable"})


def _metrics_scope(request) -> str:
    """JSON: one portfolio; the Prometheus exposition: every portfolio the key may see, unless one is named."""
    from app.observability import wants_prometheus

    return VISIBLE if wants_prometheus() and "portfolio_id" not in request.args else ONE


@blp.route("/metrics")
class MetricsView(MethodView):
    @roles(*ANY)
    @acts_on(_metrics_scope)
    @blp.arguments(MetricsQuerySchema(), location="query", as_kwargs=True, unknown=RAISE)
    @blp.doc(responses={"200": {
        "description": "decision statistics (JSON), or the Prometheus text format",
        "content": {"application/json": {"schema": MetricsSchema},
                    "text/plain": {"schema": {"type": "string"}}}}})
    @_errors
    def get(self, **_query):
        """Decision counts, approval rate, rejections by reason and category, sizing and latency

        Prometheus text format with `Accept: text/plain` (or `?format=prometheus`).
        """
        from flask import Response

        from app.observability import prometheus_text, wants_prometheus

        if wants_prometheus():
            if "portfolio_id" in request.args:  # one named: 404 unless it exists, as every route naming one
                uow().known(current().portfolio)
            body, content_type = prometheus_text(uow(), current().portfolios)
            return Response(body, content_type=content_type)
        return ok(reading.metrics(uow(), current().portfolio))


@blp.route("/health/live")
class Live(MethodView):
    @public
    @blp.response(200, LiveSchema)
    def get(self):
        """Liveness: the process answers"""
        return ok({"status": "alive"})


@blp.route("/health/ready")
class Ready(MethodView):
    @public
    @blp.response(200, ReadySchema)
    @blp.alt_response(503, description="Database unreachable or migrations not at head")
    def get(self):
        """Readiness: the database is reachable and its migrations are at head"""
        from app.store.migrate import migration_status

        status = migration_status(current_app.extensions["rpm"].db)
        if not status["ready"]:
            details = {k: v for k, v in status.items() if k != "message"}
            return error_response(503, status["message"], **details)
        return ok(status)


class EquityQuerySchema(Schema):
    portfolio_id = portfolio_field()
    since = Moment(metadata={"description": "points at or after (ISO 8601)"})


@blp.route("/portfolio/equity")
class EquityCurve(MethodView):
    @roles(*ANY)
    @acts_on(ONE)
    @blp.arguments(EquityQuerySchema(), location="query", unknown=RAISE)
    @blp.response(200, EquityCurveSchema)
    @_errors
    def get(self, query):
        """Equity and drawdown over time (after each mark, fill and close), at most 500 points"""
        return ok(books.equity_curve(uow(), current().portfolio, query.get("since")))


@blp.route("/whoami")
class WhoAmI(MethodView):
    @roles(*ANY)
    @acts_on(NONE)
    @blp.response(200, WhoAmISchema)
    def get(self):
        """The calling key: name, role and portfolios (what a console may offer)"""
        principal = current_principal()
        return ok({"name": principal.name, "role": principal.role, "key_id": principal.key_id,
                   "portfolios": list(principal.portfolios) if principal.portfolios is not None else None})
