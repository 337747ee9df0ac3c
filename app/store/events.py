"""Risk events: what someone must act on, derived from the records that cause them, in their transaction.

A portfolio transaction (app/store/transaction.py) hands each cause it records to ``Causes``; before the chain's
head is written, ``derive`` turns a chain's causes, in order, into events, which are sealed on the same chain
after them. At COMMIT they are inserted under one advisory lock (``COMMIT_ORDER``), so their ids follow commit
order and each chain's ``seq`` numbers its events from 1 without a gap: a reader that has seen event n has seen
every event before it (the stream's and the webhooks' cursor). An event exists if and only if its cause was
committed.

    switch_tripped / switch_cleared   a switch event (tripped, cleared) of a portfolio, a group or the firm
    halted                            trading stopped: an admin's halt, or the first automatic switch to trip
    resumed                           trading open again: an admin's resume, or the last switch cleared by itself
    config_changed                    a new configuration version, or a group's (the firm's) limits
    instruments_changed               the instrument table replaced
    capital_changed                   a deposit or withdrawal
    position_corrected                a position corrected by an admin
    approval_expired                  an approval's unfilled units released at its expiry
    approval_voided                   an open approval voided by a correction of its position
    audit_failed                      audit verification found a chain or its derived state broken
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from app.risk.kill_switches import MANUAL

from . import models as m
from .audit import SYSTEM_CHAIN, document, json_bytes

# event type -> its log level (trips, halts and failures are warnings; the rest information)
TYPES: dict[str, int] = {
    "switch_tripped": logging.WARNING,
    "switch_cleared": logging.INFO,
    "halted": logging.WARNING,
    "resumed": logging.INFO,
    "config_changed": logging.INFO,
    "instruments_changed": logging.INFO,
    "capital_changed": logging.INFO,
    "position_corrected": logging.WARNING,
    "approval_expired": logging.INFO,
    "approval_voided": logging.INFO,
    "audit_failed": logging.ERROR,
}
# admin actions that are events of their own (halt and resume are `halted` and `resumed`)
_ACTIONS = {"config_change": "config_changed", "group_limits": "config_changed",
            "instruments_change": "instruments_changed", "capital_change": "capital_changed",
            "position_correct": "position_corrected", "audit_verify_failed": "audit_failed"}
# keys of a cause's values that are not columns, so neither stored nor hashed: what a fill of nothing that releases
# an approval is (release_rows); the request that caused a record, for its events' log lines (a transaction can
# carry several requests' decisions: group commit)
RELEASED = "_released"
REQUEST_ID = "_request_id"
# the advisory lock every transaction with events takes just before COMMIT (nothing is locked after it: no deadlock)
COMMIT_ORDER = 0x52504D_4556
LOCK_SQL = f"SELECT pg_advisory_xact_lock({COMMIT_ORDER})"
# the events sealed, numbered per chain after the chain's last (the lock held: no two transactions number at once)
INSERT_SQL = (
    "INSERT INTO risk_events (audit_seq, prev_hash, row_hash, portfolio_id, chain, seq, type, level, at, data) "
    "SELECT r.audit_seq, r.prev_hash, r.row_hash, r.portfolio_id, r.chain, "
    "coalesce((SELECT max(e.seq) FROM risk_events e WHERE e.chain = r.chain), 0) "
    "+ row_number() OVER (PARTITION BY r.chain ORDER BY r.audit_seq), r.type, r.level, r.at, r.data "
    "FROM jsonb_populate_recordset(NULL::risk_events, %s) r ORDER BY r.chain, r.audit_seq "
    "RETURNING id, chain, seq, audit_seq")
log = logging.getLogger("rpm.events")


def is_cause(model: type, values: dict[str, Any]) -> bool:
    if model is m.SwitchEventRow:
        return values["action"] in ("TRIPPED", "CLEARED")
    return (model is m.AdminAction and (values["action"] in _ACTIONS or values["action"] in ("halt", "resume"))) or (
        model is m.Fill and RELEASED in values)


def _level_of(model: type, values: dict[str, Any]) -> str | None:
    """The group (or `firm`) a `_system` record is about; None for a portfolio's."""
    if values.get("portfolio_id") is not None:
        return None
    if model is m.SwitchEventRow:
        return (values.get("detail") or {}).get("level")
    after = values.get("after") or {}
    before = values.get("before") or {}
    return after.get("group") or before.get("group")


def _actor(values: dict[str, Any]) -> dict[str, Any]:
    return {"name": values["actor"], "role": values.get("actor_role"), "key_id": values.get("actor_key_id")}


def derive(causes: list[tuple[type, dict[str, Any]]], tripped: Callable[[str | None], set[str]]) -> list[dict[str, Any]]:
    """The events of one chain's causes, in their order: each a row of ``risk_events`` without its place on the chain.

    ``tripped(level)``: the switches tripped across the whole portfolio (level None) or level before these causes;
    the first automatic one to trip halts it, the last to clear by itself resumes it (a switch cleared by an admin's
    resume, in the same transaction, is that resume's)."""
    out: list[dict[str, Any]] = []
    sets: dict[str | None, set[str]] = {}
    resumed_by_admin = {_level_of(model, v) for model, v in causes
                        if model is m.AdminAction and v["action"] == "resume"}
    for model, values in causes:
        level = _level_of(model, values)

        def event(kind: str, data: dict[str, Any], values: dict[str, Any] = values, level: str | None = level) -> None:
            # (the data as JSON gives it back: what is hashed is what is read)
            portfolio = values.get("portfolio_id")
            out.append(dict(portfolio_id=portfolio, chain=portfolio or SYSTEM_CHAIN, type=kind, level=level,
                            at=values["at"], data=orjson.loads(json_bytes(data)),
                            **{REQUEST_ID: values.get(REQUEST_ID)}))

        if model is m.SwitchEventRow:
            on = sets.setdefault(level, set(tripped(level)))
            data = {k: values.get(k) for k in ("switch", "symbol", "value", "threshold", "cooldown_until", "reason",
                                               "decision_id")}
            whole = values.get("symbol") is None
            if values["action"] == "TRIPPED":
                event("switch_tripped", data)
                if whole:
                    was_open = not on
                    on.add(values["switch"])
                    if was_open and values["switch"] != MANUAL:
                        event("halted", {"by": "switch", "switch": values["switch"], "reason": values.get("reason"),
                                         "actor": None, "decision_id": values.get("decision_id")})
            else:
                event("switch_cleared", data)
                if whole and values["switch"] in on:
                    on.discard(values["switch"])
                    if not on and level not in resumed_by_admin:
                        event("resumed", {"by": "switch", "switch": values["switch"], "reason": values.get("reason"),
                                          "actor": None, "forced": False})
        elif model is m.AdminAction:
            action = values["action"]
            if action == "halt":
                event("halted", {"by": "admin", "switch": MANUAL, "reason": values.get("reason"),
                                 "actor": _actor(values), "decision_id": None})
            elif action == "resume":
                forced = bool((values.get("after") or {}).get("forced"))
                event("resumed", {"by": "admin", "switch": None, "reason": values.get("reason"),
                                  "actor": _actor(values), "forced": forced})
            elif action in _ACTIONS:
                event(_ACTIONS[action], {"actor": _actor(values), "reason": values.get("reason"),
                                         "before": values.get("before"), "after": values.get("after")})
        else:  # an approval released: expired, or voided by a correction of its position
            released = dict(values[RELEASED])
            kind = "approval_voided" if released.pop("voided") else "approval_expired"
            event(kind, {"decision_id": values["decision_id"], **released,
                         "realised_delta": values.get("realised_delta")})
    return out


@dataclass
class Causes:
    """The causes of events a transaction recorded, by chain, in order (until each chain's are derived)."""

    by_chain: dict[str, list[tuple[type, dict[str, Any]]]] = field(default_factory=dict)

    def note(self, rows: Iterable[tuple[type, dict[str, Any]]]) -> None:
        for model, values in rows:
            if is_cause(model, values):
                self.by_chain.setdefault(values.get("portfolio_id") or SYSTEM_CHAIN, []).append((model, values))

    def take(self, chain: str) -> list[tuple[type, dict[str, Any]]]:
        return self.by_chain.pop(chain, [])


# -- reading: what the stream and the webhooks send ------------------------------------------------

# the events of some types (%(types)s, NULL: all) and portfolios (%(ps)s, NULL: all): a `_system` event (a group's,
# the firm's) is one of some portfolios' when it is about a level above one of them; the service's own (no level)
# only of all
WANTED = """(%(types)s::text[] IS NULL OR e.type = ANY(%(types)s::text[]))
  AND (%(ps)s::text[] IS NULL OR e.portfolio_id = ANY(%(ps)s::text[])
       OR (e.portfolio_id IS NULL AND e.level IN (
           WITH RECURSIVE up(id) AS (
               SELECT group_id FROM portfolios WHERE id = ANY(%(ps)s::text[]) AND group_id IS NOT NULL
               UNION SELECT g.parent_id FROM groups g JOIN up ON g.id = up.id WHERE g.parent_id IS NOT NULL)
           SELECT id FROM up UNION SELECT 'firm')))"""
_COLUMNS = "e.id, e.type, e.portfolio_id, e.level, e.seq, e.at, e.data, e.audit_seq, e.row_hash"
_AFTER = f"SELECT {_COLUMNS} FROM risk_events e WHERE e.id > %(after)s AND {WANTED} ORDER BY e.id LIMIT %(n)s"


def newest_id(db: Any) -> int:
    """The id of the last event committed (0: none): where a stream "from now on" starts."""
    with db.connection() as conn:
        return int(conn.execute("SELECT coalesce(max(id), 0) FROM risk_events").fetchone()[0])


def read_after(db: Any, after: int, limit: int, portfolios: Iterable[str] | None) -> list[dict[str, Any]]:
    """The events after id ``after`` of ``portfolios`` (None: all), at most ``limit``, as sent."""
    from psycopg.rows import dict_row

    with db.connection() as conn:
        rows = conn.cursor(row_factory=dict_row).execute(_AFTER, {
            "after": after, "n": limit, "types": None,
            "ps": None if portfolios is None else list(portfolios)}).fetchall()
    return [payload(r) for r in rows]


def payload(row: Any) -> dict[str, Any]:
    """An event as the stream and the webhooks send it (a ``risk_events`` row, or its mapping)."""
    get = row.get if isinstance(row, dict) else lambda k: getattr(row, k)
    at = get("at")
    return {"id": int(get("id")), "type": get("type"), "portfolio_id": get("portfolio_id"), "level": get("level"),
            "seq": int(get("seq")), "at": at.isoformat(timespec="microseconds") if isinstance(at, datetime) else at,
            "data": document(get("data")), "audit_seq": int(get("audit_seq")), "row_hash": get("row_hash")}


def log_committed(events: list[dict[str, Any]], request_id: str | None) -> None:
    """After the commit: one log line per event, at its type's level, with what an operator alerts on."""
    for e in events:
        data = e.get("data") or {}
        actor = data.get("actor") or {}
        log.log(TYPES.get(e["type"], logging.INFO), e["type"], extra={
            "request_id": e.get(REQUEST_ID) or request_id, "portfolio": e.get("portfolio_id"), "level_id": e.get("level"),
            "event_id": e.get("id"), "event_type": e["type"], "switch": data.get("switch"), "symbol": data.get("symbol"),
            "value": _number(data.get("value")), "threshold": _number(data.get("threshold")), "actor": actor.get("name"),
            "reason": data.get("reason"), "forced": data.get("forced")})


def _number(value: Any) -> float | None:
    """A measured value as a number in the log line (the event keeps it as its exact decimal text)."""
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
