"""The HTTP edge: flask-smorest blueprints, one JSON error shape, OpenAPI at /openapi.json and /docs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Flask, redirect, send_from_directory
from flask_smorest import Api as SmorestApi
from werkzeug.exceptions import HTTPException

from app.errors import ServiceError
from app.store.database import READ_FROM

from . import admin, audit, events, firm, health, openapi, portfolios, trades
from .auth import authorize, document_security, public
from .common import error_headers, error_response
from .schemas import ErrorSchema

MESSAGES = {
    400: "malformed request: the body is not valid JSON",
    413: "the body is larger than this service reads (RPM_MAX_BODY_BYTES)",
    422: "invalid request: see `errors` for a message per field",
}


class Api(SmorestApi):
    ERROR_SCHEMA = ErrorSchema  # the document's error body: ours (flask-smorest's admits no field beyond its four)

    def handle_http_exception(self, error: HTTPException):  # type: ignore[override]
        payload, code, headers = super().handle_http_exception(error)
        # werkzeug's stock descriptions are HTML-minded prose: ours, unless the raiser wrote its own
        own = error.description if error.description != type(error).description else None
        payload.setdefault("message", own or MESSAGES.get(code) or error.description or error.name)
        payload["errors"] = flatten_errors(payload.get("errors") or {})
        valid = getattr(error, "valid_methods", None)
        if valid:  # RFC 9110: a 405 lists the methods the resource supports
            headers = {**(headers or {}), "Allow": ", ".join(sorted(valid))}
        return payload, code, headers


def refuse_ambiguous_query() -> None:
    """Refuse at the door, as a 422: query parameters the route does not declare, repeated ones, NUL
    characters (PostgreSQL stores none). Bodies are refused by their one reading (app/api/body.py)."""
    from flask import current_app, request

    from app.errors import Invalid

    if request.url_rule is None:
        return  # 404/405 answer on their own
    declared = current_app.extensions["rpm_declared"].query.get((request.url_rule.rule, request.method), frozenset())
    unknown = sorted(set(request.args) - declared)
    if unknown:
        raise Invalid("unknown query parameters", {k: ["unknown query parameter"] for k in unknown})
    if any("\x00" in k or "\x00" in v for k, v in request.args.items(multi=True)):
        raise Invalid("NUL characters are not allowed", {"_query": ["NUL characters are not allowed"]})
    repeated = sorted(k for k, values in request.args.lists() if len(values) > 1)
    if repeated:  # every parameter takes one value: a repeated one is ambiguous
        raise Invalid("repeated query parameters", {k: ["given more than once"] for k in repeated})


@dataclass(frozen=True)
class Declared:
    """What a route and method take, as the OpenAPI document says (from the views' schemas: one declaration
    for the document and the checks)."""

    query: dict[tuple[str, str], frozenset[str]]  # the query parameters
    body: dict[tuple[str, str], bool]  # a JSON body, and whether it is required


def declared_inputs(api: Api, app: Flask) -> Declared:
    from .auth import openapi_path

    paths = api.spec.to_dict().get("paths", {})
    query, body = {}, {}
    for rule in app.url_map.iter_rules():
        for method in rule.methods - {"OPTIONS"}:
            operation = paths.get(openapi_path(rule.rule), {}).get(("get" if method == "HEAD" else method).lower(), {})
            query[(rule.rule, method)] = frozenset(
                p["name"] for p in operation.get("parameters", []) if p.get("in") == "query")
            if "requestBody" in operation:
                body[(rule.rule, method)] = bool(operation["requestBody"].get("required"))
    return Declared(query, body)


def flatten_errors(errors: Any) -> dict[str, Any]:
    """webargs nests messages by location ({"json": {"atr": [...]}}): give one map of field -> messages."""
    flat: dict[str, Any] = {}
    for location, messages in (errors.items() if isinstance(errors, dict) else [("_body", errors)]):
        if isinstance(messages, dict):
            flat.update(messages)
        else:
            flat.setdefault("_body" if location in ("json", "query") else location, messages)
    return flat


def register_api(app: Flask) -> Api:
    app.config.update(
        API_TITLE="RPM - Risk & Portfolio Manager",
        API_VERSION="1.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL="/docs/assets/",
    )
    app.config["MAX_CONTENT_LENGTH"] = app.config["RPM_SETTINGS"].max_body_bytes
    api = Api(app)
    for module in (trades, health, admin, portfolios, audit, firm, events):
        api.register_blueprint(module.blp)
    _register_docs_assets(app)
    _register_console(app)
    _register_error_handlers(app)
    app.before_request(_forget_read_source)
    app.before_request(refuse_ambiguous_query)
    app.before_request(authorize)
    app.after_request(_read_source_headers)
    document_security(api, app)
    openapi.complete(api)
    app.extensions["rpm_declared"] = declared_inputs(api, app)
    if app.config["RPM_SETTINGS"].fast_path:
        from .fast import install

        install(app)
    return api


def _forget_read_source() -> None:
    READ_FROM.set(None)  # (a worker's thread serves request after request)


def _read_source_headers(response):
    """A compliance read served by DATABASE_READ_URL says so, and how far behind the primary it was."""
    read = READ_FROM.get()
    if read is not None:
        standby, lag = read
        response.headers["RPM-Read-From"] = "replica" if standby else "primary"
        response.headers["RPM-Replica-Lag-Seconds"] = "unknown" if lag is None else f"{lag:.3f}"
    return response


def _register_docs_assets(app: Flask) -> None:
    import swagger_ui_bundle

    folder = swagger_ui_bundle.swagger_ui_path

    @app.get("/docs/assets/<path:filename>")
    @public
    def docs_assets(filename: str):
        return send_from_directory(folder, filename)


def _register_console(app: Flask) -> None:
    """The risk console: one page; it signs in with an API key kept in the browser tab."""
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "console"

    @app.get("/console")
    @public
    def console():
        response = send_from_directory(folder, "index.html")
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/")
    @public
    def root():
        """The console, for a browser that opens RPM's address."""
        return redirect("/console", code=302)


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError):
        response = error_response(exc.status, exc.message, exc.errors, **exc.extra)
        response.headers.extend(error_headers(exc.status))
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        if isinstance(exc, HTTPException):
            return app.extensions["rpm_api"].handle_http_exception(exc)
        app.logger.exception("unexpected error")
        return error_response(500, "internal error")

