"""The end-of-day report a risk officer files (SPEC §12): per portfolio, per group and for the firm, the books at
the day's cut-off, the PnL of the day, how close the day came to each limit, the switches tripped, the decisions
by status and reason, and what admins did.

Built from the append-only records alone (ledger entries, posted marks, decisions, switch events, admin actions,
configuration versions), each taken before the cut-off: the report of a day is the same whenever it is made.

- the trading day is the firm's (SPEC §4 defaults: it starts and is cut off at 00:00 UTC);
- positions at the cut-off are the ledger's (each entry records the position after it); a symbol is valued at
  the newer of the portfolio's own mark and the firm's mark posted before the cut-off, as a decision reads them;
- a portfolio belongs to the group its last move before the cut-off put it in;
- a limit's peak use is the largest share of it the day's decisions found used (each before its own size);
- groups and the firm add up their portfolios in the firm's currency.
"""

from __future__ import annotations

import csv
import html
import io
from collections import defaultdict
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from app.errors import Invalid
from app.risk import RPMConfig, accounting, firm, kill_switches
from app.risk.model import FIRM, Book, PortfolioState, Position
from app.store.audit import Progress, document

from .unit_of_work import UnitOfWork

# the limits a decision's breakdown names, and the use the report keeps of each
_LIMIT_STEPS = ("max_positions", "symbol_units", "symbol_exposure", "currency_exposure", "gross_exposure",
                "net_exposure", "instrument_position_notional")


def day_window(day: date) -> tuple[datetime, datetime]:
    """When the firm's trading day ``day`` starts, and its cut-off (when the next starts); 422 for a day whose
    cut-off no clock can name (the year 9999's last)."""
    try:
        start, end = kill_switches._day_bounds(day.isoformat(), firm.CALENDAR.trading_timezone,
                                               firm.CALENDAR.trading_day_rollover)
        return datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)
    except (OverflowError, ValueError):
        raise Invalid("no such trading day", {"date": [f"{day.isoformat()} has no cut-off"]}) from None


def _rows(session: Any, sql: str, **params: Any) -> list[Any]:
    return session.execute(text(sql), params).all()


def eod(uow: UnitOfWork, day: date, progress: Progress | None = None) -> dict[str, Any]:
    """The report of the firm's trading day ``day``, as JSON values. ``progress(what, done, total)``: the
    portfolios' sections made so far, after each."""
    start, cutoff = day_window(day)
    with uow.history() as session:
        portfolios = [pid for (pid,) in _rows(session, "SELECT id FROM portfolios WHERE created_at < :c ORDER BY id",
                                              c=cutoff)]
        firm_marks = _marks(session, None, cutoff)
        groups = _groups(session, cutoff)
        currencies = {g["currency"] for g in groups.values()}
        sections = {}
        for done, pid in enumerate(portfolios, 1):
            sections[pid] = _portfolio(session, pid, start, cutoff, firm_marks, currencies)
            if progress is not None:
                progress("portfolios", done, len(portfolios))
        level_events = _rows(session, "SELECT detail ->> 'level', switch, action, at, value, threshold, reason "
                                      "FROM switch_events WHERE portfolio_id IS NULL AND at >= :s AND at < :c "
                                      "ORDER BY audit_seq", s=start, c=cutoff)
        system_actions = _rows(session, "SELECT action, actor, actor_role, at, reason, before, after FROM admin_actions "
                                        "WHERE portfolio_id IS NULL AND at >= :s AND at < :c AND action NOT LIKE 'key%' "
                                        "ORDER BY audit_seq", s=start, c=cutoff)
    parents = {gid: g["parent"] for gid, g in groups.items()}

    def ancestors(pid: str) -> list[str]:
        out, node = [], sections[pid]["group"]
        while node is not None and node != FIRM and node not in out:
            out.append(node)
            node = parents.get(node)
        return [*out, FIRM]

    levels: dict[str, dict[str, Any]] = {}
    for gid, g in sorted(groups.items(), key=lambda kv: (kv[0] != FIRM, kv[0])):
        members = [pid for pid in portfolios if gid in ancestors(pid)]
        book = firm.total(sections[pid]["_books"].get(g["currency"], Book()) for pid in members)
        decisions: dict[str, int] = defaultdict(int)
        for pid in members:
            for key, n in sections[pid]["decisions"].items():
                decisions[key] += n
        levels[gid] = {
            "level": "firm" if gid == FIRM else "group",
            "id": gid,
            "currency": g["currency"],
            "portfolios": members,
            "groups": sorted(c for c, p in parents.items() if p == gid),
            "limits": g["limits"],
            "equity": _money(book.equity),
            "starting_capital": _money(book.capital),
            "realised_pnl_day": _money(sum((Decimal(sections[p]["realised_pnl_day"]) * sections[p]["_rate"]
                                            .get(g["currency"], Decimal(0)) for p in members), Decimal(0))),
            "unrealised_pnl": _money(book.unrealised),
            "open_positions": book.positions,
            "exposures": {"gross": _money(book.gross), "net": _money(book.net),
                          "symbol": {k: _money(v) for k, v in sorted(book.by_symbol.items())},
                          "currency": {k: _money(v) for k, v in sorted(book.by_currency.items())}},
            "limits_peak_use": _level_peaks(sections, members, gid),
            "switches_tripped": [_event(e[1:]) for e in level_events if e[0] == gid and e[2] == "TRIPPED"],
            "decisions": dict(sorted(decisions.items())),
            "admin_actions": [_action(a) for a in system_actions if _names_level(a, gid)],
        }
    for section in sections.values():
        for key in ("_books", "_rate"):
            section.pop(key)
    return {"report": "end of day", "trading_day": day.isoformat(), "start": start.isoformat(),
            # a day not over yet: what happened so far, and transactions may still be committing
            "final": uow.clock() >= cutoff,
            "cutoff": cutoff.isoformat(), "calendar": {"timezone": firm.CALENDAR.trading_timezone,
                                                       "rollover": firm.CALENDAR.trading_day_rollover},
            "firm": levels.pop(FIRM), "groups": list(levels.values()),
            "portfolios": [sections[p] for p in portfolios]}


def _names_level(action: Any, gid: str) -> bool:
    return any(isinstance(side, dict) and side.get("group") == gid for side in (action[5], action[6]))


def _money(value: Decimal) -> float:
    return float(round(value, 2))


def _event(e: Any) -> dict[str, Any]:
    switch, action, at, value, threshold, reason = e
    return {"switch": switch, "action": action, "at": at.astimezone(UTC).isoformat(),
            "value": None if value is None else float(value), "threshold": None if threshold is None else float(threshold),
            "reason": reason}


def _action(a: Any) -> dict[str, Any]:
    action, actor, role, at, reason, before, after = a
    return {"action": action, "actor": actor, "role": role, "at": at.astimezone(UTC).isoformat(), "reason": reason,
            "before": before, "after": after}


def _groups(session: Any, cutoff: datetime) -> dict[str, dict[str, Any]]:
    """The groups that existed at the cut-off, with their limits then (from the admin actions that set them)."""
    groups = {gid: {"parent": parent, "currency": currency, "limits": {}}
              for gid, parent, currency in _rows(session, "SELECT id, parent_id, currency FROM groups "
                                                          "WHERE id = 'firm' OR created_at < :c", c=cutoff)}
    for (after,) in _rows(session, "SELECT after FROM admin_actions WHERE portfolio_id IS NULL AND "
                                        "action IN ('group_create', 'group_limits') AND at < :c ORDER BY audit_seq",
                               c=cutoff):
        if after and after.get("group") in groups:
            groups[after["group"]]["limits"] = after.get("limits") or {}
    return groups


def _marks(session: Any, pid: str | None, cutoff: datetime) -> dict[str, tuple[datetime, Decimal]]:
    """The latest price of each symbol posted before the cut-off (by a portfolio, or the firm's: None), and when."""
    owner = "portfolio_id IS NULL" if pid is None else "portfolio_id = :p"
    found = _rows(session, "SELECT DISTINCT ON (k.key) k.key, u.at, k.value FROM mark_updates u, "
                           f"jsonb_each_text(u.prices) AS k WHERE {owner} AND u.at < :c "
                           "ORDER BY k.key, u.at DESC, u.audit_seq DESC", p=pid, c=cutoff)
    return {symbol: (at, Decimal(price)) for symbol, at, price in found}


def _config(session: Any, pid: str, cutoff: datetime) -> RPMConfig:
    body = _rows(session, "SELECT body FROM config_versions WHERE portfolio_id = :p AND created_at < :c "
                          "ORDER BY version DESC LIMIT 1", p=pid, c=cutoff)
    return RPMConfig.from_dict(body[0][0])


def _portfolio(session: Any, pid: str, start: datetime, cutoff: datetime,
               firm_marks: dict[str, tuple[datetime, Decimal]], currencies: set[str]) -> dict[str, Any]:
    config = _config(session, pid, cutoff)
    own = _marks(session, pid, cutoff)
    marks = {s: p for s, (_at, p) in firm_marks.items()}
    marks.update({s: p for s, (at, p) in own.items() if s not in firm_marks or at >= firm_marks[s][0]})
    positions = {}
    for symbol, units, avg, opened in _rows(session, (
            "SELECT DISTINCT ON (symbol) symbol, position_units, position_avg_price, at FROM ledger_entries "
            "WHERE portfolio_id = :p AND at < :c ORDER BY symbol, seq DESC"), p=pid, c=cutoff):
        if units != 0:
            positions[symbol] = Position(symbol, Decimal(units).normalize(), Decimal(avg).normalize(), opened)
    realised_total, realised_day = _rows(session, (
        "SELECT coalesce(sum(realised_pnl), 0), coalesce(sum(realised_pnl) FILTER (WHERE at >= :s), 0) "
        "FROM ledger_entries WHERE portfolio_id = :p AND at < :c"), p=pid, s=start, c=cutoff)[0]
    capital = _capital(session, pid, cutoff)
    state = PortfolioState(pid, capital, realised_pnl=Decimal(realised_total), positions=positions, marks=marks)
    exposures = accounting.exposures(state, config)
    equity = capital + state.realised_pnl + exposures.unrealised
    group = None
    for (after,) in _rows(session, "SELECT after FROM admin_actions WHERE portfolio_id = :p AND action = 'group' "
                                   "AND at < :c ORDER BY audit_seq", p=pid, c=cutoff):
        group = None if after.get("group") in (None, FIRM) else after["group"]
    decisions: dict[str, int] = {}
    peaks: dict[str, dict[str, Any]] = {}
    levels: dict[str, dict[str, dict[str, Any]]] = {}
    for status, reason, breakdown in _rows(session, (
            "SELECT status, reason_code, breakdown FROM decisions WHERE portfolio_id = :p AND decided_at >= :s "
            "AND decided_at < :c ORDER BY seq"), p=pid, s=start, c=cutoff):
        key = status if reason is None else f"{status} {reason}"
        decisions[key] = decisions.get(key, 0) + 1
        steps = document(breakdown) or {}
        _peak(peaks, steps.get("constraints") or ())
        for step in steps.get("levels") or ():
            _peak(levels.setdefault(step.get("level"), {}), (step,))
    books = {c: firm.book_of(state, config, c) for c in currencies}
    rates = {c: firm.currency_rate(config.account_currency, c, marks) or Decimal(0) for c in currencies}
    return {
        "portfolio_id": pid,
        "group": group or FIRM,
        "account_currency": config.account_currency,
        "starting_capital": _money(capital),
        "equity": _money(equity),
        "realised_pnl_day": _money(Decimal(realised_day)),
        "realised_pnl_total": _money(state.realised_pnl),
        "unrealised_pnl": _money(exposures.unrealised),
        "positions": [{"symbol": s, "units": float(p.units), "avg_price": float(p.avg_price),
                       "mark": float(marks.get(s, p.avg_price)), "notional": _money(exposures.by_symbol[s])}
                      for s, p in sorted(positions.items())],
        "exposures": {"gross": _money(exposures.gross), "net": _money(exposures.net)},
        "limits_peak_use": {k: peaks[k] for k in sorted(peaks)},
        "levels_peak_use": levels,
        "switches_tripped": [_event(e) for e in _rows(session, (
            "SELECT switch, action, at, value, threshold, reason FROM switch_events WHERE portfolio_id = :p "
            "AND action = 'TRIPPED' AND at >= :s AND at < :c ORDER BY audit_seq"), p=pid, s=start, c=cutoff)],
        "decisions": dict(sorted(decisions.items())),
        "admin_actions": [_action(a) for a in _rows(session, (
            "SELECT action, actor, actor_role, at, reason, before, after FROM admin_actions WHERE portfolio_id = :p "
            "AND at >= :s AND at < :c ORDER BY audit_seq"), p=pid, s=start, c=cutoff)],
        "_books": books,
        "_rate": rates,
    }


def _capital(session: Any, pid: str, cutoff: datetime) -> Decimal:
    """The starting capital at the cut-off: as made, then as the last capital change before it left it."""
    found = _rows(session, "SELECT action, after FROM admin_actions WHERE portfolio_id = :p AND action IN "
                           "('portfolio_create', 'capital_change') AND at < :c ORDER BY audit_seq DESC LIMIT 1",
                  p=pid, c=cutoff)
    if found:
        action, after = found[0]
        return Decimal(after["starting_capital" if action == "capital_change" else "capital"]).normalize()
    body = _rows(session, "SELECT body FROM config_versions WHERE portfolio_id = :p AND version = 1", p=pid)
    return Decimal(repr(RPMConfig.from_dict(body[0][0]).total_capital))  # (made before the admin action existed)


def _peak(peaks: dict[str, dict[str, Any]], steps: Any) -> None:
    for step in steps:
        name, limit, current = step.get("name"), step.get("limit"), step.get("current")
        if name not in _LIMIT_STEPS or not limit or current is None:
            continue
        key = name if step.get("currency") is None else f"{name} {step['currency']}"
        use = abs(float(current)) / float(limit) * 100
        if key not in peaks or use > peaks[key]["peak_use_pct"]:
            peaks[key] = {"limit": float(limit), "peak": abs(float(current)), "peak_use_pct": round(use, 4)}


def _level_peaks(sections: dict[str, Any], members: list[str], gid: str) -> dict[str, Any]:
    peaks: dict[str, dict[str, Any]] = {}
    for pid in members:
        for key, value in sections[pid]["levels_peak_use"].get(gid, {}).items():
            if key not in peaks or value["peak_use_pct"] > peaks[key]["peak_use_pct"]:
                peaks[key] = value
    return dict(sorted(peaks.items()))


# -- as text, CSV and a printable page ---------------------------------------------------------------

_CSV_COLUMNS = ("level", "id", "group", "equity", "starting_capital", "realised_pnl_day", "unrealised_pnl",
                "open_positions", "gross_exposure", "net_exposure", "switches_tripped", "decisions", "admin_actions")


def _flat(text: Any) -> str:
    """A free text (a reason, an actor) on one line, with no control or direction characters: a reason cannot
    forge a line of the report."""
    return "".join(c if c.isprintable() and c not in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
                   else " " for c in str(text or ""))


def _line(level: str, section: dict[str, Any]) -> dict[str, Any]:
    return {"level": level, "id": section.get("id") or section.get("portfolio_id"), "group": section.get("group", ""),
            "equity": section["equity"], "starting_capital": section["starting_capital"],
            "realised_pnl_day": section["realised_pnl_day"], "unrealised_pnl": section["unrealised_pnl"],
            "open_positions": section.get("open_positions", len(section.get("positions", ()))),
            "gross_exposure": section["exposures"]["gross"], "net_exposure": section["exposures"]["net"],
            "switches_tripped": "; ".join(f"{e['switch']} {e['at']}" for e in section["switches_tripped"]),
            "decisions": "; ".join(f"{k}: {v}" for k, v in section["decisions"].items()),
            "admin_actions": "; ".join(f"{a['action']} by {a['actor']} {a['at']}" for a in section["admin_actions"])}


def as_csv(report: dict[str, Any]) -> str:
    """One line per portfolio, group and the firm."""
    from app.compliance import _csv_value

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    rows = [_line("firm", report["firm"]), *(_line("group", g) for g in report["groups"]),
            *(_line("portfolio", p) for p in report["portfolios"])]
    for row in rows:  # (a cell that a spreadsheet would take for a formula is quoted: compliance's CSV rule)
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return out.getvalue()


def as_html(report: dict[str, Any]) -> str:
    """A page to print and file: the firm, each group, each portfolio, with their positions and the day's events."""
    e = html.escape

    def table(rows: list[list[Any]], head: list[str]) -> str:
        if not rows:
            return "<p class=none>none</p>"
        cells = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
        return "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>" + cells + "</table>"

    def section(title: str, s: dict[str, Any], positions: bool) -> str:
        figures = [["equity", f"{s['equity']:,.2f}"], ["starting capital", f"{s['starting_capital']:,.2f}"],
                   ["realised PnL (day)", f"{s['realised_pnl_day']:,.2f}"],
                   ["unrealised PnL", f"{s['unrealised_pnl']:,.2f}"],
                   ["gross exposure", f"{s['exposures']['gross']:,.2f}"], ["net exposure", f"{s['exposures']['net']:,.2f}"]]
        parts = [f"<section><h2>{e(title)}</h2>", table(figures, ["", ""])]
        if positions:
            parts += ["<h3>Positions at the cut-off</h3>", table([[p["symbol"], f"{p['units']:,.2f}", p["avg_price"],
                                                                    p["mark"], f"{p['notional']:,.2f}"]
                                                                   for p in s["positions"]],
                                                                  ["symbol", "units", "avg price", "mark", "notional"])]
        peaks = s.get("limits_peak_use") or {}
        parts += ["<h3>Limits: peak use</h3>", table([[k, f"{v['peak']:,.2f}", f"{v['limit']:,.2f}",
                                                        f"{v['peak_use_pct']:.1f}%"] for k, v in peaks.items()],
                                                       ["limit", "peak", "limit", "use"])]
        parts += ["<h3>Switches tripped</h3>", table([[x["switch"], x["at"], x["reason"]] for x in s["switches_tripped"]],
                                                     ["switch", "at", "reason"])]
        parts += ["<h3>Decisions</h3>", table([[k, v] for k, v in s["decisions"].items()], ["status, reason", "count"])]
        parts += ["<h3>Admin actions</h3>", table([[a["action"], a["actor"], a["at"], a["reason"] or ""]
                                                   for a in s["admin_actions"]], ["action", "who", "at", "why"])]
        return "".join(parts) + "</section>"

    body = [section("Firm", report["firm"], False)]
    body += [section(f"Group {g['id']}", g, False) for g in report["groups"]]
    body += [section(f"Portfolio {p['portfolio_id']} ({p['group']})", p, True) for p in report["portfolios"]]
    return ("<!doctype html><html lang=en><head><meta charset=utf-8><title>RPM end-of-day report "
            f"{e(report['trading_day'])}</title><style>body{{font:13px system-ui,sans-serif;margin:2em}}"
            "table{border-collapse:collapse;margin:.3em 0 1em}td,th{border:1px solid #bbb;padding:2px 8px;"
            "text-align:left}section{page-break-inside:avoid;margin-bottom:2em}.none{color:#777}</style></head><body>"
            f"<h1>End-of-day report, trading day {e(report['trading_day'])}</h1>"
            f"<p>From {e(report['start'])} to the cut-off {e(report['cutoff'])} "
            f"({e(report['calendar']['timezone'])}, rollover {e(report['calendar']['rollover'])}). "
            "Built from the audit trail's records before the cut-off: the same whenever it is made.</p>"
            + "".join(body) + "</body></html>")


def as_text(report: dict[str, Any]) -> str:
    """The report for a terminal: a line per level and portfolio, then what happened."""
    lines = [f"End-of-day report, trading day {report['trading_day']} (cut-off {report['cutoff']})"
             + ("" if report["final"] else ": PROVISIONAL, the day is not over"), ""]
    head = f"{'':10} {'id':16} {'equity':>16} {'realised (day)':>15} {'unrealised':>12} {'gross':>14} {'positions':>9}"
    lines.append(head)
    rows = [("firm", report["firm"])] + [("group", g) for g in report["groups"]] + \
           [("portfolio", p) for p in report["portfolios"]]
    for level, s in rows:
        ident = s.get("id") or s.get("portfolio_id")
        count = s.get("open_positions", len(s.get("positions", ())))
        lines.append(f"{level:10} {ident:16} {s['equity']:>16,.2f} {s['realised_pnl_day']:>15,.2f} "
                     f"{s['unrealised_pnl']:>12,.2f} {s['exposures']['gross']:>14,.2f} {count:>9}")
    for level, s in rows:
        ident = s.get("id") or s.get("portfolio_id")
        notes = ["  decisions: " + ", ".join(f"{k} {v}" for k, v in s["decisions"].items())] if s["decisions"] else []
        notes += [f"  limit {k}: peak {v['peak']:,.2f} of {v['limit']:,.2f} ({v['peak_use_pct']:.1f}%)"
                  for k, v in (s.get("limits_peak_use") or {}).items()]
        notes += [f"  tripped {e['switch']} at {e['at']}: {_flat(e['reason'])}" for e in s["switches_tripped"]]
        notes += [f"  {a['action']} by {_flat(a['actor'])} at {a['at']}" + (f": {_flat(a['reason'])}" if a["reason"]
                                                                             else "")
                  for a in s["admin_actions"]]
        if notes:
            lines += ["", f"{level} {ident}", *notes]
    return "\n".join(lines) + "\n"
