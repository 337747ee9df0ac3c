"""POST /process_trade without Flask's per-request machinery: the signal engine's hot path.

Flask's routing, request context, hooks and webargs cost about 0.45 ms of CPU per request
(README, Benchmarks) — more than deciding the intent. A request that is plainly acceptable is
decided here instead, with the same key store, service, JSON encoder, request ids, access log
line and metrics as the Flask view: no query string, a JSON object holding only the schema's
fields, each exactly as the schema would take it (``intent_fields``; a property test holds it to
the marshmallow schema), and a key of an admitted role allowed on the portfolio. Everything else
— a missing or malformed Authorization header, a role or portfolio the key may not use, a field
the schema would refuse, a query parameter, a body that is not UTF-8 JSON — goes to Flask untouched,
which answers it as it always has. An answer never depends on which path took it (tests send
the same requests both ways and compare). The same check of an intent loads the plainly valid
batches of POST /process_trades (``batch_fields``, used by that endpoint's schema).
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

import orjson
from flask import Flask

from app.errors import ServiceError
from app.observability import body_portfolio, log_access, record_decisions, request_id_of
from app.risk.config import REGIMES, SYMBOL_RE
from app.risk.model import PORTFOLIO_ID_RE
from app.services import Actor

from .auth import declaration
from .common import error_body, error_headers
from .schemas import INTENT_ID_LENGTH, MAX_BATCH, MAX_NUMBER

PATH = "/process_trade"
REQUIRED = ("symbol", "direction", "confidence_score", "regime", "atr", "vol_percentile", "current_price")
FIELDS = frozenset(REQUIRED) | {"intent_id", "portfolio_id"}
_UNIT = ("confidence_score", "vol_percentile")  # 0 <= x <= 1
_POSITIVE = ("atr", "current_price")  # 0 < x <= MAX_NUMBER
log = logging.getLogger("app")


def _number(value: Any) -> float | None:
    """What StrictFloat loads from a JSON number (ints become floats), or None where it refuses."""
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is int:  # (bool is not int here: type() is exact)
        try:
            return float(value)
        except OverflowError:
            return None
    return None


def intent_fields(body: Any) -> dict[str, Any] | None:
    """``TradeIntentSchema().load(body)`` when the schema accepts ``body``; None when it might not."""
    if type(body) is not dict or not FIELDS.issuperset(body) or any(name not in body for name in REQUIRED):
        return None
    symbol, direction, regime = body["symbol"], body["direction"], body["regime"]
    if type(symbol) is not str or SYMBOL_RE.match(symbol) is None:
        return None
    if type(direction) is not int or direction not in (1, -1):
        return None
    if type(regime) is not str or regime not in REGIMES:
        return None
    loaded = dict(body)
    for name in _UNIT:
        number = _number(body[name])
        if number is None or not 0 <= number <= 1:
            return None
        loaded[name] = number
    for name in _POSITIVE:
        number = _number(body[name])
        if number is None or not 0 < number <= MAX_NUMBER:
            return None
        loaded[name] = number
    if "intent_id" in body:
        intent_id = body["intent_id"]
        if type(intent_id) is not str or not 1 <= len(intent_id) <= INTENT_ID_LENGTH:
            return None
    if "portfolio_id" in body:
        portfolio = body["portfolio_id"]
        if type(portfolio) is not str or PORTFOLIO_ID_RE.match(portfolio) is None:
            return None
    return loaded


def batch_fields(body: Any) -> dict[str, Any] | None:
    """``TradeBatchSchema().load(body)`` when every intent of the batch is plainly valid (``intent_fields``);
    None when the schema might answer otherwise."""
    if type(body) is not dict or body.keys() != {"intents"}:
        return None
    intents = body["intents"]
    if type(intents) is not list or not 1 <= len(intents) <= MAX_BATCH:
        return None
    loaded = [intent_fields(intent) for intent in intents]
    return None if None in loaded else {"intents": loaded}


def _json_body(environ: dict[str, Any]) -> bytes | None:
    """The request's body if it is declared JSON (UTF-8) with a length; None otherwise."""
    mimetype, _, params = environ.get("CONTENT_TYPE", "").partition(";")
    if mimetype.strip().lower() != "application/json":
        return None
    if params.strip() and params.strip().lower().replace(" ", "") not in ("charset=utf-8", "charset=\"utf-8\""):
        return None
    try:
        length = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None
    return environ["wsgi.input"].read(length) if 0 < length <= 65536 else None


class FastProcessTrade:
    """WSGI middleware in front of the Flask app (see the module's docstring)."""

    def __init__(self, app: Flask, inner: Callable[..., Iterable[bytes]]):
        self.inner = inner
        self.service = app.extensions["rpm"]
        self.keys = app.extensions["rpm_keys"]
        self.encode = app.json.encode
        endpoint, _ = app.url_map.bind("localhost").match(PATH, "POST")
        is_public, admitted = declaration(app, endpoint, "POST")
        if is_public or not admitted:
            raise RuntimeError("POST /process_trade must declare the roles it admits")
        self.admitted = admitted

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if (environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST"
                or environ.get("QUERY_STRING")):
            return self.inner(environ, start_response)
        started = time.perf_counter()
        raw = _json_body(environ)
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
        if b"\x00" in raw or b"\\u0000" in raw:  # refused at Flask's door (refuse_ambiguous_input)
            return None
        scheme, _, key = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        key = key.strip()
        if scheme != "Bearer" or not key or " " in key:
            return None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        fields = intent_fields(body)
        if fields is None:
            return None
        request_id = request_id_of(environ.get("HTTP_X_REQUEST_ID", ""))
        portfolio = fields.get("portfolio_id") or "default"
        try:
            principal = self.keys.authenticate(key)
        except ServiceError as exc:  # 401 (logged once, by the key store: Flask would authenticate again), 503
            self._log(request_id, exc.status, started, body, None)
            return exc.status, self.encode(error_body(exc.status, exc.message, exc.errors, **exc.extra)), \
                request_id, error_headers(exc.status)
        if principal.role not in self.admitted or not principal.may_use(portfolio):
            return None  # a 403, and its warning in the log, are Flask's
        fields["portfolio_id"] = portfolio
        actor = Actor(principal.name, principal.role, principal.key_id, request_id=request_id)
        decision = None
        try:
            answer = self.service.process_trade(fields, actor)
            status, decision = 200, answer["decision"]
            record_decisions([decision], time.perf_counter() - started)
        except ServiceError as exc:
            status, answer = exc.status, error_body(exc.status, exc.message, exc.errors, **exc.extra)
        except Exception:
            log.exception("unexpected error")
            status, answer = 500, error_body(500, "internal error")
        self._log(request_id, status, started, body, principal.name, decision)
        return status, self.encode(answer), request_id, []

    @staticmethod
    def _log(request_id: str, status: int, started: float, body: dict[str, Any],
             key_name: str | None, decision: dict[str, Any] | None = None) -> None:
        log_access(request_id, "POST", PATH, status, started, body_portfolio(body), key_name,
                   decision["id"] if decision else None, decision["status"] if decision else None)


def install(app: Flask) -> None:
    """Put the fast path in front of the app's WSGI callable (every server and test client goes through it)."""
    app.wsgi_app = FastProcessTrade(app, app.wsgi_app)  # type: ignore[method-assign]
