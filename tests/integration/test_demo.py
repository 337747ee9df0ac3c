"""`rpm demo`: the nine scenarios, run on PostgreSQL, each with the outcome the original design describes."""

import re

from click.testing import CliRunner

from app.cli import main


def test_rpm_demo_runs_the_nine_scenarios_with_their_outcomes(empty_database_url):
    result = CliRunner().invoke(main, ["demo", "--database-url", empty_database_url])
    assert result.exit_code == 0, result.output
    out = result.output
    assert len(re.findall(r"SCENARIO \d:", out)) == 9
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
