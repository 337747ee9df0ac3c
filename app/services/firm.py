"""The firm's view and its controls (SPEC §12): groups, their limits and members, halts and resumes at any level,
firm marks, and the aggregated views. Each is one transaction; what it changes is recorded on the `_system` chain
(a portfolio moved between groups, on its own chain as well).

How decisions are held to the levels' limits is the portfolio transaction's (app/store/transaction.py): it locks
the groups above the portfolios it changes, and reads the books of their other members after the lock.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from app.errors import Conflict, Invalid, NotFound
from app.risk import CooldownActive, OutOfRange, ResumeError, RPMConfig, accounting, domain, firm, kill_switches
from app.risk.model import FIRM, Book, Level, Limits, LimitsError, to_decimal
from app.store import models as m
from app.store.audit import SYSTEM_CHAIN
from app.store.repository import event_values, mark_history_hash
from app.store.transaction import _SELECT_GROUPS, GroupRow, Jsonb, PortfolioTransaction

from .unit_of_work import Actor, UnitOfWork, admin_row, check_portfolio_id

_MARK_HISTORY = RPMConfig().mark_history_size
MAX_FIRM_MARKS = 1000


def parsed_limits(body: Any) -> Limits:
    if not isinstance(body, dict):
        raise Invalid("invalid limits", {"limits": ["must be an object of limits"]})
    try:
        return Limits.from_dict(body)
    except LimitsError as exc:
        raise Invalid("invalid limits", {"limits": {k: [v] for k, v in exc.errors.items()}}) from None


def _admin(actor: Actor, action: str, at: datetime, reason: str | None, before: Any = None,
           after: Any = None) -> tuple[type, dict[str, Any]]:
    """An admin action of no portfolio (the `_system` chain)."""
    return admin_row(actor, portfolio_id=None, action=action, at=at, reason=reason, before=before, after=after)


def _record(tx: PortfolioTransaction, rows: list[tuple[type, dict[str, Any]]], now: datetime) -> None:
    """Seal ``rows`` on the `_system` chain, write the levels' new states, commit."""
    with tx.writing():
        tx.add(tx.system_rows(rows))
        tx.save_groups(now)
        tx.commit()


def _group(tx: PortfolioTransaction, level_id: str, lock: bool = False) -> tuple[dict[str, GroupRow], GroupRow]:
    groups = tx.all_groups(lock=level_id if lock else None)
    if level_id not in groups:
        raise NotFound(f"unknown group {level_id!r}")
    return groups, groups[level_id]


def create_group(uow: UnitOfWork, group_id: str, limits: Any, reason: str | None, actor: Actor) -> dict[str, Any]:
    """A new group under the firm, with its limits (none by default)."""
    check_portfolio_id(group_id)
    if group_id.lower() in (FIRM, SYSTEM_CHAIN):
        raise Invalid("reserved group id", {"group_id": [f"{FIRM} names the firm, {SYSTEM_CHAIN} its chain"]})
    parsed = parsed_limits(limits or {})
    with uow.firm() as tx:
        now = uow.clock()
        made = tx.conn.execute(
            "INSERT INTO groups (id, parent_id, currency, limits, switches, created_at, updated_at) "
            "SELECT %s, 'firm', currency, %s, '{}', %s, %s FROM groups WHERE id = 'firm' "
            "ON CONFLICT (id) DO NOTHING RETURNING id", (group_id, Jsonb(parsed.to_dict()), now, now)).fetchone()
        if made is None:
            raise Conflict(f"group {group_id!r} already exists")
        tx.all_groups()
        _record(tx, [_admin(actor, "group_create", now, reason, after={"group": group_id, "parent": FIRM,
                                                                     "limits": parsed.to_dict()})], now)
    return group_view(uow, group_id)


def set_limits(uow: UnitOfWork, level_id: str, limits: Any, reason: str | None, actor: Actor) -> dict[str, Any]:
    """Replace a group's (or the firm's) limits: they hold for every decision after this one commits."""
    parsed = parsed_limits(limits)
    with uow.firm() as tx:
        _groups, row = _group(tx, level_id, lock=True)
        now = uow.clock()
        before = row.limits.to_dict()
        tx.conn.execute("UPDATE groups SET limits = %s, updated_at = %s WHERE id = %s",
                        (Jsonb(parsed.to_dict()), now, level_id))
        # a switch whose limit is gone no longer holds the level
        events = firm.drop_removed(Level(row.id, row.currency, parsed, row.state, Book(), True), now)
        _record(tx, [_admin(actor, "group_limits", now, reason, before={"group": level_id, "limits": before},
                            after={"group": level_id, "limits": parsed.to_dict()}), *_event_rows(events)], now)
    return group_view(uow, level_id)


def _level(tx: PortfolioTransaction, row: GroupRow) -> tuple[Level, Book]:
    """A level as its own controls see it: the books of every portfolio under it, as committed."""
    books = _books(tx, {row.id: row}, tx.all_portfolios())
    return Level(row.id, row.currency, row.limits, row.state, Book(), True), books.get(row.id, Book())


def halt(uow: UnitOfWork, level_id: str, reason: str, actor: Actor) -> dict[str, Any]:
    """Stop new risk in every portfolio under a group, or under the firm, until a resume (reductions still pass).
    The decisions in flight finish first (they hold the group's lock, or share the firm's); every decision after
    the answer sees the halt."""
    with uow.firm() as tx:
        _groups, row = _group(tx, level_id, lock=True)
        now = uow.clock()
        level = Level(row.id, row.currency, row.limits, row.state, Book(), True)
        try:
            events = firm.halt(level, reason, now)
        except ResumeError as exc:
            raise Invalid(str(exc), {"reason": [str(exc)]}) from None
        _record(tx, [*_event_rows(events), _admin(actor, "halt", now, reason, after={
            "group": level_id, "trading_state": "HALTED"})], now)
    return {"group": level_id, "trading_state": "HALTED", "events": [e.to_dict() for e in events]}


def resume(uow: UnitOfWork, level_id: str, actor: Actor, force: bool = False,
           reason: str | None = None) -> dict[str, Any]:
    """Clear a level's switches (an automatic one in its cooldown only with ``force`` and a reason); its drawdown
    and daily-loss references re-based to its equity now, as a portfolio's (SPEC §4)."""
    with uow.firm() as tx:
        _groups, row = _group(tx, level_id, lock=True)
        now = uow.clock()
        level, book = _level(tx, row)
        try:
            events = firm.resume(level, book, now, force=force, reason=reason)
        except CooldownActive as exc:
            raise Conflict("resume refused: an automatic kill switch is in its cooldown; send force with a reason",
                           {"cooldown": exc.switches}) from None
        except ResumeError as exc:
            raise Invalid(str(exc), {"reason": [str(exc)]}) from None
        row.state = level.state
        _record(tx, [*_event_rows(events), _admin(actor, "resume", now, reason, after={
            "group": level_id, "trading_state": "ACTIVE", "forced": bool(force)})], now)
    return {"group": level_id, "trading_state": "ACTIVE", "events": [e.to_dict() for e in events]}


def _event_rows(events: list[Any]) -> list[tuple[type, dict[str, Any]]]:
    return [(m.SwitchEventRow, event_values(None, e)) for e in events]


def assign(uow: UnitOfWork, portfolio_id: str, group_id: str | None, reason: str | None,
           actor: Actor) -> dict[str, Any]:
    """Move a portfolio into a group (None: directly under the firm). Its new group's limits hold for its next
    decision; what it holds already is not undone."""
    if group_id == FIRM:
        group_id = None
    with uow.portfolio(portfolio_id) as p:  # (the portfolio locked, and the groups it is in)
        if group_id is not None and p.tx.conn.execute("SELECT id FROM groups WHERE id = %s",
                                                       (group_id,)).fetchone() is None:
            raise NotFound(f"unknown group {group_id!r}")
        before = p.row.group_id
        now = uow.clock()
        _move_between(p, group_id)
        p.tx.conn.execute("UPDATE portfolios SET group_id = %s WHERE id = %s", (group_id, portfolio_id))
        p.admin_action(actor, "group", now, reason, before={"group": before or FIRM}, after={"group": group_id or FIRM})
        p.commit(p.state, now)
    return {"portfolio_id": portfolio_id, "group": group_id or FIRM, "previous_group": before or FIRM}


def _move_between(p: Any, group_id: str | None) -> None:
    """A portfolio leaving its groups for ``group_id`` (None: the firm): its equity leaves the levels it is no longer
    under and joins those it comes under, as a flow, not as performance (their drawdown and day's PnL do not
    move). The new group is locked here, after the portfolio's own levels."""
    tx, state, config = p.tx, p.state, p.config
    joining = [] if group_id is None else [group_id]
    for level in state.levels:
        if level.id not in joining and level.id != FIRM and level.held:
            own = firm.book_of(state, config, level.currency)
            firm.move(level, level.others.plus(own).equity, -own.equity)
    tx.take_levels(state)
    for gid in joining:
        if any(level.id == gid for level in state.levels):
            continue
        found = tx.conn.execute(f"{_SELECT_GROUPS} WHERE id = %s FOR NO KEY UPDATE", (gid,)).fetchone()
        row = tx.groups[gid] = GroupRow.of(found, True)
        if row.held:
            members = [pid for (pid,) in tx.conn.execute("SELECT id FROM portfolios WHERE group_id = %s AND id <> %s",
                                                         (gid, p.id))]
            others = firm.total(firm.book_of(s, c, row.currency) for s, c in tx.books_of(members).values())
            level = Level(gid, row.currency, row.limits, row.state, others, True)
            firm.move(level, others.equity, firm.book_of(state, config, row.currency).equity)


def post_marks(uow: UnitOfWork, prices: dict[str, Any], actor: Actor) -> dict[str, Any]:
    """Firm marks: the latest price of each symbol for every portfolio (a portfolio's own mark, when newer, is
    read instead). Recorded on the `_system` chain; a portfolio's switches see them at its next transaction."""
    # (any symbol: which are instruments is each portfolio's configuration's to say)
    errors = {s: ["an FX pair needs two different currencies"] for s in prices
              if domain.FX_PAIR.matches(s) and s[:3] == s[3:]}
    if errors:
        raise Invalid("invalid symbols", {"prices": errors})
    symbols = sorted(prices)
    with uow.firm() as tx:
        now = uow.clock()
        stored = dict(tx.conn.execute("SELECT symbol, history FROM firm_marks WHERE symbol = ANY(%s) ORDER BY symbol "
                                      "FOR UPDATE", (symbols,)).fetchall())
        # every portfolio reads every firm mark: their number is bounded (a portfolio's own marks are not)
        count = tx.conn.execute("SELECT count(*) FROM firm_marks").fetchone()[0]
        if count + len(set(symbols) - set(stored)) > MAX_FIRM_MARKS:
            raise Invalid("too many firm marks", {"prices": [f"the firm marks at most {MAX_FIRM_MARKS:,} symbols; "
                                                             f"{count:,} are marked"]})
        written, hashes = {}, {}
        with tx.writing():
            for symbol in symbols:
                price = to_decimal(prices[symbol])
                history = (tuple(stored.get(symbol) or ()) + (float(price),))[-_MARK_HISTORY:]
                digest = mark_history_hash(symbol, history)
                tx.conn.execute("INSERT INTO mark_snapshots (hash, symbol, prices, created_at) VALUES (%s, %s, %s, %s) "
                                "ON CONFLICT (hash) DO NOTHING", (digest, symbol, Jsonb(list(history)), now))
                tx.conn.execute(
                    "INSERT INTO firm_marks (symbol, price, history, history_hash, updated_at) VALUES (%s, %s, %s, %s, "
                    "%s) ON CONFLICT (symbol) DO UPDATE SET price = excluded.price, history = excluded.history, "
                    "history_hash = excluded.history_hash, updated_at = excluded.updated_at",
                    (symbol, price, Jsonb(list(history)), digest, now))
                written[symbol], hashes[symbol] = str(price), digest
            _within_books(tx)
            events = _settle_switching_levels(tx, now)
            tx.add(tx.system_rows([(m.MarkUpdate, dict(portfolio_id=None, at=now, prices=written,
                                                       history_hashes=hashes)), *_event_rows(events)]))
            tx.save_groups(now)
            tx.commit()
    return {"firm_marks": {s: float(v) for s, v in written.items()}, "at": now.isoformat(),
            "events": [e.to_dict() for e in events]}


def _within_books(tx: PortfolioTransaction) -> None:
    """Firm marks that would take a portfolio's books past what they may hold are refused, as a portfolio's own
    marks are (app/risk/domain.py): 422, nothing written."""
    ids = [pid for (pid,) in tx.conn.execute("SELECT id FROM portfolios ORDER BY id")]
    for pid, (state, config) in tx.books_of(ids).items():
        equity = accounting.equity(state, config)
        if not domain.within_books(equity, state.realised_pnl):
            raise Invalid("marks out of range", {"prices": [f"at these marks, {OutOfRange(equity, state.realised_pnl)} "
                                                            f"(portfolio {pid})"]})


def _settle_switching_levels(tx: PortfolioTransaction, now: datetime) -> list[Any]:
    """After firm marks: the levels with a drawdown or daily-loss limit measured at once (locked, groups before the
    firm, as decisions lock them), on every portfolio's book as committed with the new marks. A portfolio's own
    switches see the marks at its next transaction."""
    found = tx.conn.execute(f"{_SELECT_GROUPS} WHERE limits ?| array['drawdown', 'daily_loss'] "
                            "ORDER BY id = 'firm', id FOR NO KEY UPDATE").fetchall()
    if not found:
        return []
    held = {v[0]: GroupRow.of(v, True) for v in found}
    groups = tx.all_groups()
    groups.update(held)
    tx.groups = groups
    books = _books(tx, held, tx.all_portfolios())
    events: list[Any] = []
    for level_id, row in held.items():
        level = Level(level_id, row.currency, row.limits, row.state, Book(), True)
        events += firm.settle(level, books.get(level_id, Book()), now)
    return events


# -- the views -------------------------------------------------------------------------------------

def _books(tx: PortfolioTransaction, levels: dict[str, GroupRow], states: dict[str, Any]) -> dict[str, Book]:
    """The book of each level of ``levels``: the sum of its portfolios', in its currency."""
    books: dict[str, Book] = {}
    for pid, lk in states.items():
        for level_id in tx.ancestors(pid):
            row = levels.get(level_id)
            if row is not None:
                books[level_id] = books.get(level_id, Book()).plus(
                    firm.book_of(lk.loaded.state, lk.loaded.config, row.currency))
    return books


def _positions(states: dict[str, Any], members: list[str], book: Book) -> list[dict[str, Any]]:
    """Positions by symbol across ``members``, as /portfolio shows a portfolio's: net units and direction, notional
    (the level's currency), and each portfolio's units."""
    out: dict[str, dict[str, Any]] = {}
    for pid in members:
        for symbol, pos in sorted(states[pid].loaded.state.positions.items()):
            entry = out.setdefault(symbol, {"symbol": symbol, "units": Decimal(0), "portfolios": {}})
            entry["units"] += pos.units
            entry["portfolios"][pid] = float(pos.units)
    return [{"symbol": s, "direction": (e["units"] > 0) - (e["units"] < 0), "units": float(e["units"]),
             "notional": float(book.by_symbol.get(s, Decimal(0))), "portfolios": e["portfolios"]}
            for s, e in sorted(out.items())]


def _view(uow: UnitOfWork, level_id: str) -> dict[str, Any]:
    from app.risk import engine

    with uow.firm() as tx:
        groups, row = _group(tx, level_id)
        states = tx.all_portfolios()
        books = _books(tx, groups, states)
        now = uow.clock()
        members = [pid for pid in states if level_id in tx.ancestors(pid)]
        direct = [pid for pid in members if tx.ancestors(pid)[0] == level_id]
        daily = sum((_daily(states[pid].loaded, row.currency) for pid in members), Decimal(0))
        view = firm.level_summary(level_id, row.currency, row.limits, row.state, books.get(level_id, Book()), now,
                                  daily)
        view["positions"] = _positions(states, members, books.get(level_id, Book()))
        view["portfolios"] = [_member(pid, states[pid], engine) for pid in direct]
        view["groups"] = [{"id": gid, **_brief(firm.level_summary(gid, g.currency, g.limits, g.state,
                                                                   books.get(gid, Book()), now))}
                          for gid, g in sorted(groups.items()) if g.parent_id == level_id]
        return view


def _daily(loaded: Any, currency: str) -> Decimal:
    """A portfolio's day's PnL in ``currency`` (0 without a rate)."""
    state, config = loaded.state, loaded.config
    rate = firm.currency_rate(config.account_currency, currency, state.marks) or Decimal(0)
    return kill_switches.daily_pnl(state, accounting.equity(state, config)) * rate


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("equity", "daily_pnl", "drawdown", "trading_state", "open_positions", "limits", "limits_used")
    return {k: summary[k] for k in keys}


def _member(pid: str, lk: Any, engine: Any) -> dict[str, Any]:
    summary = engine.portfolio_summary(lk.loaded.state, lk.loaded.config)
    return {"portfolio_id": pid, **{k: summary[k] for k in ("account_currency", "equity", "daily_pnl", "drawdown",
                                                             "trading_state", "open_positions")}}


def firm_view(uow: UnitOfWork) -> dict[str, Any]:
    """The firm: every portfolio's aggregate, its limits and how much of each is used, its switches; its groups
    and the portfolios directly under it."""
    return _view(uow, FIRM)


def group_view(uow: UnitOfWork, group_id: str) -> dict[str, Any]:
    check_portfolio_id(group_id)
    return _view(uow, group_id)


def tree(uow: UnitOfWork) -> dict[str, Any]:
    """The firm, its groups and their portfolios (the console's tree)."""
    with uow.firm() as tx:
        groups = tx.all_groups()
        portfolios = dict(tx.conn.execute("SELECT id, group_id FROM portfolios ORDER BY id").fetchall())

    def node(gid: str) -> dict[str, Any]:
        g = groups[gid]
        return {"id": gid, "trading_state": "HALTED" if g.state.switches else "ACTIVE", "limits": g.limits.to_dict(),
                "groups": [node(c) for c in sorted(groups) if groups[c].parent_id == gid],
                "portfolios": [pid for pid, owner in portfolios.items() if (owner or FIRM) == gid]}
    return node(FIRM)

