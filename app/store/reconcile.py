"""What the hash chain alone cannot see: rows named by a hash a chained row holds, and the state stored on a
portfolio, which is derived from its chain and must agree with it.

- A configuration version's body must hash to its ``config_hash``, and every decision's ``config_hash`` must
  be that of the version it names; the portfolio's ``config_version`` is its last version.
- A mark snapshot's prices must hash to the name decisions and mark updates know it by.
- Positions are the last ledger entry's position per symbol, realised PnL the ledger's sum; marks are the last
  posted price and history of each symbol; the peak equity is the last equity point's; the tripped switches
  (and so the trading state) are what the switch events left tripped; its group is the one its last move put
  it in.
- Above portfolios (the `_system` chain): firm marks are the last posted of each symbol; a group's (and the
  firm's) limits are the last set, its tripped switches what its switch events left tripped.

Each disagreement is a finding: the table, the row, what is wrong. Verification reads, and trusts nothing
it reads but what it recomputes.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.risk.config import body_hash
from app.risk.kill_switches import MANUAL
from app.risk.model import FIRM, iso

from . import models as m
from .audit import SYSTEM_CHAIN, column_unit, to_scale
from .repository import mark_history_hash

_MARK_UNIT = column_unit(m.Mark.__table__.c.price)
_MONEY_UNIT = column_unit(m.Portfolio.__table__.c.realised_pnl)
# the tables chained since 0012, whose older rows have no place on a chain
_LATER_CHAINED = [model.__tablename__ for model in (m.ConfigVersion, m.LedgerEntry, m.Fill, m.EquityPoint)]
# at most this many findings of one kind per portfolio (the first, by sequence number)
_FIRST = 5


@dataclass(frozen=True)
class Finding:
    chain: str
    table: str
    row: dict[str, Any]
    problem: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"chain": self.chain, "table": self.table, "row": self.row, "problem": self.problem,
                "detail": self.detail}


def _rows(session: Session, sql: str, **params: Any) -> list[Any]:
    return session.execute(text(sql), params).all()


def portfolio_findings(session: Session, portfolio_id: str) -> list[Finding]:
    """Every finding of one portfolio: its configuration versions and decisions' references to them, and the
    state stored on it against what its chain says."""
    found: list[Finding] = []

    def finding(table: str, row: dict[str, Any], problem: str, detail: str) -> None:
        found.append(Finding(portfolio_id, table, row, problem, detail))

    p = {"p": portfolio_id}
    portfolio = session.execute(text(
        "SELECT config_version, starting_capital, realised_pnl, peak_equity, trading_state, switches, group_id "
        "FROM portfolios WHERE id = :p"), {"p": portfolio_id}).one()
    # a portfolio made since every record is chained (its first configuration is): no row of it may be unchained
    born_chained = session.execute(text("SELECT audit_seq IS NOT NULL FROM config_versions WHERE portfolio_id = :p "
                                        "AND version = 1"), p).scalar()
    if born_chained:
        for table in _LATER_CHAINED:
            count = session.execute(text(f"SELECT count(*) FROM {table} WHERE portfolio_id = :p AND audit_seq IS NULL"),
                                    p).scalar()
            if count:
                finding(table, {"portfolio_id": portfolio_id}, "unchained",
                        f"{count} row(s) with no place on the chain (every row of this portfolio has one)")

    # configuration versions: each body hashes to its config_hash; the portfolio names the last
    versions = _rows(session, "SELECT version, body, config_hash FROM config_versions WHERE portfolio_id = :p "
                              "ORDER BY version", p=portfolio_id)
    for version, body, stored in versions:
        recomputed = body_hash(body)
        if recomputed != stored:
            finding("config_versions", {"version": version}, "edited",
                    f"configuration version {version}: its body hashes to {recomputed[:16]}..., "
                    f"not to its config_hash {stored[:16]}...")
    last = versions[-1][0] if versions else None
    if last is not None and portfolio.config_version != last:
        finding("portfolios", {"id": portfolio_id}, "differs",
                f"config_version is {portfolio.config_version}; the last configuration version is {last}")
    # the capital: the last capital change's, or the configuration's it was created with
    moved = session.execute(text("SELECT audit_seq, after ->> 'starting_capital' FROM admin_actions WHERE "
                                 "portfolio_id = :p AND action = 'capital_change' ORDER BY audit_seq DESC LIMIT 1"),
                            p).one_or_none()
    if moved is not None:
        capital, said = Decimal(moved[1]), f"the capital change at sequence {moved[0]} says"
    elif versions and "total_capital" in versions[-1][1]:
        capital, said = Decimal(repr(float(versions[-1][1]["total_capital"]))), "its configuration says"
    else:
        capital = None
    if capital is not None and portfolio.starting_capital != capital:
        finding("portfolios", {"id": portfolio_id}, "differs",
                f"starting_capital is {portfolio.starting_capital}; {said} {capital}")

    # decisions name a configuration version and its hash: they must agree with the version stored
    for seq, decision_id, version, recorded, stored in _rows(
            session, "SELECT d.audit_seq, d.id, d.config_version, d.config_hash, c.config_hash FROM decisions d "
                     "LEFT JOIN config_versions c ON c.portfolio_id = d.portfolio_id AND c.version = d.config_version "
                     "WHERE d.portfolio_id = :p AND c.config_hash IS DISTINCT FROM d.config_hash "
                     f"ORDER BY d.audit_seq LIMIT {_FIRST}", p=portfolio_id):
        finding("decisions", {"id": decision_id, "audit_seq": seq}, "unknown configuration",
                f"the decision at sequence {seq} was made under a configuration hashing to {recorded[:16]}..., "
                + (f"which version {version} does not have ({stored[:16]}...)" if stored is not None
                   else f"and version {version} does not exist"))

    # positions: the last ledger entry of each symbol says what is held
    held = {symbol: (units, avg) for symbol, units, avg in _rows(
        session, "SELECT DISTINCT ON (symbol) symbol, position_units, position_avg_price FROM ledger_entries "
                 "WHERE portfolio_id = :p ORDER BY symbol, seq DESC", p=portfolio_id) if units != 0}
    stored_positions = {symbol: (units, avg) for symbol, units, avg in _rows(
        session, "SELECT symbol, units, avg_price FROM positions WHERE portfolio_id = :p", p=portfolio_id)}
    for symbol in sorted(held.keys() | stored_positions.keys()):
        want, have = held.get(symbol), stored_positions.get(symbol)
        if want != have:
            finding("positions", {"portfolio_id": portfolio_id, "symbol": symbol}, "differs",
                    f"{symbol}: stored {_position(have)}; the ledger says {_position(want)}")
    realised, entries = session.execute(text("SELECT coalesce(sum(realised_pnl), 0), count(*) FROM ledger_entries "
                                             "WHERE portfolio_id = :p"), p).one()
    # each entry's realised PnL is stored rounded to the column's scale, the running total once: they may differ
    # by half a unit of the last digit per entry
    if abs(Decimal(realised) - portfolio.realised_pnl) > _MONEY_UNIT * (entries + 1) / 2:
        finding("portfolios", {"id": portfolio_id}, "differs",
                f"realised_pnl is {portfolio.realised_pnl}; the ledger's entries sum to {realised}")

    # marks: the last price and history posted for each symbol
    _mark_findings(session, "marks", "portfolio_id = :p", p, born_chained, {"portfolio_id": portfolio_id}, finding)

    # the group it is in: the one its last move put it in
    moved = session.execute(text("SELECT after ->> 'group' FROM admin_actions WHERE portfolio_id = :p AND "
                                 "action = 'group' ORDER BY audit_seq DESC LIMIT 1"), p).scalar()
    want_group = None if moved in (None, FIRM) else moved
    if portfolio.group_id != want_group:
        finding("portfolios", {"id": portfolio_id}, "differs",
                f"group_id is {portfolio.group_id!r}; its last move put it in {want_group or FIRM!r}")

    # the peak equity: the last equity point's
    point = session.execute(text(
        "SELECT audit_seq, peak_equity FROM equity_points WHERE portfolio_id = :p AND audit_seq IS NOT NULL "
        "AND peak_equity IS NOT NULL ORDER BY audit_seq DESC LIMIT 1"), p).one_or_none()
    if point is not None and point.peak_equity != portfolio.peak_equity:
        finding("portfolios", {"id": portfolio_id}, "differs",
                f"peak_equity is {portfolio.peak_equity}; the last equity point (sequence {point.audit_seq}) "
                f"says {point.peak_equity}")

    # the approvals that expire, kept on the portfolio: each an approved, unfilled decision of its chain that booked
    # what the entry says (an entry made up would be released into the books)
    kept = session.execute(text("SELECT memory -> 'open_approvals' FROM portfolios WHERE id = :p"), p).scalar() or []
    if kept:
        stored = {row.id: row for row in session.execute(text(
            "SELECT d.id, d.status, d.reducing, d.booking, EXISTS (SELECT 1 FROM fills f WHERE f.decision_id = d.id) "
            "AS filled FROM decisions d WHERE d.portfolio_id = :p AND d.id = ANY(:ids)"),
            {"p": portfolio_id, "ids": [a.get("booking", {}).get("decision_id") for a in kept]})}
        for approval in kept:
            booking = approval.get("booking") or {}
            row = stored.get(booking.get("decision_id"))
            if (row is None or row.status != "APPROVED" or row.reducing or row.filled or row.booking is None
                    or Decimal(row.booking["units"]) != Decimal(booking.get("units", "NaN"))
                    or row.booking["symbol"] != booking.get("symbol")):
                finding("portfolios", {"id": portfolio_id}, "differs",
                        f"an open approval of decision {booking.get('decision_id')} is not an approved, unfilled "
                        "decision of this portfolio that booked it")

    # the switches: what the switch events left tripped (when, until when, why), and the trading state
    tripped: dict[tuple[str, str | None], dict[str, Any]] = {}
    for switch, action, symbol, at, until, reason in _rows(
            session, "SELECT switch, action, symbol, at, cooldown_until, reason FROM switch_events "
                     "WHERE portfolio_id = :p ORDER BY audit_seq", p=portfolio_id):
        key = ("symbols", symbol) if symbol is not None else ("portfolio", switch)
        if action == "TRIPPED":
            tripped[key] = {"switch": switch, "tripped_at": iso(at), "cooldown_until": iso(until), "reason": reason,
                            "automatic": switch != MANUAL}
        elif action == "CLEARED":
            tripped.pop(key, None)
    switches = portfolio.switches or {}
    stored = {(kind, k): v for kind in ("portfolio", "symbols") for k, v in (switches.get(kind) or {}).items()}
    if stored.keys() != tripped.keys():
        finding("portfolios", {"id": portfolio_id}, "differs",
                f"switches tripped: stored {_switches(set(stored))}; the switch events leave {_switches(set(tripped))}")
    for key in sorted(stored.keys() & tripped.keys(), key=str):
        differing = [f for f, v in tripped[key].items() if stored[key].get(f) != v]
        if differing:
            finding("portfolios", {"id": portfolio_id}, "differs",
                    f"switch {key[1]}: stored {', '.join(f'{f} {stored[key].get(f)!r}' for f in differing)}; the "
                    f"event that tripped it says {', '.join(f'{f} {tripped[key][f]!r}' for f in differing)}")
    halted = any(kind == "portfolio" for kind, _ in tripped)
    if portfolio.trading_state != ("HALTED" if halted else "ACTIVE"):
        finding("portfolios", {"id": portfolio_id}, "differs",
                f"trading_state is {portfolio.trading_state}; the switch events leave it "
                f"{'HALTED' if halted else 'ACTIVE'}")
    return found


def _mark_findings(session: Session, table: str, owner: str, params: dict[str, Any], born_chained: bool,
                   key: dict[str, Any], finding: Any) -> None:
    """A marks table (a portfolio's ``marks``, or ``firm_marks``) against the last price and history posted for
    each symbol (``mark_updates`` of ``owner``)."""
    posted = {symbol: (to_scale(Decimal(price), _MARK_UNIT), digest) for symbol, price, digest in _rows(
        session, "SELECT DISTINCT ON (e.symbol) e.symbol, e.price, u.history_hashes ->> e.symbol FROM mark_updates u, "
                 f"jsonb_each_text(u.prices) AS e(symbol, price) WHERE u.{owner} "
                 "ORDER BY e.symbol, u.audit_seq DESC", **params)}  # (prices as the marks table stores them)
    where = owner.replace("portfolio_id IS NULL", "TRUE")
    marks = _rows(session, f"SELECT symbol, price, history, history_hash FROM {table} WHERE {where} ORDER BY symbol",
                  **params)
    for symbol in sorted(posted.keys() - {symbol for symbol, *_ in marks}):
        finding(table, {**key, "symbol": symbol}, "differs",
                f"{symbol}: no mark stored; the last price posted is {posted[symbol][0]}")
    for symbol, price, history, digest in marks:
        row = {**key, "symbol": symbol}
        if symbol not in posted:
            if born_chained:
                finding(table, row, "differs", f"{symbol}: a mark of {price} that was never posted")
            continue  # (posted before marks were chained: nothing to derive it from)
        want_price, want_hash = posted[symbol]
        if price != want_price:
            finding(table, row, "differs", f"{symbol}: the mark is {price}; the last price posted is {want_price}")
        if digest != want_hash or mark_history_hash(symbol, history or []) != want_hash:
            finding(table, row, "differs", f"{symbol}: the mark history is not the one last posted")


def firm_findings(session: Session) -> list[Finding]:
    """The state stored above portfolios against what the `_system` chain says: firm marks (the last posted of
    each symbol), each group's and the firm's limits (the last set) and tripped switches (what their events
    leave)."""
    found: list[Finding] = []

    def finding(table: str, row: dict[str, Any], problem: str, detail: str) -> None:
        found.append(Finding(SYSTEM_CHAIN, table, row, problem, detail))

    _mark_findings(session, "firm_marks", "portfolio_id IS NULL", {}, True, {}, finding)
    limits: dict[str, Any] = {}
    for (after,) in _rows(session, "SELECT after FROM admin_actions WHERE portfolio_id IS NULL AND action IN "
                                   "('group_create', 'group_limits') ORDER BY audit_seq"):
        if isinstance(after, dict) and "group" in after:
            limits[after["group"]] = after.get("limits") or {}
    tripped: dict[str, set[str]] = {}
    for level, switch, action in _rows(session, "SELECT detail ->> 'level', switch, action FROM switch_events "
                                                "WHERE portfolio_id IS NULL ORDER BY audit_seq"):
        if action == "TRIPPED":
            tripped.setdefault(level, set()).add(switch)
        elif action == "CLEARED":
            tripped.get(level, set()).discard(switch)
    for gid, stored_limits, switches in _rows(session, "SELECT id, limits, switches FROM groups ORDER BY id"):
        row = {"id": gid}
        if (stored_limits or {}) != limits.get(gid, {}):
            finding("groups", row, "differs", f"limits are {stored_limits}; the last set were {limits.get(gid, {})}")
        if set(switches or {}) != tripped.get(gid, set()):
            finding("groups", row, "differs", f"switches tripped: stored {sorted(switches or {})}; the switch events "
                                              f"leave {sorted(tripped.get(gid, set()))}")
    return found


def snapshot_findings(session: Session) -> list[Finding]:
    """Mark snapshots whose prices do not hash to their name (shared by every portfolio: no chain of one)."""
    found = []
    for digest, symbol, prices in session.execute(text("SELECT hash, symbol, prices FROM mark_snapshots")):
        if mark_history_hash(symbol, prices or []) != digest:
            found.append(Finding("*", "mark_snapshots", {"hash": digest}, "edited",
                                 f"the {symbol} history named {digest[:16]}... does not hash to its name"))
            if len(found) >= _FIRST:
                break
    return found


def _position(value: tuple[Decimal, Decimal | None] | None) -> str:
    return "no position" if value is None else f"{value[0]} units at {value[1]}"


def _switches(keys: set[tuple[str, str | None]]) -> str:
    return ", ".join(f"{k}:{v}" for k, v in sorted(keys, key=str)) or "none"
