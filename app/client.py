"""A Python client of RPM's HTTP API: what a signal engine, an operator's script, `rpm demo` and `rpm ... --url` call.

One `Client` holds one connection pool and one API key. Every call goes through `Client.request`, which does the
authentication, the timeouts, the retries and the mapping of an error answer to an exception, in one place; the
methods above it only name the route and its arguments, and return RPM's JSON as it is (typed where it helps).

Retries. RPM fails closed: a 503 means nothing was decided or changed. A call is tried again, after an exponential
backoff with jitter, bounded in attempts and in each wait, when the answer is 502/503/504 or no answer came (the
connection failed, was dropped or timed out) — but only for a call whose repeat changes nothing: reads, what-if,
and the trade calls. Those carry an ``intent_id`` — the caller's, or one this client makes (uuid4) before the first
attempt — so that every attempt carries the same one, and RPM decides the intent once: a repeat of a decided intent
is answered with the stored decision (``replay: true``), a repeat with another payload is a 409. Every other call
acts again when repeated — a resume retried after its answer was lost would lift a halt placed meanwhile, marks
retried late would post stale prices over fresher ones, a PUT makes another configuration version — so it is tried
again only when it never left this process (no connection could be made); otherwise the error is the caller's to
judge. A 4xx is never retried: it is RPM's answer.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime
from typing import Any, Literal, Required, TypedDict

import httpx

JSON = dict[str, Any]
Regime = Literal["TRENDING", "RANGING", "VOLATILE", "STRESSED"]

RETRIED_STATUSES = frozenset({502, 503, 504})  # RPM's own 503, or a proxy in front of it that had no answer
# failures before a byte of the request was sent: every call may be tried again after them
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# failures that trying again cannot mend (a URL without http://, a request httpx refuses to send)
HOPELESS = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)


# -- the shapes of RPM's answers (SPEC §5; app/services/payloads.py) -----------------------------------------------

class Intent(TypedDict, total=False):
    """A trade intent, as POST /process_trade takes it."""

    symbol: Required[str]
    direction: Required[int]  # 1 long, -1 short
    confidence_score: Required[float]
    regime: Required[Regime]
    atr: Required[float]
    vol_percentile: Required[float]
    current_price: Required[float]
    intent_id: str
    portfolio_id: str
    units: float
    time_in_force_seconds: float
    reduce_only: bool


class ApprovedTrade(TypedDict):
    symbol: str
    direction: int
    position_units: float
    confidence_score: float
    regime: str
    atr: float
    risk_per_trade: float
    current_price: float
    reducing: bool
    expires_at: str | None


class RejectedTrade(TypedDict):
    rejection_reason: str
    reason_code: str
    context: JSON | None


class Decision(TypedDict):
    id: str
    portfolio_id: str
    seq: int
    intent_id: str | None
    status: Literal["APPROVED", "REJECTED"]
    reason: str | None
    message: str
    decided_at: str
    approved_trade: ApprovedTrade | None
    rejected_trade: RejectedTrade | None
    breakdown: JSON
    config_hash: str
    config_version: int
    intent: JSON
    replay: bool  # True: the stored decision of an intent_id decided before


class TradeAnswer(TypedDict):
    decision: Decision
    portfolio_state: JSON
    risk_metrics: JSON


class BatchAnswer(TypedDict):
    decisions: list[Decision]
    portfolio_states: dict[str, JSON]  # each portfolio's, after its last intent of the batch


class WhatIfAnswer(TypedDict):
    decision: JSON  # a decision's fields (nothing stored: no id, no seq), with what_if: true


class WhoAmI(TypedDict):
    name: str
    role: str
    key_id: str
    portfolios: list[str] | None  # None: every portfolio


class DecisionPage(TypedDict):
    decisions: list[JSON]
    count: int
    next_cursor: str | None


# -- errors -------------------------------------------------------------------------------------------------------

class RpmError(Exception):
    """A call that did not succeed: RPM's error answer (`status` is its HTTP status), or no answer (`status` None).

    From the JSON error body (app/api/common.py): `code`, `message`, `errors` (a message per field) and `details`
    (the body's other fields, e.g. the stored `decision_id` of a 409); `request_id` is the X-Request-ID the answer
    carried (the same id RPM logged and stored with the decision)."""

    def __init__(self, message: str, *, status: int | None = None, code: Any = None, errors: Any = None,
                 details: JSON | None = None, request_id: str | None = None, headers: Mapping[str, str] | None = None,
                 method: str | None = None, path: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.errors = errors or {}
        self.details = details or {}
        self.request_id = request_id
        self.headers = dict(headers or {})
        self.method = method
        self.path = path

    def __str__(self) -> str:
        where = f"{self.method} {self.path}: " if self.method else ""
        status = f"{self.status} " if self.status is not None else ""
        errors = ""
        if isinstance(self.errors, dict) and self.errors:
            errors = " (" + "; ".join(f"{k}: {v}" for k, v in self.errors.items()) + ")"
        elif self.errors:
            errors = f" ({self.errors})"
        return f"{where}{status}{self.message}{errors}"


class ConnectionFailed(RpmError):
    """No answer: the server could not be reached, or dropped the connection (after the retries that apply)."""


class TimedOut(ConnectionFailed):
    """No answer within the timeout: connecting, sending, waiting for the answer, or for a pooled connection. For a
    trade call, an intent that timed out may have been decided: the same intent_id again returns its decision."""


class Invalid(RpmError):
    """400 malformed request, 413 body too large, 415 not JSON, 422 invalid fields (see `errors`)."""


class Unauthorized(RpmError):
    """401: no key, or a key RPM does not accept (unknown, revoked, expired)."""


class Forbidden(RpmError):
    """403: the key's role may not call this, or the portfolio is not the key's."""


class NotFound(RpmError):
    """404: an unknown portfolio, decision, group or route."""


class Conflict(RpmError):
    """409: an intent_id used with another payload (`details['decision_id']`), a resume during a cooldown, a fill
    of a decision already filled, a portfolio or group that exists."""


class RateLimited(RpmError):
    """429: too many failed authentications from this address; come back after `retry_after` seconds."""

    @property
    def retry_after(self) -> float | None:
        return _seconds(self.headers.get("retry-after")) or _seconds(self.details.get("retry_after"))


class ServerError(RpmError):
    """A 5xx answer."""


class Unavailable(ServerError):
    """503: the database is unavailable (nothing was decided or changed), after the retries that apply."""


ERRORS: dict[int, type[RpmError]] = {400: Invalid, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
                                     413: Invalid, 415: Invalid, 422: Invalid, 429: RateLimited, 503: Unavailable}


def _seconds(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def error_of(response: httpx.Response, method: str, path: str) -> RpmError:
    """The exception for an error answer: its class by status, its fields from RPM's JSON error body (or, from
    something else in front of RPM, the start of its text)."""
    status = response.status_code
    kind = ERRORS.get(status) or (ServerError if status >= 500 else RpmError)
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = " ".join(response.text.split())[:200]
        body = {"message": text or response.reason_phrase}
    details = {k: v for k, v in body.items() if k not in ("code", "status", "message", "errors")}
    return kind(str(body.get("message") or response.reason_phrase), status=status, code=body.get("code"),
                errors=body.get("errors"), details=details, request_id=response.headers.get("x-request-id"),
                headers=response.headers, method=method, path=path)


def new_intent_id() -> str:
    return str(uuid.uuid4())


# -- the client ---------------------------------------------------------------------------------------------------

class Client:
    """RPM over HTTP, with one API key.

    ``retries`` is how many times a failed call may be tried again (0: never); the n-th wait is a random time
    between half and all of ``backoff`` x 2^n seconds, at most ``max_backoff``. ``connect_timeout`` bounds the
    making of a connection, ``read_timeout`` the wait for each answer (RPM answers a silent database with a 503
    within its own bound: keep this above it). ``transport`` replaces the network (e.g. ``httpx.WSGITransport``:
    an app in this process)."""

    def __init__(self, url: str, key: str | None = None, *, connect_timeout: float = 3.0, read_timeout: float = 30.0,
                 retries: int = 3, backoff: float = 0.2, max_backoff: float = 5.0,
                 transport: httpx.BaseTransport | None = None):
        if transport is None and not url.lower().startswith(("http://", "https://")):
            raise ValueError(f"not an http:// or https:// URL: {url!r}")
        if retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError("retries, backoff and max_backoff cannot be negative")
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._random = random.Random()
        headers = {"User-Agent": f"rpm-client/{_version()}", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            self._http = httpx.Client(base_url=self.url, headers=headers, transport=transport,
                                      timeout=httpx.Timeout(read_timeout, connect=connect_timeout))
        except httpx.InvalidURL as exc:
            raise ValueError(f"not a URL httpx can use: {url!r} ({exc})") from None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- the one request -------------------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
                idempotent: bool | None = None, text: bool = False) -> Any:
        """One call: its JSON answer (its text with ``text``), or an RpmError. ``idempotent`` (default: GET and
        HEAD) says whether a repeat is harmless, so that an answer lost or a 503 may be tried again."""
        method = method.upper()
        if idempotent is None:
            idempotent = method in ("GET", "HEAD")
        query = {k: _param(v) for k, v in (params or {}).items() if v is not None}
        # one id for every attempt: RPM's log lines of the retries of one call share it
        headers = {"X-Request-ID": uuid.uuid4().hex}
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, json=json, params=query, headers=headers)
            except HOPELESS as exc:
                raise ConnectionFailed(str(exc) or type(exc).__name__, method=method, path=path) from None
            except httpx.RequestError as exc:
                if attempt < self.retries and (idempotent or isinstance(exc, NOT_SENT)):
                    self._wait(attempt, None)
                    attempt += 1
                    continue
                kind = TimedOut if isinstance(exc, httpx.TimeoutException) else ConnectionFailed
                raise kind(f"no answer from {self.url} ({_describe(exc)})"
                           + (f" after {attempt + 1} attempts" if attempt else ""),
                           method=method, path=path) from None
            if response.status_code in RETRIED_STATUSES and idempotent and attempt < self.retries:
                self._wait(attempt, _seconds(response.headers.get("retry-after")))
                attempt += 1
                continue
            if response.is_success:
                if text:
                    return response.text
                try:
                    return response.json()
                except ValueError:  # (not RPM: a proxy's page, another service on the port)
                    raise RpmError(f"the answer from {self.url} is not RPM's JSON "
                                   f"({response.headers.get('content-type') or 'no content type'})",
                                   status=response.status_code, method=method, path=path) from None
            raise error_of(response, method, path)

    def _wait(self, attempt: int, retry_after: float | None) -> None:
        ceiling = min(self.max_backoff, self.backoff * 2 ** attempt)
        delay = self._random.uniform(ceiling / 2, ceiling)  # jitter: clients that failed together retry apart
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        time.sleep(delay)

    # -- trading (trader) ------------------------------------------------------------------------------------------
    def process_trade(self, symbol: str, direction: int, confidence_score: float, regime: Regime, atr: float,
                      vol_percentile: float, current_price: float, *, intent_id: str | None = None,
                      portfolio_id: str | None = None, units: float | None = None,
                      time_in_force_seconds: float | None = None, reduce_only: bool | None = None) -> TradeAnswer:
        """Decide one intent: APPROVED with a size, or REJECTED with a reason code (both are answers, not errors).
        Without ``intent_id`` one is made, so that a retry of this call is decided once."""
        intent = _intent(locals())
        intent["intent_id"] = intent_id or new_intent_id()
        return self.request("POST", "/process_trade", json=intent, idempotent=True)

    def process_trades(self, intents: Sequence[Intent], *, portfolio_id: str | None = None) -> BatchAnswer:
        """Decide intents in order, atomically per portfolio (``portfolio_id``: of those that name none). Each intent
        without an intent_id is given one (uuid4), in a copy: the caller's dicts are not changed."""
        batch = [{**intent, "intent_id": intent.get("intent_id") or new_intent_id()} for intent in intents]
        return self.request("POST", "/process_trades", json={"intents": batch}, params={"portfolio_id": portfolio_id},
                            idempotent=True)

    def what_if(self, symbol: str, direction: int, confidence_score: float, regime: Regime, atr: float,
                vol_percentile: float, current_price: float, *, portfolio_id: str | None = None,
                units: float | None = None, time_in_force_seconds: float | None = None,
                reduce_only: bool | None = None) -> WhatIfAnswer:
        """The decision an intent would get now; nothing is stored or changed."""
        return self.request("POST", "/what_if", json=_intent(locals()), idempotent=True)

    def marks(self, prices: Mapping[str, float], *, portfolio_id: str | None = None) -> JSON:
        """The latest prices: the portfolio revalued, every kill switch evaluated (`tripped`)."""
        return self.request("POST", "/marks", json=_body(prices=dict(prices), portfolio_id=portfolio_id))

    def fill(self, decision_id: str, filled_units: float, fill_price: float, *,
             portfolio_id: str | None = None) -> JSON:
        """The execution report of an approved decision (final: its unfilled units are released)."""
        return self.request("POST", "/fills", json=_body(decision_id=decision_id, filled_units=filled_units,
                                                         fill_price=fill_price, portfolio_id=portfolio_id))

    def close_position(self, symbol: str, price: float, *, units: float | None = None,
                       portfolio_id: str | None = None) -> JSON:
        """Close a position (or ``units`` of it) at a price, realising its PnL."""
        return self.request("POST", f"/positions/{_segment(symbol)}/close",
                            json=_body(price=price, units=units, portfolio_id=portfolio_id))

    # -- reading (any role) ----------------------------------------------------------------------------------------
    def portfolio(self, portfolio_id: str | None = None) -> JSON:
        """Positions, exposures, equity, PnL, drawdown."""
        return self.request("GET", "/portfolio", params={"portfolio_id": portfolio_id})

    def equity_curve(self, portfolio_id: str | None = None, since: datetime | None = None) -> JSON:
        return self.request("GET", "/portfolio/equity", params={"portfolio_id": portfolio_id, "since": since})

    def health(self, portfolio_id: str | None = None) -> JSON:
        """Overall health, each kill switch, the trading state, risk metrics, the database's status."""
        return self.request("GET", "/health", params={"portfolio_id": portfolio_id})

    def metrics(self, portfolio_id: str | None = None) -> JSON:
        return self.request("GET", "/metrics", params={"portfolio_id": portfolio_id})

    def live(self) -> JSON:
        return self.request("GET", "/health/live")

    def ready(self) -> JSON:
        """Readiness (no key needed): raises Unavailable when the database is unreachable or not migrated."""
        return self.request("GET", "/health/ready")

    def whoami(self) -> WhoAmI:
        """This client's key: its name, role and portfolios."""
        return self.request("GET", "/whoami")

    def portfolios(self) -> list[JSON]:
        """The portfolios this key may use."""
        return self.request("GET", "/portfolios")["portfolios"]

    def config(self, portfolio_id: str | None = None) -> JSON:
        """The portfolio's configuration (`config`), its `version` and `config_hash`."""
        return self.request("GET", "/config", params={"portfolio_id": portfolio_id})

    def instruments(self, portfolio_id: str | None = None) -> JSON:
        """The portfolio's instrument table (`instruments`), with its configuration's version and hash."""
        return self.request("GET", "/instruments", params={"portfolio_id": portfolio_id})

    # -- operating (admin) -----------------------------------------------------------------------------------------
    def halt(self, reason: str, *, portfolio_id: str | None = None) -> JSON:
        """Manual halt: only reducing trades pass until a manual resume."""
        return self.request("POST", "/halt", json=_body(reason=reason, portfolio_id=portfolio_id))

    def resume(self, *, force: bool = False, reason: str | None = None, portfolio_id: str | None = None) -> JSON:
        """Manual resume; Conflict during an automatic switch's cooldown unless ``force`` with a ``reason``."""
        return self.request("POST", "/resume", json=_body(force=force, reason=reason, portfolio_id=portfolio_id))

    def put_config(self, config: Mapping[str, Any], *, reason: str | None = None,
                   portfolio_id: str | None = None) -> JSON:
        """Replace the configuration (validated): a new version."""
        return self.request("PUT", "/config", json=_body(config=dict(config), reason=reason, portfolio_id=portfolio_id))

    def put_instruments(self, instruments: Mapping[str, Any], *, reason: str | None = None,
                        portfolio_id: str | None = None) -> JSON:
        """Replace the instrument table: a new configuration version."""
        return self.request("PUT", "/instruments", json=_body(instruments=dict(instruments), reason=reason,
                                                             portfolio_id=portfolio_id))

    def create_portfolio(self, portfolio_id: str, *, capital: float | None = None, preset: str | None = None,
                         config: Mapping[str, Any] | None = None) -> JSON:
        return self.request("POST", "/portfolios", json=_body(portfolio_id=portfolio_id, capital=capital,
                                                             preset=preset, config=config))

    def move_capital(self, amount: float, reason: str, *, portfolio_id: str | None = None) -> JSON:
        """A deposit (> 0) or a withdrawal (< 0): equity moves, not as PnL."""
        return self.request("POST", "/capital", json=_body(amount=amount, reason=reason, portfolio_id=portfolio_id))

    def correct_position(self, symbol: str, units: float, reason: str, *, avg_price: float | None = None,
                         portfolio_id: str | None = None) -> JSON:
        """Set a position to the broker's units and average price (no PnL realised)."""
        return self.request("POST", f"/positions/{_segment(symbol)}/correct",
                            json=_body(units=units, avg_price=avg_price, reason=reason, portfolio_id=portfolio_id))

    # -- the firm and its groups -----------------------------------------------------------------------------------
    def firm(self) -> JSON:
        return self.request("GET", "/firm")

    def groups(self) -> JSON:
        """The tree: the firm, its groups, the portfolios under each."""
        return self.request("GET", "/groups")

    def group(self, group_id: str) -> JSON:
        """A group (or `firm`): its aggregate, limits and how much of each is used, switches, portfolios."""
        return self.request("GET", f"/groups/{_segment(group_id)}")

    def create_group(self, group_id: str, *, limits: Mapping[str, float] | None = None,
                     reason: str | None = None) -> JSON:
        return self.request("POST", "/groups", json=_body(group_id=group_id, limits=dict(limits or {}),
                                                         reason=reason))

    def set_group_limits(self, group_id: str, limits: Mapping[str, float], *, reason: str | None = None) -> JSON:
        return self.request("PUT", f"/groups/{_segment(group_id)}/limits", json=_body(limits=dict(limits),
                                                                                      reason=reason))

    def assign_to_group(self, group_id: str, portfolio_id: str, *, reason: str | None = None) -> JSON:
        """Move a portfolio into a group (`firm`: directly under the firm)."""
        return self.request("POST", f"/groups/{_segment(group_id)}/members",
                            json=_body(portfolio_id=portfolio_id, reason=reason))

    def halt_group(self, group_id: str, reason: str) -> JSON:
        return self.request("POST", f"/groups/{_segment(group_id)}/halt", json={"reason": reason})

    def resume_group(self, group_id: str, *, force: bool = False, reason: str | None = None) -> JSON:
        return self.request("POST", f"/groups/{_segment(group_id)}/resume", json=_body(force=force, reason=reason))

    def firm_marks(self, prices: Mapping[str, float]) -> JSON:
        return self.request("POST", "/firm/marks", json={"prices": dict(prices)})

    # -- compliance ------------------------------------------------------------------------------------------------
    def decisions(self, *, portfolio_id: str | None = None, start: datetime | None = None,
                  end: datetime | None = None, symbol: str | None = None, status: str | None = None,
                  reason: str | None = None, config_hash: str | None = None, intent_id: str | None = None,
                  key_id: str | None = None, key_name: str | None = None, limit: int | None = None,
                  cursor: str | None = None, order: Literal["asc", "desc"] | None = None) -> DecisionPage:
        """One page of the decision history (``portfolio_id='*'``: every portfolio the key may see); the next
        page is ``cursor=page['next_cursor']`` (None: the last)."""
        return self.request("GET", "/decisions", params={
            "portfolio_id": portfolio_id, "from": start, "to": end, "symbol": symbol, "status": status,
            "reason": reason, "config_hash": config_hash, "intent_id": intent_id, "key_id": key_id,
            "key_name": key_name, "limit": limit, "cursor": cursor, "order": order})

    def iter_decisions(self, **filters: Any) -> Iterator[JSON]:
        """Every decision the filters (those of `decisions`) select, page after page."""
        cursor = filters.pop("cursor", None)
        while True:
            page = self.decisions(**filters, cursor=cursor)
            yield from page["decisions"]
            cursor = page["next_cursor"]
            if not cursor:
                return

    def decision(self, decision_id: str) -> JSON:
        """One decision: its full breakdown, the state it saw, its configuration, fills, who submitted it."""
        return self.request("GET", f"/decisions/{_segment(decision_id)}")

    def proof(self, decision_id: str) -> JSON:
        """A decision's inclusion proof against a signed checkpoint (`rpm audit check-proof` checks it offline)."""
        return self.request("GET", f"/decisions/{_segment(decision_id)}/proof")

    def audit_events(self, *, portfolio_id: str | None = None, kind: str | None = None, limit: int | None = None,
                     after_seq: int | None = None) -> JSON:
        return self.request("GET", "/audit/events", params={"portfolio_id": portfolio_id, "kind": kind,
                                                            "limit": limit, "after_seq": after_seq})

    def verify_audit(self) -> JSON:
        """Verify every audit chain the key may see: `ok`, and where and what is broken."""
        return self.request("GET", "/audit/verify")

    def eod_report(self, day: date | str, *, fmt: Literal["json", "csv", "html"] = "json") -> Any:
        """The end-of-day report of a trading day: JSON (a dict), or the text of its CSV or HTML."""
        return self.request("GET", "/reports/eod", params={"date": day, "format": fmt}, text=fmt != "json")


# -- helpers ------------------------------------------------------------------------------------------------------

INTENT_FIELDS = tuple(Intent.__annotations__)


def _intent(arguments: Mapping[str, Any]) -> JSON:
    """The intent of a call's arguments (its ``locals()``): the fields given, None ones left out."""
    return {k: arguments[k] for k in INTENT_FIELDS if arguments.get(k) is not None}


def _body(**fields: Any) -> JSON:
    """A JSON body of the fields given (None: absent, so RPM's default applies)."""
    return {k: v for k, v in fields.items() if v is not None}


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _segment(value: str) -> str:
    """A value put in a path, escaped (RPM refuses what its alphabet does not allow: a 422 or 404, not another
    route)."""
    from urllib.parse import quote

    return quote(value, safe="")


def _describe(exc: httpx.RequestError) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rpm")
    except PackageNotFoundError:
        return "dev"


__all__ = [
    "ApprovedTrade", "BatchAnswer", "Client", "Conflict", "ConnectionFailed", "Decision", "DecisionPage", "Forbidden",
    "Intent", "Invalid", "NotFound", "RateLimited", "RejectedTrade", "RpmError", "ServerError", "TimedOut",
    "TradeAnswer", "Unauthorized", "Unavailable", "WhatIfAnswer", "WhoAmI", "new_intent_id",
]
