"""`rpm demo`: the nine scenarios and instruments beyond FX spot, run on PostgreSQL, each with the outcome
the original design describes."""

import re

from click.testing import CliRunner

from app.cli import main


def test_rpm_demo_runs_its_scenarios_with_their_outcomes(empty_database_url):
    result = CliRunner().invoke(main, ["demo", "--database-url", empty_database_url])
    assert result.exit_code == 0, result.output
    out = result.output
    assert len(re.findall(r"SCENARIO \d+:", out)) == 16
    assert "APPROVED     27,272.72 units" in out  # 1: the SPEC example
    assert "constraint symbol_exposure: 200,000.00 -> 27,272.72 units" in out
    assert "confidence 0.55 (x1.05)     REJECTED  CONFIDENCE_TOO_LOW" in out  # 2
    assert "confidence 0.95 (x1.45)     APPROVED     23,200.00 units" in out
    assert "STRESSED (x0.3)             APPROVED      5,000.00 units" in out  # 3
    assert "equity 85,000.00, drawdown 15.00%" in out  # 4
    assert "drawdown switch: TRIPPED, 15.00% against 10%" in out
    assert "close EURUSD (reduce-only)  APPROVED    200,000.00 units" in out
    assert "realised -2,500.00" in out and "switches tripped: daily_loss\n" in out  # 5
    assert "{'CONFIDENCE_TOO_LOW': 19, 'HALTED': 1}" in out  # 6
    assert "second (adjusted)           APPROVED      7,272.72 units" in out  # 7
    assert "third                       REJECTED  SYMBOL_EXPOSURE" in out
    assert "intent while halted         REJECTED  HALTED" in out  # 8
    assert "intent after resume         APPROVED     27,272.72 units" in out
    assert "drawdown             TRIPPED  current       0.1500  threshold 0.1000" in out  # 9
    # 10: instruments. 150,000 / (2 x 1.5) = 50,000 shares -> 30% of 10,000,000 / 190 = 15,789.47 -> 15,789
    # (the order cap, 5,000,000 USD = 26,315 shares, first)
    assert ("AAPL at 190.00, ATR 2.00        APPROVED          15,789 shares (lot 1), capped by "
            "instrument_order_notional, symbol_exposure") in out
    assert "ES at 5,000.00, ATR 20.00       APPROVED              12 contracts" in out  # 3,000,000 / 250,000
    assert "BTCUSD at 60,000.00, ATR 6,000  APPROVED     16.66666666 BTC (lot 1e-8)" in out  # 150,000 / 9,000
    assert "ES at 5,000.10 (tick 0.25)      REJECTED  INSTRUMENT_LIMIT: price 5000.1 is not a multiple" in out
    # 11: a partial reduction, a partial close, a reduction past flat
    assert "sell 10,000 at 1.1200       APPROVED     10,000.00 units" in out
    assert "close 7,272.72 at 1.1100: realised 72.73; 10,000.00 units left" in out
    assert "sell 50,000 (> held)        APPROVED     10,000.00 units" in out and "never flips in one intent" in out
    # 12: flows are not PnL; 13: a correction
    assert "withdraw  60,000: capital   90,000.00, equity   89,727.27, daily PnL  -272.73, trading ACTIVE" in out
    assert "EURUSD 27,272.72 at 1.1 -> 25,000.00 at 1.1005 (-2,272.72 units" in out
    # 14: an approval that expires
    assert "open approvals: [('EURUSD', 27272.72)]" in out
    assert "a mark: positions [], open approvals [] (released" in out
    assert "the same intent again       APPROVED     27,272.72 units" in out

    # 15: two desks of one group, its gross limit of 50,000 USD binding: desk B gets the 20,000.01 USD left
    assert "desk B: GBPUSD long         APPROVED     16,000.00 units" in out
    assert "gross_exposure: 24,000.00 -> 16,000.00 units (29,999.99 of 50,000.00 used by the group)" in out
    assert "desk B: USDJPY long         REJECTED  GROSS_EXPOSURE: group demo-desks-" in out
    # 16: the day's report of the group, worked out by hand: desk A 27,272.72 EURUSD at 1.1 marked 1.105
    # (+136.36 unrealised); desk B 16,000 GBPUSD bought at 1.25, sold at 1.245 (-80.00 realised)
    assert "desk A: more EURUSD         REJECTED  HALTED: trading halted by group demo-desks-" in out
    assert "desk B: sells its GBPUSD    APPROVED     16,000.00 units" in out
    assert re.search(r"group demo-desks-\w+: equity 200,056.36, realised -80.00, unrealised 136.36", out), out
    assert ("decisions {'APPROVED': 3, 'REJECTED GROSS_EXPOSURE': 1, 'REJECTED HALTED': 1}; switches tripped "
            "[('manual_halt', 'demo: desk review')]") in out
