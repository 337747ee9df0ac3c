"""POST /process_trade without Flask's per-request machinery: the signal engine's hot path.

Flask's routing, request context and hooks cost about 0.45 ms of CPU per request (bench/HISTORY.md)
— more than deciding the intent. A request that is plainly acceptable is decided here instead,
with the same readings as the Flask view: the body through ``app.api.body.parse`` (UTF-8 JSON,
bounded), the intent through the view's own schema (``TradeIntentSchema``), the key through the key
store, the portfolio through ``app.api.scope.resolve``; and the same service, JSON encoder, request
ids, access log line and metrics. Anything any of those refuses — a missing or malformed
Authorization header, a role or portfolio the key may not use, an invalid intent, a query string,
a body that is not UTF-8 JSON — goes to Flask untouched, which answers it as it always has. An
answer never depends on which path took it (tests send the same requests both ways and compare).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from flask import Flask
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from app.errors import ServiceError
from app.observability import log_access, record_decisions, request_id_of
from app.services import Actor

from . import scope
from .auth import declaration, scope_declared
from .body import content_type_error, parse
from .common import error_body, error_headers
from .schemas import TradeIntentSchema

PATH = "/process_trade"
MAX_FAST_BODY = 65536  # larger bodies (not an intent) are Flask's
log = logging.getLogger("app")


def _json_body(environ: dict[str, Any], largest: int) -> bytes | None:
    """The request's body if it is declared JSON (UTF-8) with a length of at most ``largest``; None otherwise."""
    if content_type_error(environ.get("CONTENT_TYPE", "")) is not None:
        return None
    try:
        length = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None
    return environ["wsgi.input"].read(length) if 0 < length <= largest else None


class FastProcessTrade:
    """WSGI middleware in front of the Flask app (see the module's docstring)."""

    def __init__(self, app: Flask, inner: Callable[..., Iterable[bytes]]):
        self.inner = inner
        self.trading = app.extensions["rpm"].trading
        self.keys = app.extensions["rpm_keys"]
        self.encode = app.json.encode
        endpoint, _ = app.url_map.bind("localhost").match(PATH, "POST")
        is_public, admitted = declaration(app, endpoint, "POST")
        if is_public or not admitted or scope_declared(app, endpoint, "POST") != scope.ONE:
            raise RuntimeError("POST /process_trade must declare its roles and act on one portfolio")
        self.admitted = admitted
        self.schema = TradeIntentSchema()
        # a body Flask would refuse as too large (413) is Flask's to refuse
        self.largest = min(MAX_FAST_BODY, app.config["MAX_CONTENT_LENGTH"] or MAX_FAST_BODY)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if (environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST"
                or environ.get("QUERY_STRING")):
            return self.inner(environ, start_response)
        started = time.perf_counter()
        raw = _json_body(environ, self.largest)
        if raw is None:
            return self.inner(environ, start_response)
        answered = self._answer(environ, raw, started)
        if answered is None:  # Flask answers it: it reads the body we read
            environ["wsgi.input"] = io.BytesIO(raw)
            return self.inner(environ, start_response)
        status, body, request_id, extra_headers = answered
        start_response(f"{status} {HTTPStatus(status).phrase}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                        ("X-Request-ID", request_id), *extra_headers])
        return [body]

    def _answer(self, environ: dict[str, Any], raw: bytes,
                started: float) -> tuple[int, bytes, str, list[tuple[str, str]]] | None:
        """(status, body, request id, headers) of a request this path takes; None for Flask's."""
        scheme, _, key = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key or " " in key:
            return None
        try:
            body = parse(raw)
            fields = self.schema.load(body)
        except (ServiceError, HTTPException, ValidationError):
            return None
        request_id = request_id_of(environ.get("HTTP_X_REQUEST_ID", ""))
        try:
            principal = self.keys.authenticate(key, environ.get("REMOTE_ADDR"))
        except ServiceError as exc:  # 401 (logged once, by the key store: Flask would authenticate again), 429, 503
            self._log(request_id, exc.status, started, None, None)
            return exc.status, self.encode(error_body(exc.status, exc.message, exc.errors, **exc.extra)), \
                request_id, error_headers(exc.status)
        if principal.role not in self.admitted:
            return None  # a 403, and its warning in the log, are Flask's
        try:
            portfolio = scope.resolve(scope.ONE, body, {}, principal.portfolios).portfolio
        except ServiceError:
            return None  # as a 403 or 422, Flask's
        fields["portfolio_id"] = portfolio
        actor = Actor(principal.name, principal.role, principal.key_id, request_id=request_id)
        decision = None
        try:
            answer = self.trading.process_trade(fields, actor)
            status, decision = 200, answer["decision"]
            record_decisions([decision], time.perf_counter() - started)
        except ServiceError as exc:
            status, answer = exc.status, error_body(exc.status, exc.message, exc.errors, **exc.extra)
        except Exception:
            log.exception("unexpected error")
            status, answer = 500, error_body(500, "internal error")
        self._log(request_id, status, started, portfolio, principal.name, decision)
        return status, self.encode(answer), request_id, []

    @staticmethod
    def _log(request_id: str, status: int, started: float, portfolio: str | None,
             key_name: str | None, decision: dict[str, Any] | None = None) -> None:
        log_access(request_id, "POST", PATH, status, started, portfolio, key_name,
                   decision["id"] if decision else None, decision["status"] if decision else None)


def install(app: Flask) -> None:
    """Put the fast path in front of the app's WSGI callable (every server and test client goes through it)."""
    app.wsgi_app = FastProcessTrade(app, app.wsgi_app)  # type: ignore[method-assign]
