"""Access control: every route declares the roles it admits and what it acts on; deny by default.

`Authorization: Bearer <key>`. 401 for a missing, malformed, unknown, revoked or
expired key (429 after repeated failures: app/keys.py); 403 for a role that is not admitted
or a portfolio outside the key's list (the one reading of a request's scope: app/api/scope.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Flask, current_app, g, request

from app.errors import Forbidden, Invalid, Unauthorized
from app.keys import ROLES, Principal, key_prefix
from app.services import Actor

from . import scope
from .body import MISSING, request_json

# every role but market-data (which only posts marks)
ANY = tuple(role for role in ROLES if role != "market-data")
# flask-smorest's own views (the OpenAPI document and the docs page)
PUBLIC_ENDPOINTS = frozenset({"api-docs.openapi_json", "api-docs.openapi_swagger_ui"})
log = logging.getLogger("rpm.auth")


def roles(*names: str) -> Callable:
    """Declare the roles a view admits."""
    def mark(view: Callable) -> Callable:
        view.rpm_roles = frozenset(names)
        return view
    return mark


def public(view: Callable) -> Callable:
    """Declare a view open to anyone (liveness, readiness, the API documents)."""
    view.rpm_public = True
    return view


def _views(app: Flask, endpoint: str, method: str) -> tuple[Any, Any]:
    """The view function behind an endpoint, and the method of its class that answers ``method``."""
    view = app.view_functions.get(endpoint)
    target = view
    view_class = getattr(view, "view_class", None)
    if view_class is not None:
        target = getattr(view_class, method.lower(), None)
        if target is None and method == "HEAD":
            target = getattr(view_class, "get", None)
    return view, target


def declaration(app: Flask, endpoint: str, method: str) -> tuple[bool, frozenset[str] | None]:
    """(public, roles) declared by the view behind an endpoint and method."""
    if endpoint in PUBLIC_ENDPOINTS:
        return True, None
    view, target = _views(app, endpoint, method)
    if view is None:
        return False, None
    if getattr(target, "rpm_public", False) or getattr(view, "rpm_public", False):
        return True, None
    return False, getattr(target, "rpm_roles", None)


def scope_declared(app: Flask, endpoint: str, method: str) -> Any:
    """What the view behind an endpoint and method acts on (app/api/scope.py), or None when it declares nothing."""
    _view, target = _views(app, endpoint, method)
    return getattr(target, "rpm_scope", None)


def current_principal() -> Principal | None:
    return g.get("rpm_principal")


def current_actor() -> Actor:
    principal = current_principal()
    if principal is None:  # only public routes have none, and they record nothing
        return Actor("anonymous", "none", request_id=g.get("request_id"))
    return Actor(principal.name, principal.role, principal.key_id, request_id=g.get("request_id"))


def authorize() -> None:
    """before_request: authenticate the key, check the route's roles, then resolve and check its scope."""
    if request.endpoint is None or request.method == "OPTIONS":
        return  # 404/405 answer on their own
    is_public, admitted = declaration(current_app, request.endpoint, request.method)
    if is_public:
        return
    kind = scope_declared(current_app, request.endpoint, request.method)
    if admitted is None or kind is None:
        raise Forbidden("this route declares no roles or scope: denied by default")
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if not header:
        raise Unauthorized("missing API key: send Authorization: Bearer <key>")
    if scheme.lower() != "bearer" or not key.strip() or " " in key.strip():  # (RFC 9110: any case)
        raise Unauthorized("malformed Authorization header: expected Bearer <key>")
    principal = current_app.extensions["rpm_keys"].authenticate(key.strip(), request.remote_addr)
    g.rpm_principal = principal
    if principal.role not in admitted:
        log.warning("forbidden: role %s on %s %s", principal.role, request.method, request.path,
                    extra={"key_prefix": key_prefix(key.strip()), "key_name": principal.name})
        raise Forbidden(f"role {principal.role!r} may not use {request.method} {request.url_rule.rule}",
                        required_roles=sorted(admitted))
    g.rpm_scope = scope.resolve(kind(request) if callable(kind) else kind, declared_body(), request.args,
                                principal.portfolios)


def declared_body() -> Any:
    """The request's JSON body if the route takes one (MISSING otherwise: a body it does not declare is not
    read); 422 when the route requires one and there is none."""
    required = current_app.extensions["rpm_declared"].body.get((request.url_rule.rule, request.method))
    if required is None:
        return MISSING
    body = request_json()
    if body is MISSING and required:
        raise Invalid("a JSON body is required", {"_body": ["a JSON body is required"]})
    return body


def document_security(api: Any, app: Flask) -> None:
    """Tell the truth in the OpenAPI document: the scheme, who may call what, the 401/403 answers."""
    api.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer",
                                                        "description": "an RPM API key"})
    paths = api.spec._paths  # apispec keeps the operations here until to_dict()
    for rule in app.url_map.iter_rules():
        path = openapi_path(rule.rule)
        if path not in paths:
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = paths[path].get(method.lower())
            if operation is None:
                continue
            is_public, admitted = declaration(app, rule.endpoint, method)
            if is_public:
                operation["security"] = []
                continue
            operation["security"] = [{"bearerAuth": []}]
            operation["x-roles"] = sorted(admitted or [])
            responses = operation.setdefault("responses", {})
            responses.setdefault("401", {"description": "No, malformed, unknown, revoked or expired API key"})
            responses.setdefault("403", {"description": f"Role not allowed (allowed: {', '.join(sorted(admitted or []))})"
                                                        " or portfolio outside the key's list"})


def openapi_path(rule: str) -> str:
    import re

    return re.sub(r"<(?:[a-z]+:)?([a-zA-Z_]+)>", r"{\1}", rule)
