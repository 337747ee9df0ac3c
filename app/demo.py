"""`rpm demo`: the nine scenarios of the original design, instruments beyond FX spot and the firm above portfolios (a
group of its own: the demo never halts or marks the whole firm), run through the HTTP API with the client of
app/client.py: of a live RPM (a URL and keys), or of an embedded one on a throw-away database (the same client,
through a WSGI transport). Each scenario has its own portfolio."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .client import Client, RpmError

SEED = dict(symbol="EURUSD", direction=1, confidence_score=0.75, regime="TRENDING", atr=0.0010,
            vol_percentile=0.50, current_price=1.1000)


class HttpRPM:
    """A live RPM over HTTP: a client (app/client.py) per role."""

    def __init__(self, url: str, keys: dict[str, str]):
        self.clients = {role: Client(url, key) for role, key in keys.items()}
        self.where = url.rstrip("/")

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


class EmbeddedRPM:
    """An RPM in this process, called by the same client through a WSGI transport: on a throw-away embedded
    PostgreSQL (its instance folder kept with ``keep``), or on the database given."""

    def __init__(self, database_url: str | None = None, keep: bool = False):
        import httpx

        from app import create_app
        from app.services import Actor
        from app.settings import Settings, embedded_data
        from app.store.embedded import EmbeddedPostgres
        from app.store.migrate import upgrade

        self.tmp = None if keep else tempfile.TemporaryDirectory(prefix="rpm-demo-")
        folder = Path(self.tmp.name if self.tmp else tempfile.mkdtemp(prefix="rpm-demo-"))
        settings = Settings(database_url=database_url, instance_path=str(folder))
        self.embedded = None if database_url else EmbeddedPostgres(embedded_data(str(folder)))
        url = settings.resolved_database_url(str(folder))
        upgrade(url)
        self.app = create_app(settings)
        self.app.extensions["rpm"].uow.ensure_default()
        store = self.app.extensions["rpm_keys"]
        demo = Actor("rpm-demo", "admin")
        transport = httpx.WSGITransport(app=self.app)
        self.clients = {role: Client("http://rpm.embedded", store.create(role, f"demo-{role}", None, demo)[0],
                                     transport=transport) for role in ("trader", "admin")}
        self.where = (f"embedded RPM on {url}" if self.embedded is None else
                      f"embedded RPM on an embedded PostgreSQL in {folder} (RPM_INSTANCE_PATH={folder})")

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.app.extensions["rpm"].db.dispose()
        if self.embedded is not None:
            self.embedded.stop()
        if self.tmp is not None:
            self.tmp.cleanup()


class Demo:
    def __init__(self, rpm: HttpRPM | EmbeddedRPM, echo: Callable[[str], None] = print):
        self.rpm = rpm
        self.trader, self.admin = rpm.clients["trader"], rpm.clients["admin"]
        self.echo = echo
        self.run_id = uuid.uuid4().hex[:6]

    # -- helpers ---------------------------------------------------------------------
    def portfolio(self, n: int, config: dict[str, Any] | None = None, capital: float = 100000.0) -> str:
        pid = f"demo{n}-{self.run_id}"
        full = {**self.admin.config()["config"], **config} if config else None
        self.admin.create_portfolio(pid, capital=capital, config=full)
        return pid

    def trade(self, pid: str, **changes: Any) -> dict[str, Any]:
        return self.trader.process_trade(**{**SEED, **changes}, portfolio_id=pid)["decision"]

    def what_if(self, pid: str, **changes: Any) -> dict[str, Any]:
        return self.trader.what_if(**{**SEED, **changes}, portfolio_id=pid)["decision"]

    def health(self, pid: str) -> dict[str, Any]:
        return self.trader.health(pid)

    def title(self, n: int, text: str) -> None:
        self.echo("")
        self.echo("=" * 78)
        self.echo(f" SCENARIO {n}: {text}")
        self.echo("=" * 78)

    def show(self, d: dict[str, Any], label: str = "") -> None:
        prefix = f"  {label:<28}" if label else "  "
        if d["status"] == "APPROVED":
            self.echo(f"{prefix}APPROVED  {d['approved_trade']['position_units']:>12,.2f} units")
        else:
            self.echo(f"{prefix}REJECTED  {d['rejected_trade']['reason_code']}: {d['rejected_trade']['rejection_reason']}")

    # -- the scenarios ---------------------------------------------------------------
    def run(self) -> None:
        for client in (self.trader, self.admin):  # a server down or a key refused: said before anything is shown
            client.whoami()
        self.echo(f"RPM demo against {self.rpm.where}")
        for scenario in (self.normal_approval, self.confidence_sizing, self.regime_sizing, self.max_drawdown,
                         self.daily_loss, self.confidence_collapse, self.symbol_exposure, self.manual_halt,
                         self.health_status, self.instruments, self.partial_reduction, self.capital_change,
                         self.correction, self.expiry, self.group_limit, self.group_halt_and_report):
            scenario()
        self.echo("")
        self.echo("Demo complete: every decision above is stored, with its breakdown, in the audit trail.")

    def normal_approval(self) -> None:
        self.title(1, "normal trade approval (clean conditions)")
        pid = self.portfolio(1)
        self.echo("  EURUSD long, confidence 0.75, TRENDING, ATR 0.0010, vol pct 0.50, price 1.1000, 100,000 USD")
        d = self.trade(pid)
        self.show(d)
        s = d["breakdown"]["sizing"]
        self.echo(f"  sizing: risk capital {s['risk_capital']:,.2f}; base {s['base_units']:,.2f} units "
                  f"x {s['confidence_mult']} x {s['regime_mult']} x {s['vol_mult']} = {s['units']:,.2f}")
        for c in d["breakdown"]["constraints"]:
            if c["result"] == "ADJUSTED":
                self.echo(f"  constraint {c['name']}: {c['before']:,.2f} -> {c['after']:,.2f} units "
                          f"(limit {c['limit']:,.2f})")

    def confidence_sizing(self) -> None:
        self.title(2, "confidence-based position sizing (0.50 - 0.95)")
        pid = self.portfolio(2)
        self.echo("  what-if, EURUSD TRENDING, ATR 0.0500 (small enough that no limit binds)")
        for confidence in (0.50, 0.55, 0.60, 0.70, 0.80, 0.95):
            d = self.what_if(pid, confidence_score=confidence, atr=0.05)
            self.show(d, f"confidence {confidence:.2f} (x{0.5 + confidence:.2f})")

    def regime_sizing(self) -> None:
        self.title(3, "regime-based adjustments")
        pid = self.portfolio(3)
        self.echo("  what-if, EURUSD confidence 0.75, ATR 0.0500")
        for regime, mult in (("TRENDING", 1.2), ("RANGING", 1.0), ("VOLATILE", 0.7), ("STRESSED", 0.3)):
            self.show(self.what_if(pid, regime=regime, atr=0.05), f"{regime} (x{mult})")

    def max_drawdown(self) -> None:
        self.title(4, "maximum drawdown kill switch (15% > 10% limit), driven by marks")
        pid = self.portfolio(4, {"max_symbol_exposure_pct": 2.5, "max_currency_exposure_pct": 2.5,
                                 "max_gross_exposure_pct": 3.0, "max_net_exposure_pct": 3.0})
        self.show(self.trade(pid), "open EURUSD at 1.1000")
        marked = self.trader.marks({"EURUSD": 1.0250}, portfolio_id=pid)
        p = marked["portfolio_state"]
        self.echo(f"  mark EURUSD 1.0250: equity {p['equity']:,.2f}, drawdown {p['drawdown_pct']:.2f}%")
        self.echo(f"  switches tripped: {', '.join(marked['tripped'])}")
        self.show(self.trade(pid, symbol="GBPUSD", current_price=1.25), "new GBPUSD long")
        self.show(self.trade(pid, direction=-1, current_price=1.0250), "close EURUSD (reduce-only)")
        dd = self.health(pid)["kill_switches"]["drawdown"]
        self.echo(f"  drawdown switch: {dd['state']}, {dd['current_pct']:.2f}% against {dd['threshold_pct']:.0f}%")

    def daily_loss(self) -> None:
        self.title(5, "daily loss limit kill switch (-2,500 < -2,000 limit), driven by a losing close")
        pid = self.portfolio(5)
        d = self.trade(pid)
        self.show(d, "open EURUSD at 1.1000")
        price = round(1.1 - 2500 / d["approved_trade"]["position_units"], 8)
        closed = self.trader.close_position("EURUSD", price, portfolio_id=pid)
        self.echo(f"  close at {price}: realised {closed['realised_pnl']:,.2f}, daily PnL "
                  f"{closed['portfolio_state']['daily_pnl']:,.2f}")
        self.echo(f"  switches tripped: {', '.join(e['switch'] for e in closed['events'] if e['action'] == 'TRIPPED')}")
        self.show(self.trade(pid, symbol="GBPUSD", current_price=1.25), "new GBPUSD long")

    def confidence_collapse(self) -> None:
        self.title(6, "model confidence collapse (mean 0.45 < 0.60 over 20 intents)")
        pid = self.portfolio(6)
        outcomes: dict[str, int] = {}
        last = None
        for _ in range(20):
            last = self.trade(pid, confidence_score=0.45)
            outcomes[last["reason"]] = outcomes.get(last["reason"], 0) + 1
        self.echo(f"  20 intents at confidence 0.45: {outcomes}")
        self.show(last, "the 20th")
        self.show(self.trade(pid, confidence_score=0.95), "then one at 0.95")
        cc = self.health(pid)["kill_switches"]["confidence_collapse"]
        self.echo(f"  confidence_collapse switch: {cc['state']}, mean {cc['current']:.2f} against {cc['threshold']}")

    def symbol_exposure(self) -> None:
        self.title(7, "symbol exposure limit (existing + new position)")
        pid = self.portfolio(7)
        self.echo("  EURUSD, ATR 0.0500: 20,000 units = 22,000 USD each; the limit is 30% of equity = 30,000 USD")
        self.show(self.trade(pid, atr=0.05), "first")
        d = self.trade(pid, atr=0.05)
        self.show(d, "second (adjusted)")
        step = next(c for c in d["breakdown"]["constraints"] if c["name"] == "symbol_exposure")
        self.echo(f"  symbol_exposure: {step['current']:,.2f} held of {step['limit']:,.2f}; "
                  f"{step['before']:,.2f} -> {step['after']:,.2f} units")
        self.show(self.trade(pid, atr=0.05), "third")

    def manual_halt(self) -> None:
        self.title(8, "manual halt & resume (emergency stop)")
        pid = self.portfolio(8)
        halted = self.admin.halt("emergency drill", portfolio_id=pid)
        self.echo(f"  halt: {halted['trading_state']} ({', '.join(halted['tripped_switches'])})")
        self.show(self.trade(pid), "intent while halted")
        resumed = self.admin.resume(portfolio_id=pid)
        self.echo(f"  resume: {resumed['trading_state']}")
        self.show(self.trade(pid), "intent after resume")

    def health_status(self) -> None:
        self.title(9, "health status monitoring (the portfolio of scenario 4)")
        h = self.health(f"demo4-{self.run_id}")
        p = h["portfolio_state"]
        m = h["risk_metrics"]
        self.echo(f"  health {h['health']}, trading state {h['trading_state']}, database {h['database']['status']}")
        self.echo(f"  equity {p['equity']:,.2f}, peak {p['peak_equity']:,.2f}, drawdown {p['drawdown_pct']:.2f}%, "
                  f"daily PnL {p['daily_pnl']:,.2f}, weekly PnL {p['weekly_pnl']:,.2f}")
        self.echo(f"  decisions {m['total_decisions']}, approved {m['trades_approved']}, "
                  f"approval rate {m['approval_rate']:.0%}, rejections {m['rejections_by_category']}")
        for name, sw in h["kill_switches"].items():
            if "current" in sw:
                current = "-" if sw["current"] is None else f"{sw['current']:,.4f}"
                self.echo(f"  {name:<20} {sw['state']:<8} current {current:>12}  threshold {sw['threshold']:,.4f}")
            else:
                self.echo(f"  {name:<20} {sw['state']}")

    def instruments(self) -> None:
        self.title(10, "instruments beyond FX spot: an equity, a future, a crypto pair (config/instruments)")
        pid = self.portfolio(10, capital=10_000_000.0)
        self.echo("  a 10,000,000 USD portfolio; risk 1% = 100,000, x1.25 (confidence 0.75) x1.2 (TRENDING)")
        cases = [
            ("AAPL at 190.00, ATR 2.00", dict(symbol="AAPL", current_price=190.0, atr=2.0), "shares (lot 1)"),
            ("ES at 5,000.00, ATR 20.00", dict(symbol="ES", current_price=5000.0, atr=20.0),
             "contracts (x50: 250,000 USD each)"),
            ("BTCUSD at 60,000.00, ATR 6,000", dict(symbol="BTCUSD", current_price=60000.0, atr=6000.0),
             "BTC (lot 1e-8)"),
            ("ES at 5,000.10 (tick 0.25)", dict(symbol="ES", current_price=5000.1, atr=20.0), ""),
        ]
        for label, intent, unit in cases:
            d = self.trade(pid, **intent)
            if d["status"] == "APPROVED":
                units = f"{d['approved_trade']['position_units']:,.8f}".rstrip("0").rstrip(".")
                adjusted = [c["name"] for c in d["breakdown"]["constraints"] if c["result"] == "ADJUSTED"]
                self.echo(f"  {label:<32}APPROVED  {units:>14} {unit}"
                          + (f", capped by {', '.join(adjusted)}" if adjusted else ""))
            else:
                self.echo(f"  {label:<32}REJECTED  {d['rejected_trade']['reason_code']}: "
                          f"{d['rejected_trade']['rejection_reason']}")

    def partial_reduction(self) -> None:
        self.title(11, "a partial reduction (units), then a partial close")
        pid = self.portfolio(11)
        self.show(self.trade(pid), "open EURUSD at 1.1000")
        d = self.trade(pid, direction=-1, current_price=1.12, units=10000, reduce_only=True)
        self.show(d, "sell 10,000 at 1.1200")
        self.echo(f"  {d['message']}")
        closed = self.trader.close_position("EURUSD", 1.11, units=7272.72, portfolio_id=pid)
        left = closed["portfolio_state"]["positions"][0]["units"]
        self.echo(f"  close 7,272.72 at 1.1100: realised {closed['realised_pnl']:,.2f}; {left:,.2f} units left")
        d = self.trade(pid, direction=-1, current_price=1.1, units=50000)
        self.show(d, "sell 50,000 (> held)")
        self.echo(f"  {d['message']}")

    def capital_change(self) -> None:
        self.title(12, "capital that moves: a deposit and a withdrawal are not PnL")
        pid = self.portfolio(12)
        self.trade(pid)
        self.trader.marks({"EURUSD": 1.09}, portfolio_id=pid)
        for amount, reason in ((50000, "new money"), (-60000, "redemption")):
            out = self.admin.move_capital(amount, reason, portfolio_id=pid)
            p = out["portfolio_state"]
            kind = "deposit" if amount > 0 else "withdraw"
            self.echo(f"  {kind:<8} {abs(amount):>7,}: capital {p['starting_capital']:>11,.2f}, "
                      f"equity {p['equity']:>11,.2f}, daily PnL {p['daily_pnl']:>8,.2f}, trading {p['trading_state']}")

    def correction(self) -> None:
        self.title(13, "a position corrected to the broker's")
        pid = self.portfolio(13)
        self.trade(pid)
        out = self.admin.correct_position("EURUSD", 25000, "broker statement", avg_price=1.1005, portfolio_id=pid)
        before, after = out["before"], out["after"]
        self.echo(f"  EURUSD {float(before['units']):,.2f} at {float(before['avg_price'])} -> "
                  f"{float(after['units']):,.2f} at {float(after['avg_price'])} ({out['difference_units']:+,.2f} "
                  "units, on the ledger and the audit chain, no PnL realised)")

    def group_limit(self) -> None:
        self.title(15, "two desks, one group limit that binds (gross exposure 50,000 USD)")
        group, a, b = _group_demo(self)
        for pid in (a, b):
            self.trader.marks({"EURUSD": 1.1, "GBPUSD": 1.25}, portfolio_id=pid)
        self.show(self.trade(a), "desk A: EURUSD long")
        d = self.trade(b, symbol="GBPUSD", current_price=1.25)
        self.show(d, "desk B: GBPUSD long")
        for step in d["breakdown"].get("levels", []):
            if step["result"] == "ADJUSTED":
                self.echo(f"  group {step['level']} {step['name']}: {step['before']:,.2f} -> {step['after']:,.2f} "
                          f"units ({step['current']:,.2f} of {step['limit']:,.2f} used by the group)")
        self.show(self.trade(b, symbol="USDJPY", current_price=150.0, atr=0.15), "desk B: USDJPY long")
        view = self.trader.group(group)
        used = view["limits_used"]["gross_exposure"]
        self.echo(f"  group {group}: {view['open_positions']} positions, gross {view['exposures']['gross']:,.2f} "
                  f"({used['used_pct']:.2f}% of {used['limit']:,.0f})")

    def group_halt_and_report(self) -> None:
        self.title(16, "a group halted; the end-of-day report")
        group, a, b = _group_demo(self)
        self.trader.marks({"EURUSD": 1.105}, portfolio_id=a)
        self.admin.halt_group(group, "demo: desk review")
        self.show(self.trade(a), "desk A: more EURUSD")
        self.show(self.trade(b, symbol="GBPUSD", direction=-1, current_price=1.245), "desk B: sells its GBPUSD")
        self.admin.resume_group(group)
        from datetime import UTC, datetime

        day = datetime.now(UTC).date().isoformat()  # (the firm's trading day: 00:00 to 00:00 UTC)
        try:
            report = self.admin.eod_report(day)
        except RpmError as exc:
            self.echo(f"  (no report: {exc.status} {exc.message})")
            return
        g = next(x for x in report["groups"] if x["id"] == group)
        self.echo(f"  end-of-day report {report['trading_day']}, group {group}: equity {g['equity']:,.2f}, "
                  f"realised {g['realised_pnl_day']:,.2f}, unrealised {g['unrealised_pnl']:,.2f}")
        self.echo(f"  decisions {g['decisions']}; switches tripped "
                  f"{[(x['switch'], x['reason']) for x in g['switches_tripped']]}")

    def expiry(self) -> None:
        import time

        self.title(14, "an approval that expires unfilled (time in force 1 s)")
        pid = self.portfolio(14, {"approval_ttl_seconds": 60})
        d = self.trade(pid, time_in_force_seconds=1)
        self.show(d, "open EURUSD, 1 s to fill")
        self.echo(f"  expires at {d['approved_trade']['expires_at']}")
        before = self.trader.portfolio(pid)
        self.echo(f"  open approvals: {[(a['symbol'], a['units']) for a in before['open_approvals']]}")
        time.sleep(1.2)
        marked = self.trader.marks({"EURUSD": 1.1}, portfolio_id=pid)
        self.echo(f"  1.2 s later, a mark: positions {marked['portfolio_state']['positions']}, open approvals "
                  f"{marked['portfolio_state']['open_approvals']} (released: a fill of 0, an 'expire' ledger entry)")
        self.show(self.trade(pid), "the same intent again")



def _group_demo(demo: Demo) -> tuple[str, str, str]:
    """The group of scenarios 15 and 16 and its two desks (made once)."""
    if not hasattr(demo, "_group"):
        group = f"demo-desks-{demo.run_id}"
        a, b = demo.portfolio(15), demo.portfolio(16)
        demo.admin.create_group(group, limits={"gross_exposure": 50000}, reason="rpm demo")
        for pid in (a, b):
            demo.admin.assign_to_group(group, pid)
        demo._group = (group, a, b)
    return demo._group
