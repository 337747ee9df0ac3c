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
