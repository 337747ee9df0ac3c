"""Restart safety through a real `rpm serve`: kill -9, start again, nothing lost."""

import pytest

from ..conftest import SEED_INTENT, http

pytestmark = pytest.mark.slow


def snapshot(url, key):
    status, portfolio = http("GET", url + "/portfolio", key=key)
    assert status == 200
    status, health = http("GET", url + "/health", key=key)
    assert status == 200
    switches = {k: v["state"] for k, v in health["kill_switches"].items()}
    return {k: portfolio[k] for k in ("equity", "peak_equity", "drawdown", "daily_pnl", "realised_pnl",
                                      "positions", "exposures", "trading_state")}, switches


def test_a_halt_and_the_books_survive_kill_minus_nine(servers, database_url, keys, capsys):
    env = {"DATABASE_URL": database_url}
    trader, admin = keys["trader"], keys["admin"]
    server = servers(env)
    status, body = http("POST", server.url + "/process_trade", SEED_INTENT, key=trader)
    assert status == 200 and body["decision"]["approved_trade"]["position_units"] == 27272.72
    assert http("POST", server.url + "/marks", {"prices": {"EURUSD": 1.095}}, key=trader)[0] == 200
    assert http("POST", server.url + "/halt", {"reason": "restart drill"}, key=admin)[0] == 200
    before = snapshot(server.url, trader)
    assert before[0]["trading_state"] == "HALTED"
    server.kill9()

    again = servers(env)
    after = snapshot(again.url, trader)
    assert after == before
    status, body = http("POST", again.url + "/process_trade", {**SEED_INTENT, "symbol": "GBPUSD",
                                                                 "current_price": 1.25}, key=trader)
    assert body["decision"]["reason"] == "HALTED"
    with capsys.disabled():
        print(f"\n[restart] before kill -9: state={before[0]['trading_state']} equity={before[0]['equity']:.2f} "
              f"drawdown={before[0]['drawdown']:.6f} positions={[(p['symbol'], p['units']) for p in before[0]['positions']]}"
              f"\n[restart] after restart: state={after[0]['trading_state']} equity={after[0]['equity']:.2f} "
              f"drawdown={after[0]['drawdown']:.6f} positions={[(p['symbol'], p['units']) for p in after[0]['positions']]}"
              f"\n[restart] new intent after restart: {body['decision']['status']} {body['decision']['reason']}")


def test_drawdown_halt_from_marks_survives_kill_minus_nine_and_a_close_still_passes(servers, database_url, keys,
                                                                                    capsys):
    env = {"DATABASE_URL": database_url}
    trader = keys["trader"]
    server = servers(env)
    status, body = http("POST", server.url + "/process_trade", SEED_INTENT, key=trader)
    assert body["decision"]["status"] == "APPROVED"
    # 27,272.72 EURUSD from 1.1000 to 0.6966: -11,000, equity 11% below its peak
    status, marked = http("POST", server.url + "/marks", {"prices": {"EURUSD": 0.6966}}, key=trader)
    assert "drawdown" in marked["tripped"]
    gbp = {**SEED_INTENT, "symbol": "GBPUSD", "current_price": 1.25}
    _, before = http("POST", server.url + "/process_trade", gbp, key=trader)
    assert before["decision"]["reason"] == "HALTED"
    assert "drawdown" in before["decision"]["rejected_trade"]["context"]["tripped_switches"]
    server.kill9()

    again = servers(env)
    _, after = http("POST", again.url + "/process_trade", gbp, key=trader)
    assert after["decision"]["reason"] == "HALTED"
    assert "drawdown" in after["decision"]["rejected_trade"]["context"]["tripped_switches"]
    _, health = http("GET", again.url + "/health", key=trader)
    assert health["kill_switches"]["drawdown"]["current_pct"] == pytest.approx(11.0, abs=0.01)
    _, close = http("POST", again.url + "/process_trade", {**SEED_INTENT, "direction": -1, "current_price": 0.6966},
                    key=trader)
    assert close["decision"]["status"] == "APPROVED" and close["decision"]["approved_trade"]["reducing"]
    with capsys.disabled():
        print(f"\n[drawdown restart] marks: equity {marked['portfolio_state']['equity']:.2f}, drawdown "
              f"{marked['portfolio_state']['drawdown_pct']:.2f}% -> tripped {marked['tripped']}"
              f"\n[drawdown restart] before kill -9: new GBPUSD intent {before['decision']['status']} "
              f"{before['decision']['reason']}"
              f"\n[drawdown restart] after restart: new GBPUSD intent {after['decision']['status']} "
              f"{after['decision']['reason']}; drawdown {health['kill_switches']['drawdown']['current_pct']:.2f}% "
              f"{health['kill_switches']['drawdown']['state']}"
              f"\n[drawdown restart] closing EURUSD after restart: {close['decision']['status']} "
              f"{close['decision']['approved_trade']['position_units']} units (reducing)")
