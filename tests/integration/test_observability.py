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


# -- log levels, health probes, gunicorn's own lines, switch and webhook gauges ---------------------------------

class Captured:
    """The JSON lines RPM's loggers write (each formatted by the handler configure_logging gave them)."""

    def __init__(self, *names):
        self.names = names
        self.lines: list[str] = []
        self.capture = logging.Handler()
        self.capture.emit = self.emit

    def emit(self, record):
        self.lines.append(logging.getLogger(record.name).handlers[0].formatter.format(record))

    def __enter__(self):
        for name in self.names:
            logging.getLogger(name).addHandler(self.capture)
        return self

    def __exit__(self, *exc):
        for name in self.names:
            logging.getLogger(name).removeHandler(self.capture)

    def events(self):
        return [json.loads(line) for line in self.lines]


def crash_the_book(client):
    """A position, then a mark 36% lower: drawdown, daily drawdown, daily and weekly loss trip (halted)."""
    r = client.post("/process_trade", json=SEED_INTENT)
    assert r.json["decision"]["status"] == "APPROVED", r.json
    r = client.post("/marks", json={"prices": {"EURUSD": 0.7}})
    assert r.status_code == 200, r.json


def test_a_trip_and_a_halt_are_json_lines_with_what_an_operator_alerts_on(client):
    from app.risk.kill_switches import DAILY_LOSS, DRAWDOWN, MANUAL

    with Captured("rpm.events") as log:
        crash_the_book(client)
        assert client.post("/halt", json={"reason": "x"}).status_code == 200
    events = log.events()
    trips = {e["switch"]: e for e in events if e["event"] == "switch_tripped"}
    assert {DRAWDOWN, DAILY_LOSS} <= set(trips), events
    for e in trips.values():
        assert e["level"] == "warning" and e["logger"] == "rpm.events" and e["event_type"] == "switch_tripped"
        assert e["portfolio"] == "default" and e["reason"] and isinstance(e["event_id"], int)
    value = lambda switch, name: float(trips[switch][name])  # noqa: E731  (decimals, as the event's data has them)
    assert value(DRAWDOWN, "value") >= value(DRAWDOWN, "threshold") == 0.1  # a ratio past its limit
    assert value(DAILY_LOSS, "value") <= value(DAILY_LOSS, "threshold") < 0  # a loss below its (negative) limit
    halts = [e for e in events if e["event"] == "halted"]
    assert [h.get("actor") for h in halts] == [None, "test-admin"]  # the first switch's halt, then the admin's
    assert all(h["level"] == "warning" and h["portfolio"] == "default" for h in halts)
    assert halts[1]["reason"] == "x" and halts[1]["switch"] == MANUAL


def test_an_access_line_carries_its_level_by_status(client):
    from app.observability import log_access

    with Captured("rpm.access") as log:
        assert client.post("/halt", json={"reason": " "}).status_code == 422
        assert client.get("/portfolio").status_code == 200
        assert client.get("/portfolio", query_string={"portfolio_id": "no-such-desk"}).status_code == 404
        log_access("r-503", "POST", "/process_trade", 503, None, "default", "k")  # (as the fast path writes one)
    by_status = {e["status"]: e for e in log.events()}
    assert by_status[422]["level"] == "warning" and by_status[422]["path"] == "/halt"
    assert by_status[404]["level"] == "warning"
    assert by_status[200]["level"] == "info"
    assert by_status[503]["level"] == "error" and by_status[503]["request_id"] == "r-503"


def test_health_probes_write_no_access_line_unless_asked(client, raw_client, settings):
    import dataclasses

    from app import create_app

    with Captured("rpm.access") as log:
        assert raw_client.get("/health/live").status_code == 200
        assert raw_client.get("/health/ready").status_code == 200
        # GET /health is a key's request (a portfolio's kill switches), not a probe: logged
        assert client.get("/health").status_code == 200
        assert client.get("/portfolio").status_code == 200
        # a failed probe is logged all the same (here a 422: a query parameter it does not take)
        assert raw_client.get("/health/live", query_string={"x": "1"}).status_code == 422
    assert [(e["path"], e["status"]) for e in log.events()] == [("/health", 200), ("/portfolio", 200),
                                                                  ("/health/live", 422)]

    app = create_app(dataclasses.replace(settings, log_health=True))
    try:
        with Captured("rpm.access") as log:
            for path in ("/health/live", "/health/ready"):
                assert app.test_client().get(path).status_code == 200
        assert [(e["path"], e["status"], e["level"]) for e in log.events()] == [
            ("/health/live", 200, "info"), ("/health/ready", 200, "info")]
    finally:
        app.extensions["rpm"].db.dispose()


def test_the_setting_is_read_from_the_environment(monkeypatch):
    from app.settings import Settings

    assert Settings.from_env().log_health is False
    monkeypatch.setenv("RPM_LOG_HEALTH", "1")
    assert Settings.from_env().log_health is True


@pytest.mark.slow
def test_a_served_log_is_json_gunicorns_own_lines_too(servers, database_url, keys, tmp_path):
    server = servers({"DATABASE_URL": database_url}, workers=2, threads=2)
    assert http("GET", server.url + "/health/live")[0] == 200
    assert http("GET", server.url + "/portfolio", key=keys["trader"])[0] == 200
    assert http("POST", server.url + "/halt", {"reason": " "}, key=keys["admin"])[0] == 422
    server.stop()
    text = (tmp_path / "server-0.log").read_text()
    lines = text.splitlines()
    # gunicorn's process, from its first line, less `rpm serve`'s banner (printed once it listens)
    rules = [i for i, line in enumerate(lines) if line == "=" * 78]
    start = next(i for i, line in enumerate(lines) if "Starting gunicorn" in line)
    assert rules and rules[0] > start  # (the banner: after gunicorn started)
    served = "\n".join(line for i, line in enumerate(lines) if i >= start and not rules[0] <= i <= rules[-1])
    events = []
    for line in served.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}\n{served}")
    gunicorn = [e for e in events if e["logger"] == "gunicorn.error"]
    messages = " | ".join(e["event"] for e in gunicorn)
    for said in ("Starting gunicorn", "Listening at: http://127.0.0.1:", "Booting worker with pid", "Shutting down"):
        assert said in messages, messages
    assert all(e["level"] in ("info", "warning", "error", "critical") and e["ts"].endswith("Z") for e in gunicorn)
    assert len({e["pid"] for e in gunicorn}) >= 3  # the master and its two workers
    access = [e for e in events if e["logger"] == "rpm.access"]
    assert [(e["path"], e["status"], e["level"]) for e in access] == [("/portfolio", 200, "info"),
                                                                      ("/halt", 422, "warning")]


def test_the_scrape_shows_each_switch_tripped_and_the_events_counted(client, keys):
    from app.risk.kill_switches import DAILY_LOSS, DRAWDOWN, MANUAL

    def scrape(key=None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        r = client.get("/metrics", query_string={"format": "prometheus"}, headers=headers)
        assert r.status_code == 200, r.data
        return prometheus(r.get_data(as_text=True))

    def switch(samples, name):
        return samples.get(("rpm_switch_tripped", (("portfolio", "default"), ("switch", name))))

    def events(samples, kind):
        return samples.get(("rpm_risk_events_total", (("portfolio", "default"), ("type", kind))), 0)

    before = scrape()
    assert switch(before, DRAWDOWN) == 0 and switch(before, MANUAL) == 0
    crash_the_book(client)
    after = scrape()
    assert switch(after, DRAWDOWN) == 1 and switch(after, DAILY_LOSS) == 1 and switch(after, MANUAL) == 0
    assert after[("rpm_trading_halted", (("portfolio", "default"),))] == 1
    assert events(after, "switch_tripped") - events(before, "switch_tripped") >= 2
    assert events(after, "halted") - events(before, "halted") == 1
    assert client.post("/halt", json={"reason": "x"}).status_code == 200
    assert switch(scrape(), MANUAL) == 1
    assert client.post("/groups/firm/halt", json={"reason": "firm drill"}).status_code == 200
    assert scrape()[("rpm_level_switch_tripped", (("level", "firm"), ("switch", MANUAL)))] == 1
    elsewhere = scrape(keys["trader_elsewhere"])  # a key of another portfolio sees none of default's
    assert not [k for k in elsewhere if dict(k[1]).get("portfolio") == "default"]
    assert not [k for k in elsewhere if k[0].startswith(("rpm_webhook", "rpm_level"))]


def test_the_scrape_shows_each_webhooks_backlog(app, client, clock, keys):
    import psycopg

    from app.webhooks import Deliverer, conninfo

    from ..conftest import free_port

    def scrape():
        r = client.get("/metrics", query_string={"format": "prometheus"})
        return prometheus(r.get_data(as_text=True))

    dead = client.post("/webhooks", json={"url": f"http://127.0.0.1:{free_port()}/nobody"}).json["id"]
    gone = client.post("/webhooks", json={"url": f"http://127.0.0.1:{free_port()}/gone"}).json["id"]
    assert client.delete(f"/webhooks/{gone}", json={"reason": "off"}).status_code == 200
    of = lambda samples, name, hook=dead: samples.get((name, (("webhook", hook),)))  # noqa: E731
    idle = scrape()
    assert (of(idle, "rpm_webhook_pending"), of(idle, "rpm_webhook_failed"), of(idle, "rpm_webhook_lag_seconds")) == (
        0, 0, 0)
    assert of(idle, "rpm_webhook_pending", gone) is None  # a disabled endpoint is not watched

    crash_the_book(client)  # events at the test clock's now
    db = app.extensions["rpm"].db
    with psycopg.connect(conninfo(db.url), autocommit=True) as conn:
        Deliverer(db.url, clock=clock).work(conn)  # queued; the first attempt refused: all pending
        clock.advance(seconds=90)
        waiting = scrape()
        queued = of(waiting, "rpm_webhook_pending")
        assert queued >= 3 and of(waiting, "rpm_webhook_failed") == 0
        assert of(waiting, "rpm_webhook_lag_seconds") == pytest.approx(90)
        assert of(waiting, "rpm_webhook_failures_total") >= 1
        clock.advance(hours=2)
        Deliverer(db.url, clock=clock, max_attempts=1).work(conn)  # every attempt the last: all failed
    spent = scrape()
    assert (of(spent, "rpm_webhook_pending"), of(spent, "rpm_webhook_failed"), of(spent, "rpm_webhook_lag_seconds")) == (
        0, queued, 0)
