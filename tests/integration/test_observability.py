"""Operations: Prometheus metrics under several workers, JSON logs, request ids."""

import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..conftest import SEED_INTENT, http


def prometheus(text):
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.mark.slow
def test_prometheus_counters_match_the_json_metrics_across_workers(servers, database_url, keys, capsys):
    server = servers({"DATABASE_URL": database_url}, workers=3, threads=2)
    trader = keys["trader"]
    known = [SEED_INTENT, {**SEED_INTENT, "confidence_score": 0.3}, SEED_INTENT,
             {**SEED_INTENT, "symbol": "GBPUSD", "current_price": 1.25, "intent_id": "p-1"},
             {**SEED_INTENT, "symbol": "GBPUSD", "current_price": 1.25, "intent_id": "p-1"}]  # a replay
    for _ in range(3):  # spread over the workers
        for body in known:
            http("POST", server.url + "/process_trade", body, key=trader)
    _, as_json = http("GET", server.url + "/metrics", key=trader)
    import urllib.request

    request = urllib.request.Request(server.url + "/metrics", headers={"Authorization": f"Bearer {trader}",
                                                                        "Accept": "text/plain"})
    with urllib.request.urlopen(request) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        samples = prometheus(response.read().decode())
    count = lambda status, reason: samples.get(  # noqa: E731
        ("rpm_decisions_total", (("portfolio", "default"), ("reason", reason), ("status", status))), 0)
    approved = count("APPROVED", "")
    rejected = {r: count("REJECTED", r) for r in as_json["rejections_by_reason"]}
    assert approved == as_json["trades_approved"]
    assert rejected == as_json["rejections_by_reason"]
    assert approved + sum(rejected.values()) == as_json["total_decisions"] == 10  # the two replays count once
    assert samples[("rpm_decision_latency_seconds_count", (("portfolio", "default"),))] == 10
    assert samples[("rpm_trading_halted", (("portfolio", "default"),))] == 0
    assert samples[("rpm_equity", (("portfolio", "default"),))] == pytest.approx(100_000, abs=100)
    with capsys.disabled():
        print(f"\n[prometheus] 3 workers, 15 requests (5 of them replays): rpm_decisions_total approved {approved:.0f}, "
              f"rejected {rejected}; JSON: {as_json['trades_approved']} approved, "
              f"{as_json['rejections_by_reason']}")


def test_a_request_id_is_returned_and_stored_with_the_decision(client, sql):
    r = client.post("/process_trade", json=SEED_INTENT, headers={"X-Request-ID": "trace-42"})
    assert r.headers["X-Request-ID"] == "trace-42"
    other = client.post("/process_trade", json={**SEED_INTENT, "confidence_score": 0.2})
    generated = other.headers["X-Request-ID"]
    assert len(generated) == 32
    assert sql("SELECT request_id FROM decisions ORDER BY seq") == [("trace-42",), (generated,)]
    bad = client.get("/health", headers={"X-Request-ID": "not ok; drop table"})
    assert bad.headers["X-Request-ID"] != "not ok; drop table"


def test_logs_are_one_json_event_per_line_with_the_key_name_never_the_key(client, keys, capfd):
    from app.observability import JsonFormatter

    handler = logging.getLogger("rpm.access").handlers[0]
    assert isinstance(handler.formatter, JsonFormatter)
    records = []
    capture = logging.Handler()
    capture.emit = lambda record: records.append(handler.formatter.format(record))
    logging.getLogger("rpm.access").addHandler(capture)
    logging.getLogger("rpm.auth").addHandler(capture)
    try:
        client.post("/process_trade", json=SEED_INTENT, headers={"X-Request-ID": "log-1"})
        client.get("/health", headers={"Authorization": "Bearer rpm_badbadba_" + "Z" * 43})
    finally:
        logging.getLogger("rpm.access").removeHandler(capture)
        logging.getLogger("rpm.auth").removeHandler(capture)
    events = [json.loads(line) for line in records]
    decision = next(e for e in events if e.get("request_id") == "log-1")
    assert decision["key_name"] == "test-trader" and decision["status"] == 200
    assert decision.get("portfolio") in (None, "default")
    assert decision["decision_status"] == "APPROVED" and decision["path"] == "/process_trade"
    failed = next(e for e in events if e.get("key_prefix") == "rpm_badbadba")
    assert failed["level"] == "warning"
    text = "\n".join(records)
    for key in keys.values():
        assert key not in text
    assert "Z" * 43 not in text


def test_the_prometheus_scrape_of_a_portfolio_that_does_not_exist_is_a_404(client):
    r = client.get("/metrics", query_string={"format": "prometheus", "portfolio_id": "no-such-desk"})
    assert r.status_code == 404 and "no-such-desk" in r.json["message"]
    assert client.get("/metrics", query_string={"format": "prometheus", "portfolio_id": "default"}).status_code == 200
