"""The API reference (docs/api.md), written from the OpenAPI document: `python -m app.api.reference > docs/api.md`.

A test regenerates it and compares, so the reference says what the service serves.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

from .openapi import METHODS

LONG = 2000  # characters: a longer example is shown on one line


def document() -> dict[str, Any]:
    """The OpenAPI document as /openapi.json serves it (no database is reached to build it)."""
    from app import create_app
    from app.settings import Settings

    with tempfile.TemporaryDirectory() as instance:
        app = create_app(Settings(database_url="postgresql+psycopg://rpm@127.0.0.1:1/rpm", instance_path=instance))
        return app.extensions["rpm_api"].spec.to_dict()


def _block(value: Any, media: str) -> str:
    if media == "application/json":
        text = json.dumps(value, indent=2)
        return "```json\n" + (text if len(text) <= LONG else json.dumps(value)) + "\n```"
    return "```\n" + str(value).replace("\r\n", "\n").rstrip("\n") + "\n```"  # (CSV ends its lines in CRLF)


def _parameters(parameters: list[dict[str, Any]]) -> list[str]:
    if not parameters:
        return []
    lines = ["| parameter | in | required | type | example | description |", "|---|---|---|---|---|---|"]
    for p in parameters:
        schema = p.get("schema", {})
        kind = schema.get("type", "") + (f" ({', '.join(map(str, schema['enum']))})" if "enum" in schema else "")
        example = f"`{json.dumps(p['example'])}`" if "example" in p else ""
        lines.append(f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'} | {kind} | {example} | "
                     f"{p.get('description', '').replace('|', '/')} |")
    return [*lines, ""]


def render(doc: dict[str, Any]) -> str:
    out = [f"# {doc['info']['title']}: API reference", "",
           "Generated from the OpenAPI document (`/openapi.json`, browsable at `/docs`) by "
           "`python -m app.api.reference > docs/api.md`; do not edit by hand.", "",
           "Every route but the public ones takes `Authorization: Bearer <key>`; a key's role must be one the route "
           "admits. Every error answers in one JSON shape (the `Error` schema), for example:", "",
           _block(doc["paths"]["/process_trade"]["post"]["responses"]["422"]["content"]["application/json"]["example"],
                  "application/json"), ""]
    for path, item in doc["paths"].items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            roles = ", ".join(operation.get("x-roles", [])) or "none (public)"
            out += [f"## {method.upper()} {path}", "", operation.get("summary", ""), "", f"Roles: {roles}", ""]
            out += _parameters([*item.get("parameters", []), *operation.get("parameters", [])])
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            if "example" in body:
                out += ["Request:", "", _block(body["example"], "application/json"), ""]
            errors = []
            for status, response in operation["responses"].items():
                if not status.startswith("2"):
                    errors.append(status)
                    continue
                for media, content in response.get("content", {}).items():
                    if "example" in content:
                        out += [f"Response {status} ({media}):", "", _block(content["example"], media), ""]
            out += [f"Errors: {', '.join(errors)}", ""]
    return "\n".join(out).rstrip("\n") + "\n"


if __name__ == "__main__":
    print(render(document()), end="")
