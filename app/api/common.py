"""Helpers shared by the blueprints."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import flask_smorest
from flask import current_app, jsonify

from app.services import Actor, Services, UnitOfWork

from .body import BodyParser


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's blueprint, its arguments read from the one reading of a body (app/api/body.py)."""

    ARGUMENTS_PARSER = BodyParser()


ERROR_RESPONSES = {
    400: "Malformed JSON",
    404: "Unknown portfolio or decision",
    409: "Conflict (idempotency, cooldown, fill)",
    422: "Invalid fields, with a message per field",
    503: "Database unavailable: nothing was approved",
}


def portfolio_query(blp: Any):
    """The `portfolio_id` query parameter every portfolio route takes (unknown parameters refused)."""
    from marshmallow import RAISE

    from .schemas import PortfolioQuerySchema

    return blp.arguments(PortfolioQuerySchema(), location="query", as_kwargs=True, unknown=RAISE)


def documented_errors(blp: Any, statuses: tuple[int, ...] = tuple(ERROR_RESPONSES)):
    """Declare a view's error answers in the OpenAPI document (one JSON shape for all)."""
    def declare(view):
        for status in statuses:
            view = blp.alt_response(status, description=ERROR_RESPONSES[status])(view)
        return view
    return declare


def error_body(status: int, message: str, errors: Any = None, **extra: Any) -> dict[str, Any]:
    """The one JSON shape of every error answer."""
    body = {"code": status, "status": HTTPStatus(status).phrase, "message": message, "errors": errors or {}}
    body.update(extra)
    return body


def error_headers(status: int) -> list[tuple[str, str]]:
    """The headers an error answer carries besides the body: the challenge of a 401; with a 429 (only the
    key store's throttle answers one), when to come back."""
    if status == 401:
        return [("WWW-Authenticate", 'Bearer realm="rpm"')]
    if status == 429:
        from app.keys import FAILURE_WINDOW_SECONDS

        # the whole window, not the moment the oldest failure leaves it: the callers pass only the status,
        # and by then every failure counted has left it, so the client is surely let in again
        return [("Retry-After", str(FAILURE_WINDOW_SECONDS))]
    return []


def error_response(status: int, message: str, errors: Any = None, **extra: Any):
    response = jsonify(error_body(status, message, errors, **extra))
    response.status_code = status
    return response


def ok(payload: Any, status: int = 200):
    response = jsonify(payload)
    response.status_code = status
    return response


def services() -> Services:
    return current_app.extensions["rpm"]


def uow() -> UnitOfWork:
    """The unit of work the use cases run in."""
    return services().uow


def actor() -> Actor:
    from .auth import current_actor

    return current_actor()


def path_symbol(symbol: str) -> str:
    """A symbol named in a route's path (/positions/{symbol}/...), checked as a body's is: else 422."""
    from app.errors import Invalid
    from app.risk import domain

    if not domain.SYMBOL.matches(symbol):
        raise Invalid("invalid symbol", {"symbol": [f"must be {domain.SYMBOL.description}"]})
    return symbol

