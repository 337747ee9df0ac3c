"""The OpenAPI document, completed so a client can be generated from it and /docs can try every operation.

The views declare their schemas; this adds what no decorator states once for all: the error body of every
error answer (one shape, ``ErrorSchema``), the 429 of every authenticated route, and an example of every
parameter, request body and answer (``examples.json``: real answers of the service, one request per
operation; a test replays them and checks they still are). OpenAPI 3.0 has no ``null`` type: a nullable
object is written ``allOf: [$ref]`` with ``nullable``, the form client generators read.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

ERROR_REF = {"$ref": "#/components/schemas/Error"}
TOO_MANY = "Too many failed authentications from this address: refused until `Retry-After` seconds have passed"
METHODS = ("get", "put", "post", "delete", "patch")


@cache
def examples() -> dict[str, Any]:
    """{"errors": {status: body}, "operations": {"METHOD /path": {"path", "query", "body", "responses"}}}."""
    return json.loads((Path(__file__).with_name("examples.json")).read_text(encoding="utf-8"))


def complete(api: Any) -> None:
    spec = api.spec
    for schema in spec.components.schemas.values():
        _nullable_refs(schema)
    known = examples()
    for path, item in spec._paths.items():  # apispec keeps the operations here until to_dict()
        for method, operation in item.items():
            if method not in METHODS:
                continue
            _nullable_refs(operation)
            given = known["operations"].get(f"{method.upper()} {path}", {})
            _error_bodies(operation)
            _parameter_examples(operation.get("parameters", []), given.get("query", {}))
            _parameter_examples(item.get("parameters", []), given.get("path", {}))
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None and "body" in given:
                body["example"] = given["body"]
            for status, response in operation.get("responses", {}).items():
                answers = given.get("responses", {}).get(status, {})
                for media, content in response.get("content", {}).items():
                    if media in answers:
                        content["example"] = answers[media]
                    elif media == "application/json" and status in known["errors"]:
                        content["example"] = known["errors"][status]


def _error_bodies(operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    if operation.get("security"):
        responses.setdefault("429", {"description": TOO_MANY})
    for status, response in responses.items():
        if status.isdigit() and int(status) >= 400 and "content" not in response and "$ref" not in response:
            response["content"] = {"application/json": {"schema": dict(ERROR_REF)}}


def _parameter_examples(parameters: list[dict[str, Any]], values: dict[str, Any]) -> None:
    for parameter in parameters:
        if parameter.get("name") in values:
            parameter["example"] = values[parameter["name"]]


def _nullable_refs(node: Any) -> None:
    """apispec writes a nullable nested schema as ``anyOf: [{type: object, nullable}, {$ref}]``: any object
    would match its first branch. Say instead: this schema, or null."""
    if isinstance(node, dict):
        branches = node.get("anyOf")
        if (isinstance(branches, list) and len(branches) == 2 and {"type": "object", "nullable": True} in branches
                and any("$ref" in b for b in branches)):
            del node["anyOf"]
            node["allOf"] = [next(b for b in branches if "$ref" in b)]
            node["nullable"] = True
        for value in node.values():
            _nullable_refs(value)
    elif isinstance(node, list):
        for value in node:
            _nullable_refs(value)
