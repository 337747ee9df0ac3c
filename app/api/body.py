"""The one reading of a request's JSON body: UTF-8 JSON only, bounded in size and nesting.

Everything that looks at a body — the scope resolver, the schemas (through ``BodyParser``) and
the fast path — reads it through ``parse``, so a body is never read two ways (the standard
library's ``json.loads`` would guess UTF-16 from the bytes; werkzeug ignores the charset). The
size bound is Flask's ``MAX_CONTENT_LENGTH`` (413 before the body is read).
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from flask import current_app, g, request
from webargs import core
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

from app.errors import Invalid

MAX_DEPTH = 32  # arrays and objects inside each other; an intent batch needs 3
MISSING = core.missing


def content_type_error(content_type: str) -> str | None:
    """Why a body of ``content_type`` is not read, or None for ``application/json`` in UTF-8."""
    mimetype, _, params = content_type.partition(";")
    if mimetype.strip().lower() != "application/json":
        return "the body must be application/json"
    for param in filter(None, (p.strip() for p in params.split(";"))):
        name, _, value = param.partition("=")
        if name.strip().lower() != "charset":
            return f"application/json takes no parameter but charset (got {name.strip()!r})"
        if value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return "a JSON body must be UTF-8 (charset=utf-8, or no charset)"
    return None


def parse(raw: bytes) -> Any:
    """A JSON document from UTF-8 bytes; 400 for anything else, or for one nested too deeply."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = _lenient(raw)
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        raise BadRequest(f"malformed request: the body nests arrays and objects more than {MAX_DEPTH} deep")
    # a raw NUL is not JSON; an escaped one is, and PostgreSQL stores no NUL character
    if b"\\u0000" in raw and any("\x00" in text for text in _strings(value)):
        raise Invalid("NUL characters are not allowed", {"_body": ["NUL characters are not allowed"]})
    return value


def _lenient(raw: bytes) -> Any:
    """What orjson refuses but a field check should answer (NaN, Infinity, integers beyond 64 bits: a 422
    naming the field), read from UTF-8 only; anything else a 400."""
    try:
        value = json.loads(raw.decode("utf-8"))
        # an escaped lone surrogate ("\ud800") decodes to text no UTF-8 can hold (orjson refuses it)
        for text in _strings(value):
            text.encode("utf-8")
        return value
    except RecursionError:
        raise BadRequest(f"malformed request: the body nests arrays and objects more than {MAX_DEPTH} deep") from None
    except (UnicodeError, ValueError) as exc:
        raise BadRequest(f"malformed request: the body is not valid UTF-8 JSON ({type(exc).__name__})") from None


def _depth(value: Any) -> int:
    """How deep arrays and objects nest in ``value`` (iterative: a deep document must not exhaust the stack)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > deepest:
            deepest = depth
            if deepest > MAX_DEPTH:
                break
        children = node.values() if type(node) is dict else node if type(node) is list else ()
        stack.extend((child, depth + 1) for child in children if type(child) in (dict, list))
    return deepest if type(value) in (dict, list) else 0


def _strings(value: Any) -> Any:
    """Every string of a document (bounded in depth), keys included."""
    stack = [value]
    while stack:
        node = stack.pop()
        if type(node) is str:
            yield node
        elif type(node) is dict:
            yield from node.keys()
            stack.extend(node.values())
        elif type(node) is list:
            stack.extend(node)


def request_json() -> Any:
    """The current request's body as JSON, read once (MISSING when there is none)."""
    cached = g.get("rpm_body", None)
    if cached is None:
        cached = g.rpm_body = (_read(),)
    return cached[0]


def _read() -> Any:
    has_body = request.content_length or request.headers.get("Transfer-Encoding", "").lower() == "chunked"
    if not has_body:
        return MISSING
    problem = content_type_error(request.headers.get("Content-Type", ""))
    if problem is not None:
        raise UnsupportedMediaType(problem)
    if request.content_length is not None:
        raw = request.get_data(cache=True)  # 413 beyond MAX_CONTENT_LENGTH, before it is read
    else:  # chunked: werkzeug applies no limit to a body it cannot measure first, so read one byte past it
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        chunks, size = [], 0
        while size <= limit and (chunk := request.stream.read(limit + 1 - size)):  # a read may give less
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise RequestEntityTooLarge()
        raw = b"".join(chunks)
    return parse(raw) if raw else MISSING


class BodyParser(FlaskParser):
    """webargs reads JSON bodies through ``request_json``, the one reading of a body."""

    def load_json(self, req: Any, schema: Any) -> Any:
        return request_json()
