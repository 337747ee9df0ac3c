"""The books: random intents, marks, fills and closes through the API; positions, realised PnL and
equity equal an independent recomputation from the stored ledger, to the cent."""

import os
import random
from decimal import Decimal

import pytest

from ..conftest import SEED_INTENT

# 3,000 in the suite; `make soak` runs 10,000
OPS = int(os.environ.get("RPM_BOOKS_OPS", "3000"))
BASE = {"EURUSD": 1.10, "GBPUSD": 1.25, "AUDUSD": 0.65, "USDJPY": 150.0, "USDCHF": 0.90, "USDCAD": 1.35}
MONEY = Decimal("0.00000001")
CENT = Decimal("0.01")


def rate(symbol, price):
    return Decimal(1) if symbol.endswith("USD") else Decimal(1) / price


def recompute(ledger, decisions):
    """Positions and realised PnL from the ledger alone (not using the engine)."""
    positions: dict[str, list[Decimal]] = {}
    realised = Decimal(0)
    for kind, symbol, decision_id, units, price in ledger:
        if kind == "open":
            if symbol in positions:
                held, avg = positions[symbol]
                size, add = abs(held), abs(units)
                new_avg = ((avg * size + price * add) / (size + add)).quantize(MONEY)
                positions[symbol] = [(size + add) * (1 if units > 0 else -1), new_avg]
            else:
                positions[symbol] = [units, price]
        elif kind in ("reduce", "close"):
            held, avg = positions.pop(symbol)
            realised += (price - avg) * held * rate(symbol, price)
        elif kind == "fill":
            booked_units, booked_price = decisions[decision_id]
            held, avg = positions[symbol]
            size = abs(held)
            new_size = size - booked_units + units
            if new_size == 0:
                del positions[symbol]
            else:
                new_avg = ((avg * size - booked_price * booked_units + price * units) / new_size).quantize(MONEY)
                positions[symbol] = [new_size * (1 if held > 0 else -1), new_avg]
    return positions, realised


@pytest.mark.slow
def test_random_books_match_an_independent_recomputation_to_the_cent(client, sql, clock, capsys):
    config = client.get("/config").json["config"]
    loose = {**config, "max_intents_per_second": 1_000_000, "max_drawdown": 1.0, "max_daily_drawdown": 1.0,
             "daily_loss_limit": 1.0, "weekly_loss_limit": 1.0, "min_confidence_threshold": 0.0,
             "max_symbol_exposure_pct": 5.0, "max_currency_exposure_pct": 10.0, "max_gross_exposure_pct": 20.0,
             "max_net_exposure_pct": 20.0, "max_units_per_symbol": 1e7, "min_position_units": 1.0,
             "confidence_collapse_threshold": 0.0, "volatility_shock_multiplier": 1000.0}
    assert client.put("/config", json={"config": loose}).status_code == 200
    rng = random.Random(20261123)
    marks = dict(BASE)
    client.post("/marks", json={"prices": marks})
    open_decisions: list[tuple[str, str]] = []
    counts = {"intent": 0, "mark": 0, "fill": 0, "close": 0, "refused": 0}
    for _ in range(OPS):
        clock.advance(milliseconds=rng.randint(1, 5000))
        op = rng.random()
        symbol = rng.choice(list(BASE))
        if op < 0.45:
            price = round(marks[symbol] * (1 + rng.uniform(-0.01, 0.01)), 5)
            r = client.post("/process_trade", json={**SEED_INTENT, "symbol": symbol, "current_price": price,
                                                    "direction": rng.choice([1, -1]),
                                                    "confidence_score": rng.uniform(0.5, 1.0),
                                                    "atr": BASE[symbol] * rng.uniform(0.001, 0.02)})
            assert r.status_code == 200
            d = r.json["decision"]
            if d["status"] == "APPROVED" and not d["approved_trade"]["reducing"]:
                open_decisions.append((d["id"], symbol))
            counts["intent"] += 1
        elif op < 0.75:
            marks[symbol] = round(marks[symbol] * (1 + rng.uniform(-0.01, 0.01)), 5)
            assert client.post("/marks", json={"prices": {symbol: marks[symbol]}}).status_code == 200
            counts["mark"] += 1
        elif op < 0.90 and open_decisions:
            decision_id, symbol = open_decisions.pop()  # the newest: most likely still open
            booked = float(sql("SELECT approved_units FROM decisions WHERE id = :id", id=decision_id)[0][0])
            filled = round(booked * rng.choice([1.0, 1.0, rng.uniform(0, 1)]), 2)
            price = round(marks[symbol] * (1 + rng.uniform(-0.001, 0.001)), 5)
            r = client.post("/fills", json={"decision_id": decision_id, "filled_units": filled, "fill_price": price})
            assert r.status_code in (200, 409), r.json  # 409: the position was closed since
            counts["fill" if r.status_code == 200 else "refused"] += 1
        else:
            r = client.post(f"/positions/{symbol}/close", json={"price": marks[symbol]})
            assert r.status_code in (200, 404)
            counts["close"] += r.status_code == 200

    ledger = [(k, s, d, Decimal(u), Decimal(p)) for k, s, d, u, p in sql(
        "SELECT kind, symbol, decision_id, units, price FROM ledger_entries ORDER BY seq")]
    decisions = {i: (Decimal(u), Decimal(p)) for i, u, p in sql(
        "SELECT id, approved_units, price FROM decisions WHERE status = 'APPROVED'")}
    positions, realised = recompute(ledger, decisions)

    stored = {s: (Decimal(u), Decimal(a)) for s, u, a in sql("SELECT symbol, units, avg_price FROM positions")}
    assert {s: (u.normalize(), a.normalize()) for s, (u, a) in stored.items()} == {
        s: (u.normalize(), a.normalize()) for s, (u, a) in positions.items()}
    stored_realised = Decimal(sql("SELECT realised_pnl FROM portfolios WHERE id = 'default'")[0][0])
    assert abs(stored_realised - realised) < Decimal("0.005")
    unrealised = sum(((Decimal(repr(marks[s])) - avg) * units * rate(s, Decimal(repr(marks[s])))
                      for s, (units, avg) in positions.items()), Decimal(0))
    equity = Decimal(100_000) + realised + unrealised
    reported = client.get("/portfolio").json
    assert abs(Decimal(repr(reported["equity"])) - equity) < CENT
    assert abs(Decimal(repr(reported["realised_pnl"])) - realised) < CENT
    with capsys.disabled():
        print(f"\n[books] {OPS} operations {counts}; ledger {len(ledger)} entries; open positions "
              f"{len(positions)}; realised {realised.quantize(CENT)}; equity {equity.quantize(CENT)} "
              f"(reported {reported['equity']:.2f})")
