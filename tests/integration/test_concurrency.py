"""Serialization per portfolio: racing clients across worker processes cannot breach a limit."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from ..conftest import SEED_INTENT, http

pytestmark = pytest.mark.slow

SYMBOLS = ["EURUSD", "GBPUSD", "AUDUSD", "NZDUSD", "USDJPY", "USDCHF", "USDCAD", "EURGBP", "EURJPY", "GBPJPY",
           "AUDJPY", "CHFJPY", "EURCHF", "GBPCHF", "AUDNZD", "CADJPY"]
PRICES = {"EURUSD": 1.1, "GBPUSD": 1.25, "AUDUSD": 0.65, "NZDUSD": 0.6, "USDJPY": 150.0, "USDCHF": 0.9,
          "USDCAD": 1.35, "EURGBP": 0.88, "EURJPY": 165.0, "GBPJPY": 187.5, "AUDJPY": 97.5, "CHFJPY": 166.0,
          "EURCHF": 0.99, "GBPCHF": 1.12, "AUDNZD": 1.08, "CADJPY": 111.0}


def test_many_threads_and_two_workers_race_for_the_last_position_slot(servers, database_url, keys, capsys):
    server = servers({"DATABASE_URL": database_url}, workers=2, threads=8)
    url = server.url
    key = keys["trader"]
    assert http("POST", url + "/marks", {"prices": PRICES}, key=key)[0] == 200
    # 7 of 8 slots taken; small sizes so that only the position count can bind
    small = dict(SEED_INTENT, atr=0.05, confidence_score=0.6, regime="RANGING")
    for symbol in SYMBOLS[:7]:
        status, body = http("POST", url + "/process_trade", {**small, "symbol": symbol,
                                                             "current_price": PRICES[symbol],
                                                             "atr": PRICES[symbol] * 0.05}, key=key)
        assert body["decision"]["status"] == "APPROVED", body["decision"]
    racers = SYMBOLS[7:]
    barrier = threading.Barrier(len(racers))

    def race(symbol):
        barrier.wait()
        return http("POST", url + "/process_trade", {**small, "symbol": symbol, "current_price": PRICES[symbol],
                                                     "atr": PRICES[symbol] * 0.05}, timeout=30, key=key)

    with ThreadPoolExecutor(len(racers)) as pool:
        results = list(pool.map(race, racers))
    statuses = [body["decision"]["status"] for status, body in results]
    reasons = sorted(body["decision"]["reason"] or "" for status, body in results)
    assert all(status == 200 for status, _ in results)
    assert statuses.count("APPROVED") == 1
    assert reasons.count("MAX_POSITIONS") == len(racers) - 1
    _, portfolio = http("GET", url + "/portfolio", key=key)
    assert portfolio["open_positions"] == 8
    with capsys.disabled():
        print(f"\n[concurrency] {len(racers)} racers over 2 worker processes for the last of 8 slots: "
              f"{statuses.count('APPROVED')} approved, {reasons.count('MAX_POSITIONS')} MAX_POSITIONS; "
              f"open positions after: {portfolio['open_positions']}")
