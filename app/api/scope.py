"""Which portfolios a request acts on: read in one place, checked against the key before anything is read.

Every protected view declares what it acts on (``acts_on``), beside its roles:

- ``ONE``: one portfolio, named by ``portfolio_id`` in the body or the query (both: they must
  agree); absent, ``default``.
- ``ONE_OR_ALL``: the same, or ``*``: every portfolio the key may see (compliance listings).
- ``CHAIN``: a portfolio's audit chain, or ``_system`` (key administration: unlimited keys only).
- ``BATCH``: each intent of ``intents`` names its own; the query's ``portfolio_id`` is the portfolio
  of those that name none, and must agree with those that do.
- ``VISIBLE``: no portfolio named; the answer covers every portfolio the key may see.
- ``NONE``: no portfolio at all (who the key is).
- ``FIRM``: the firm or a group above portfolios: keys not limited to portfolios only (a key limited to some
  could otherwise see, halt or move what is not its own).

``resolve`` gives a ``Scope``: the portfolios the request acts on (each checked against the
key's list: 403 before anything is read) and those it may show. Views read ``current()``, never
the body or the query, for a portfolio id; the fast path calls ``resolve`` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from flask import g

from app.errors import Forbidden, Invalid
from app.risk import domain
from app.store.audit import SYSTEM_CHAIN

DEFAULT = domain.DEFAULT_PORTFOLIO
EVERY = "*"


class Acts(StrEnum):
    """What a route acts on (see the module's docstring)."""

    ONE = "one"
    ONE_OR_ALL = "one_or_all"
    CHAIN = "chain"
    BATCH = "batch"
    VISIBLE = "visible"
    NONE = "none"
    FIRM = "firm"


ONE, ONE_OR_ALL, CHAIN, BATCH, VISIBLE, NONE, FIRM = Acts


def acts_on(kind: Acts | Callable[[Any], Acts]) -> Callable:
    """Declare what a view acts on: one of ``Acts``, or a function of the request giving one."""
    if not callable(kind) and not isinstance(kind, Acts):
        raise ValueError(f"unknown scope kind {kind!r}")

    def mark(view: Callable) -> Callable:
        view.rpm_scope = kind
        return view
    return mark


@dataclass(frozen=True)
class Scope:
    """What one request acts on and may show."""

    kind: Acts
    portfolio: str | None  # ONE, ONE_OR_ALL (None for `*`), CHAIN: the one named (or its default)
    batch: tuple[str | None, ...] = ()  # BATCH: each intent's portfolio (None: an invalid id, refused by the schema)
    visible: tuple[str, ...] | None = None  # the portfolios the key may see (None: all)

    @property
    def portfolios(self) -> tuple[str, ...] | None:
        """The portfolios a listing covers: the one named, or every one the key may see (None: all)."""
        if self.kind in (ONE, ONE_OR_ALL, CHAIN) and self.portfolio is not None:
            return (self.portfolio,)
        return self.visible


def current() -> Scope:
    return g.rpm_scope


def _named(value: Any, field: str, allow: tuple[str, ...] = ()) -> str:
    if value in allow or domain.PORTFOLIO_ID.matches(value):
        return value
    raise Invalid("invalid portfolio_id", {field: [f"must be {domain.PORTFOLIO_ID.description}"]})


def _agreeing(in_body: Any, in_query: Any, allow: tuple[str, ...] = ()) -> str | None:
    body = None if in_body is None else _named(in_body, "portfolio_id", allow)
    query = None if in_query is None else _named(in_query, "portfolio_id", allow)
    if body is not None and query is not None and body != query:
        raise Invalid("portfolio_id differs between body and query",
                      {"portfolio_id": ["body and query name different portfolios"]})
    return body if body is not None else query


def resolve(kind: Acts, body: Any, query: Mapping[str, str], allowed: tuple[str, ...] | None) -> Scope:
    """The scope of a request of ``kind`` from its JSON body and query, checked against ``allowed`` (the key's
    portfolios; None: every one). 422 for a malformed or ambiguous portfolio id, 403 for one the key may not use."""
    in_body = body.get("portfolio_id") if type(body) is dict else None
    in_query = query.get("portfolio_id")
    if kind == BATCH:
        scope = _batch(body, _agreeing(None, in_query), allowed)
    elif kind in (ONE, ONE_OR_ALL, CHAIN):
        extra = (EVERY,) if kind == ONE_OR_ALL else (SYSTEM_CHAIN,) if kind == CHAIN else ()
        named = _agreeing(in_body, in_query, extra) or DEFAULT
        if named == SYSTEM_CHAIN and allowed is not None:
            raise Forbidden("the key-administration chain is for keys not limited to portfolios")
        scope = Scope(kind, None if named == EVERY else named, visible=allowed)
    elif kind == FIRM:
        if allowed is not None:
            raise Forbidden("the firm and its groups are for keys not limited to portfolios")
        scope = Scope(kind, None, visible=None)
    else:
        scope = Scope(kind, None, visible=allowed)
    if allowed is not None:
        for portfolio in scope.batch or (scope.portfolio,):
            # (the system chain is a chain, not a portfolio: refused above to limited keys)
            if portfolio is not None and not (kind == CHAIN and portfolio == SYSTEM_CHAIN) and portfolio not in allowed:
                raise Forbidden(f"this key may not use portfolio {portfolio!r}")
    return scope


def _batch(body: Any, default: str | None, allowed: tuple[str, ...] | None) -> Scope:
    intents = body.get("intents") if type(body) is dict else None
    portfolios: list[str | None] = []
    for index, intent in enumerate(intents if type(intents) is list else ()):
        named = intent.get("portfolio_id") if type(intent) is dict else None
        if named is None:
            portfolios.append(default or DEFAULT)
        elif not domain.PORTFOLIO_ID.matches(named):
            portfolios.append(None)  # the schema refuses the batch for it
        elif default is not None and named != default:
            raise Invalid("portfolio_id differs between an intent and the query",
                          {str(index): {"portfolio_id": ["the intent and the query name different portfolios"]}})
        else:
            portfolios.append(named)
    return Scope(BATCH, None, tuple(portfolios), visible=allowed)
