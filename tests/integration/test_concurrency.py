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


def test_concurrent_single_intents_share_transactions_and_each_keeps_its_own_answer(servers, database_url, keys,
                                                                                      sql, capsys):
    """Group commit, through a real server: one worker, 8 threads, 8 clients sending at once.

    Every request gets the decision that was stored for it (sequence numbers gap-free), a refused
    intent (422) or a reused intent id (409) is only its own request's answer, the audit chain
    verifies, and the metrics show transactions that carried several decisions.
    """
    import urllib.request

    from .test_observability import prometheus

    server = servers({"DATABASE_URL": database_url}, workers=1, threads=8)
    key = keys["trader"]
    assert http("POST", server.url + "/marks", {"prices": PRICES}, key=key)[0] == 200
    clients, per_client = 8, 25
    barrier = threading.Barrier(clients)

    def client(n):
        barrier.wait()
        answers = []
        for k in range(per_client):
            symbol = SYMBOLS[(n + k) % 8]
            body = {**SEED_INTENT, "symbol": symbol, "current_price": PRICES[symbol], "atr": PRICES[symbol] * 0.002,
                    "confidence_score": 0.6, "direction": 1 if k % 3 else -1, "intent_id": f"g-{n}-{k}"}
            if k == 7:
                body["symbol"] = "XAUXAU"  # not an instrument: refused, 422
            if k == 9:
                body["intent_id"] = f"g-{n}-1"  # an id already used with another payload: 409
            answers.append((body, *http("POST", server.url + "/process_trade", body, key=key, timeout=30)))
        return answers

    with ThreadPoolExecutor(clients) as pool:
        results = [a for answers in pool.map(client, range(clients)) for a in answers]
    statuses = sorted(status for _, status, _ in results)
    assert statuses.count(422) == clients and statuses.count(409) == clients
    decided = [(body, answer["decision"]) for body, status, answer in results if status == 200]
    # each answer reports the portfolio right after its own decision, not after its transaction
    assert all(answer["risk_metrics"]["total_decisions"] == answer["decision"]["seq"]
               for _, status, answer in results if status == 200)
    assert len(decided) == clients * (per_client - 2)
    rows = {r[0]: r[1:] for r in sql("SELECT id, seq, intent_id, status, approved_units FROM decisions")}
    assert len(rows) == len(decided)
    assert sorted(seq for seq, *_ in rows.values()) == list(range(1, len(decided) + 1))
    for body, d in decided:
        seq, intent_id, status, units = rows[d["id"]]
        assert (seq, intent_id, status) == (d["seq"], body["intent_id"], d["status"])
        if status == "APPROVED":
            assert float(units) == d["approved_trade"]["position_units"]
    _, verify = http("GET", server.url + "/audit/verify", key=keys["compliance"])
    assert verify["ok"] is True
    request = urllib.request.Request(server.url + "/metrics", headers={"Authorization": f"Bearer {key}",
                                                                        "Accept": "text/plain"})
    with urllib.request.urlopen(request) as response:
        samples = prometheus(response.read().decode())
    transactions = samples[("rpm_decisions_per_transaction_count", ())]
    committed = samples[("rpm_decisions_per_transaction_sum", ())]
    assert committed == len(decided) and transactions < committed
    with capsys.disabled():
        print(f"\n[group commit] 8 clients x {per_client} intents on one worker: {len(decided)} decisions in "
              f"{transactions:.0f} transactions ({committed / transactions:.1f} per transaction), sequence gap-free, "
              f"{statuses.count(422)} x 422 and {statuses.count(409)} x 409 alone, audit chain verifies")
