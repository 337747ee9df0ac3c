"""Risk events from real `rpm serve` processes: one deliverer per deployment across instances and workers, at least
once and in order through a kill -9, and the event stream over HTTP resumed with Last-Event-ID."""

from __future__ import annotations

import json
import os
import threading
import time
from http.client import HTTPConnection
from urllib.parse import urlsplit

import pytest

from ..conftest import http
from .test_events import Receiver

FAST = {"RPM_WEBHOOK_POLL_S": "0.1", "RPM_EVENTS_POLL_S": "0.1", "RPM_EVENTS_HEARTBEAT_S": "0.5"}


@pytest.fixture
def receiver():
    r = Receiver(delay_s=0.05)
    yield r
    r.close()


def churn(url, key, portfolios, cycles):
    """Halt and resume each portfolio ``cycles`` times, the portfolios in parallel (4 events a cycle)."""
    def run(pid):
        for i in range(cycles):
            for path, body in (("/halt", {"reason": f"drill {i}"}), ("/resume", {})):
                status, answer = http("POST", f"{url}{path}?portfolio_id={pid}", body, key=key)
                assert status == 200, answer
    threads = [threading.Thread(target=run, args=(pid,)) for pid in portfolios]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def deliverer_pid(sql) -> int | None:
    """The OS pid of the process holding this database's deliverer lock (its connection names it; pg_locks shows
    every database's)."""
    found = sql("SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE 'rpm-webhooks-%' "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())")
    return int(found[0][0].rsplit("-", 1)[1]) if found else None


def test_one_deliverer_across_instances_then_at_least_once_in_order_through_kill_9(servers, database_url, keys, sql,
                                                                                     receiver, capsys):
    env = {"DATABASE_URL": database_url, **FAST}
    a = servers(env, workers=2, threads=4)
    b = servers(env, workers=2, threads=4)
    admin = keys["admin"]
    portfolios = ["p1", "p2", "p3"]
    for pid in portfolios:
        assert http("POST", a.url + "/portfolios", {"portfolio_id": pid, "capital": 100000}, key=admin)[0] == 201
    status, hook = http("POST", b.url + "/webhooks", {"url": receiver.url, "portfolios": portfolios}, key=admin)
    assert status == 201, hook
    # phase 1: four workers in two instances, each running a deliverer thread: every event delivered exactly once
    churn(a.url, admin, portfolios[:2], 3)
    churn(b.url, admin, portfolios[2:], 3)
    first = [i for (i,) in sql("SELECT id FROM risk_events ORDER BY id")]
    assert len(first) == 36
    wait_for(lambda: len(receiver.received) >= len(first), 30, "phase 1's deliveries")
    time.sleep(0.5)
    assert [e["id"] for e in receiver.events()] == first  # exactly once each, in commit order
    holders = {deliverer_pid(sql)} - {None}
    assert len(holders) == 1
    # phase 2: more events; the instance that delivers killed -9 halfway; the other takes over
    churn(a.url, admin, portfolios, 4)
    second = [i for (i,) in sql(f"SELECT id FROM risk_events WHERE id > {first[-1]} ORDER BY id")]
    assert len(second) == 48
    wait_for(lambda: len(receiver.received) >= len(first) + 12, 30, "some of phase 2's deliveries")
    holder = deliverer_pid(sql)
    victim = a if os.getpgid(holder) == a.proc.pid else b
    survivor = b if victim is a else a
    started = time.monotonic()
    victim.kill9()
    wait_for(lambda: {e["id"] for e in receiver.events()} >= set(first + second), 60, "every event after the kill")
    recovered_s = time.monotonic() - started
    received = [e for e in receiver.events() if e["id"] > first[-1]]
    ids = [e["id"] for e in received]
    duplicates = len(ids) - len(set(ids))
    for headers, body in receiver.received:  # a duplicate carries the same idempotency key
        assert headers["idempotency-key"] == f"rpm-event-{json.loads(body)['id']}"
    # in order: each event first arrives after every event before it; a repeat only re-sends what came already
    seen: list[int] = []
    for i in ids:
        if i not in seen:
            assert not seen or i > seen[-1], (i, seen[-5:])
            seen.append(i)
    assert seen == second
    by_portfolio: dict[str, list[int]] = {}
    for e in received:
        by_portfolio.setdefault(e["portfolio_id"], [])
        if e["seq"] not in by_portfolio[e["portfolio_id"]]:
            by_portfolio[e["portfolio_id"]].append(e["seq"])
    assert all(seqs == sorted(seqs) for seqs in by_portfolio.values())
    assert deliverer_pid(sql) is not None and os.getpgid(deliverer_pid(sql)) == survivor.proc.pid
    with capsys.disabled():
        print(f"\n[webhooks kill -9] {len(second)} events; delivered before the kill: "
              f"{sum(1 for i in ids[:12])}+; after: all {len(set(ids))} distinct, {duplicates} duplicate(s), "
              f"{recovered_s:.1f} s from the kill to the last")


def read_stream(url, key, *, last_event_id=None, count=None, seconds=10.0, query=""):
    """Frames of GET /events (each a dict of its fields) until ``count`` events came, or ``seconds`` passed."""
    parts = urlsplit(url)
    conn = HTTPConnection(parts.hostname, parts.port, timeout=seconds)
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    conn.request("GET", "/events" + query, headers=headers)
    response = conn.getresponse()
    assert response.status == 200, response.read()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    frames, frame = [], {}
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and (count is None or sum(1 for f in frames if "id" in f) < count):
            line = response.fp.readline().decode().rstrip("\n")
            if line == "":
                if frame:
                    frames.append(frame)
                frame = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                frame[name] = value
    finally:
        conn.close()
    return [f for f in frames if "id" in f]


def test_the_stream_resumes_with_last_event_id_missing_nothing_and_shows_a_key_its_own(servers, database_url, keys,
                                                                                      sql):
    server = servers({"DATABASE_URL": database_url, **FAST}, workers=1, threads=4)
    admin, limited = keys["admin"], keys["trader_elsewhere"]
    assert http("POST", server.url + "/portfolios", {"portfolio_id": "elsewhere", "capital": 50000}, key=admin)[0] == 201
    got: list[dict] = []
    mine: list[dict] = []
    reader = threading.Thread(target=lambda: got.extend(read_stream(server.url, admin, count=8, query="?after=0")))
    limited_reader = threading.Thread(target=lambda: mine.extend(read_stream(server.url, limited, count=4,
                                                                             query="?after=0")))
    reader.start()
    limited_reader.start()
    churn(server.url, admin, ["default", "elsewhere"], 1)  # 8 events
    reader.join()
    limited_reader.join()
    assert [int(f["id"]) for f in got] == [i for (i,) in sql("SELECT id FROM risk_events ORDER BY id")]
    assert [f["event"] for f in got if json.loads(f["data"])["portfolio_id"] == "default"] == [
        "switch_tripped", "halted", "switch_cleared", "resumed"]
    assert {json.loads(f["data"])["portfolio_id"] for f in mine} == {"elsewhere"} and len(mine) == 4
    # disconnected after event 8; 8 more are committed meanwhile; back with Last-Event-ID: exactly those
    last = got[-1]["id"]
    churn(server.url, admin, ["default", "elsewhere"], 1)
    again = read_stream(server.url, admin, last_event_id=last, count=8)
    assert [int(f["id"]) for f in again] == [i for (i,) in sql(f"SELECT id FROM risk_events WHERE id > {last} "
                                                                 "ORDER BY id")]
    # a key limited to some portfolios: refused a portfolio not its own to watch
    status, answer = http("GET", server.url + "/events?watch=default", key=limited)
    assert status == 403, answer
    status, answer = http("GET", server.url + "/events", key=admin, headers={"Last-Event-ID": "x1"})
    assert status == 422, answer
