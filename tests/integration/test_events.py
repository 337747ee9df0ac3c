"""Risk events (SPEC §13), on PostgreSQL: written with their cause, on the chain, delivered to a real receiver by
the webhook deliverer (in order, signed, at least once), and streamed (Server-Sent Events)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

from app.webhooks import Deliverer, conninfo, verify_signature

from ..conftest import SEED_INTENT


class Receiver:
    """A real HTTP endpoint: records what it is sent (headers, lower-cased; body); answers ``status`` (a 2xx acknowledges)."""

    def __init__(self, port: int = 0, delay_s: float = 0.0):
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        self.delay_s = delay_s
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                with receiver.lock:
                    status = receiver.status
                    if 200 <= status < 300:
                        receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/rpm-events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict]:
        with self.lock:
            return [json.loads(body) for _headers, body in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def register(client, url, **extra):
    r = client.post("/webhooks", json={"url": url, **extra})
    assert r.status_code == 201, r.json
    return r.json


def crash_the_book(client, pid="default"):
    """A position, then a mark 36% lower: drawdown, daily and weekly loss trip (the portfolio halts)."""
    r = client.post("/process_trade", json={**SEED_INTENT, "portfolio_id": pid})
    assert r.json["decision"]["status"] == "APPROVED", r.json
    r = client.post("/marks", json={"portfolio_id": pid, "prices": {"EURUSD": 0.7}})
    assert r.status_code == 200, r.json


@pytest.fixture
def deliver(app):
    """A deliverer of the test's database, run by hand (``work``) on a connection of its own."""
    made = []

    def make(clock=None, **options) -> Deliverer:
        db = app.extensions["rpm"].db
        deliverer = Deliverer(db.url, clock=clock, **options)
        deliverer.conn = psycopg.connect(conninfo(db.url), autocommit=True)
        made.append(deliverer.conn)
        return deliverer

    yield make
    for conn in made:
        conn.close()


def test_events_are_written_with_their_cause_on_the_chain_numbered_per_portfolio(client, sql):
    crash_the_book(client)
    assert client.post("/resume", json={"force": True, "reason": "reviewed"}).status_code == 200
    assert client.post("/halt", json={"reason": "desk review"}).status_code == 200
    rows = sql("SELECT id, chain, seq, type, data, audit_seq FROM risk_events ORDER BY id")
    types = [t for _i, _c, _s, t, _d, _a in rows]
    assert types[:2] == ["switch_tripped", "halted"] and types.count("switch_tripped") >= 2, types
    halted = rows[1][4]
    assert halted["by"] == "switch" and halted["actor"] is None and halted["switch"] == rows[0][4]["switch"]
    resumed = [d for *_x, t, d, _a in rows if t == "resumed"]
    assert resumed == [{"by": "admin", "switch": None, "reason": "reviewed", "forced": True, "actor": {
        "name": "test-admin", "role": "admin", "key_id": resumed[0]["actor"]["key_id"]}}]
    assert types[-2:] == ["switch_tripped", "halted"] and rows[-1][4]["by"] == "admin"
    assert [s for _i, _c, s, *_ in rows] == list(range(1, len(rows) + 1))  # numbered per chain, without a gap
    assert {c for _i, c, *_ in rows} == {"default"}
    # each on the chain, after its cause: verify walks them with everything else
    assert [a for *_x, a in rows] == sorted(a for *_x, a in rows)
    assert client.get("/audit/verify").json["ok"] is True
    # what an admin's resume clears is the resume's: no automatic `resumed` beside it
    assert types.count("resumed") == 1


def test_an_event_exists_only_if_its_cause_committed(client, sql):
    crash_the_book(client)
    before = sql("SELECT count(*) FROM risk_events")[0][0]
    r = client.post("/resume", json={})  # in the cooldown: refused (409), nothing written
    assert r.status_code == 409, r.json
    r = client.post("/halt", json={"reason": " "})  # refused (422)
    assert r.status_code == 422, r.json
    assert sql("SELECT count(*) FROM risk_events")[0][0] == before


def test_every_event_delivered_in_order_signed_and_idempotent(deliver, client, receiver, sql):
    hook = register(client, receiver.url)
    assert hook["secret"].startswith("whsec_")
    crash_the_book(client)
    assert client.post("/resume", json={"force": True, "reason": "reviewed"}).status_code == 200
    config = client.get("/config").json["config"]
    assert client.put("/config", json={"config": {**config, "max_concurrent_positions": 4}, "reason": "fewer"}).status_code == 200
    deliverer = deliver()
    assert deliverer.work(deliverer.conn) > 0
    got = receiver.events()
    ids = [i for (i,) in sql("SELECT id FROM risk_events ORDER BY id")]
    assert [e["id"] for e in got] == ids and [e["seq"] for e in got] == list(range(1, len(ids) + 1))
    assert got[-1]["type"] == "config_changed" and got[-1]["data"]["after"]["changed"]["max_concurrent_positions"]["after"] == 4
    for headers, body in receiver.received:
        assert verify_signature(hook["secret"], headers["rpm-signature"], body)
        assert not verify_signature("whsec_another-secret-altogether", headers["rpm-signature"], body)
        assert headers["idempotency-key"] == f"rpm-event-{json.loads(body)['id']}"
    # a body altered in transit no longer verifies
    headers, body = receiver.received[0]
    assert not verify_signature(hook["secret"], headers["rpm-signature"], body.replace(b'"seq":1', b'"seq":2'))
    listed = client.get(f"/webhooks/{hook['id']}/deliveries").json["deliveries"]
    assert [d["status"] for d in listed] == ["delivered"] * len(ids)
    assert deliverer.work(deliverer.conn) == 0 and len(receiver.received) == len(ids)  # nothing sent twice


def test_a_receiver_down_for_a_while_gets_everything_after_in_order(deliver, client, receiver, clock):
    hook = register(client, receiver.url)
    receiver.status = 503
    crash_the_book(client)
    deliverer = deliver(clock=clock, max_attempts=3)
    deliverer.work(deliverer.conn)
    pending = client.get(f"/webhooks/{hook['id']}/deliveries").json["deliveries"]
    assert pending[0]["status"] == "pending" and pending[0]["attempts"] == 1 and pending[0]["last_status"] == 503
    assert all(d["attempts"] == 0 for d in pending[1:])  # the head waits, the rest behind it
    clock.advance(seconds=1)
    deliverer.work(deliverer.conn)
    clock.advance(seconds=2)
    deliverer.work(deliverer.conn)  # the third attempt: given up
    listed = client.get(f"/webhooks/{hook['id']}/deliveries", query_string={"status": "failed"}).json["deliveries"]
    assert [d["attempts"] for d in listed] == [3]
    # given up, the next event's turn came (its first attempt failed too); the receiver back, everything after the
    # failed one goes, the failed one only when retried
    receiver.status = 200
    clock.advance(seconds=1)
    deliverer.work(deliverer.conn)
    assert len(receiver.events()) == len(pending) - 1
    r = client.post(f"/webhooks/{hook['id']}/deliveries/retry", json={})
    assert r.status_code == 200 and r.json["retried"] == [pending[0]["event_id"]]
    deliverer.work(deliverer.conn)
    assert sorted(e["id"] for e in receiver.events()) == [d["event_id"] for d in pending]
    assert client.get(f"/webhooks/{hook['id']}").json["deliveries"] == {"pending": 0, "delivered": len(pending),
                                                                         "failed": 0}


def test_an_endpoint_of_some_portfolios_and_types_gets_those_and_their_levels(deliver, client, receiver):
    for pid in ("desk-a", "desk-b"):
        assert client.post("/portfolios", json={"portfolio_id": pid, "capital": 100000}).status_code == 201
    assert client.post("/groups", json={"group_id": "fx", "limits": {}}).status_code == 201
    assert client.post("/groups/fx/members", json={"portfolio_id": "desk-a"}).status_code == 200
    register(client, receiver.url, portfolios=["desk-a"], types=["halted", "resumed"])
    for target in ("/halt", "/resume"):
        for pid in ("desk-a", "desk-b"):
            assert client.post(target, json={"portfolio_id": pid, "reason": "drill"}).status_code == 200
    assert client.post("/groups/fx/halt", json={"reason": "group drill"}).status_code == 200
    assert client.post("/groups/firm/halt", json={"reason": "firm drill"}).status_code == 200
    deliverer = deliver()
    deliverer.work(deliverer.conn)
    got = [(e["type"], e["portfolio_id"], e["level"]) for e in receiver.events()]
    assert got == [("halted", "desk-a", None), ("resumed", "desk-a", None), ("halted", None, "fx"),
                   ("halted", None, "firm")]


def test_webhooks_are_for_admins_and_refuse_bad_input(client, keys, raw_client):
    trader = {"Authorization": f"Bearer {keys['trader']}"}
    assert raw_client.post("/webhooks", json={"url": "http://127.0.0.1:1/x"}, headers=trader).status_code == 403
    for body in ({"url": "ftp://x/y"}, {"url": "not a url"}, {"url": "http://"}, {"url": "http://h/" + "a" * 3000},
                 {"url": "http://[::1/x"}, {"url": "http://h:99999999/x"}, {"url": "http://user:pw@h/x"},
                 {"url": "http://h\u00e9.example/x"}, {"url": "http://h/x\ny"},
                 {"url": "http://h/x", "types": ["nope"]}, {"url": "http://h/x", "types": []},
                 {"url": "http://h/x", "secret": "short"}, {"url": "http://h/x", "portfolios": ["bad id!"]}):
        r = client.post("/webhooks", json=body)
        assert r.status_code == 422, (body, r.json)
    assert client.get("/webhooks/not-a-uuid").status_code == 422
    assert client.get("/webhooks/00000000-0000-0000-0000-000000000000").status_code == 404
    hook = register(client, "http://127.0.0.1:9/x", secret="a-secret-of-my-own")
    assert hook["secret"] == "a-secret-of-my-own"
    listed = client.get("/webhooks").json["webhooks"]
    assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]
    r = client.delete(f"/webhooks/{hook['id']}", json={"reason": "decommissioned"})
    assert r.status_code == 200 and r.json["active"] is False
    other = register(client, "http://127.0.0.1:9/y")
    assert client.delete(f"/webhooks/{other['id']}").status_code == 200  # (a reason is optional)
    r = raw_client.get("/events", headers={"Authorization": f"Bearer {keys['admin']}", "Last-Event-ID": "\u00b2"})
    assert r.status_code == 422, r.get_data()


def test_capital_corrections_instruments_and_expiries_are_events(client, clock, sql):
    config = client.get("/config").json["config"]
    assert client.put("/config", json={"config": {**config, "approval_ttl_seconds": 60},
                                       "reason": "approvals stand a minute"}).status_code == 200
    d = client.post("/process_trade", json=SEED_INTENT).json["decision"]
    assert d["status"] == "APPROVED"
    clock.advance(seconds=61)
    assert client.post("/marks", json={"prices": {"EURUSD": 1.1}}).status_code == 200  # sees it expired
    assert client.post("/capital", json={"amount": 5000, "reason": "top-up"}).status_code == 200
    d = client.post("/process_trade", json=SEED_INTENT).json["decision"]
    r = client.post("/positions/EURUSD/correct", json={"units": 1000, "avg_price": 1.1, "reason": "broker says 1,000"})
    assert r.status_code == 200, r.json
    instruments = client.get("/config").json["config"]["instruments"]
    r = client.put("/instruments", json={"instruments": {**instruments, "TSLA": {"asset_class": "equity",
                                                                                 "currency": "USD"}},
                                         "reason": "list TSLA"})
    assert r.status_code == 200, r.json
    events = sql("SELECT type, data FROM risk_events ORDER BY id")
    assert [t for t, _ in events] == ["config_changed", "approval_expired", "capital_changed", "position_corrected",
                                      "approval_voided", "instruments_changed"]
    expired = events[1][1]
    assert expired["symbol"] == "EURUSD" and float(expired["units"]) == 27272.72 and expired["direction"] == 1
    assert events[2][1]["reason"] == "top-up" and events[3][1]["actor"]["name"] == "test-admin"
    assert events[4][1]["note"] == "voided by a correction of the position"
    assert client.get("/audit/verify").json["ok"] is True


class Answering:
    """A TCP endpoint that answers every connection with ``reply`` (bytes, sent ``per_byte_s`` apart)."""

    def __init__(self, reply: bytes, per_byte_s: float = 0.0):
        import socket

        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/x"
        self.reply, self.per_byte_s = reply, per_byte_s
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        try:
            conn.recv(65536)
            for i in range(len(self.reply)) if self.per_byte_s else [None]:
                conn.sendall(self.reply if i is None else self.reply[i:i + 1])
                if i is not None:
                    time.sleep(self.per_byte_s)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.listener.close()


def test_a_receiver_that_is_not_http_or_trickles_fails_its_attempt_and_the_others_are_served(deliver, client,
                                                                                             receiver):
    ssh = Answering(b"SSH-2.0-OpenSSH_9.2\r\n")
    trickle = Answering(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100, per_byte_s=0.2)
    try:
        hooks = [register(client, url) for url in (ssh.url, trickle.url, receiver.url)]
        assert client.post("/halt", json={"reason": "drill"}).status_code == 200
        deliverer = deliver(timeout_s=1.0)
        started = time.monotonic()
        deliverer.work(deliverer.conn)
        took = time.monotonic() - started
        assert [e["type"] for e in receiver.events()] == ["switch_tripped", "halted"]  # the others' did not stop it
        ssh_first, trickle_first = (client.get(f"/webhooks/{h['id']}/deliveries").json["deliveries"][0]
                                    for h in hooks[:2])
        assert ssh_first["attempts"] == 1 and "BadStatusLine" in ssh_first["last_error"], ssh_first
        assert trickle_first["attempts"] == 1 and trickle_first["status"] == "pending", trickle_first
        assert took < 4, took  # the trickle cut at its 1 s deadline (20 s to send its answer)
    finally:
        ssh.close()
        trickle.close()


def test_a_disabled_webhook_gets_nothing_more(deliver, client, receiver):
    hook = register(client, receiver.url)
    crash_the_book(client)
    assert client.delete(f"/webhooks/{hook['id']}").status_code == 200
    deliverer = deliver()
    deliverer.work(deliverer.conn)
    assert receiver.received == []


def test_a_stream_ends_when_its_key_is_revoked(app, client, raw_client, keys):
    store = app.extensions["rpm_keys"]
    from app.services import Actor

    key, record = store.create("compliance", "short-lived", None, Actor("test-setup", "admin"))
    r = raw_client.get("/events?after=0", headers={"Authorization": f"Bearer {key}"}, buffered=False)
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    chunks = (chunk if isinstance(chunk, bytes) else chunk.encode() for chunk in r.response)
    assert next(chunks).startswith(b"retry:")
    store.revoke(record["id"], Actor("test-setup", "admin"))
    started = time.monotonic()
    tail = b"".join(chunks)  # the stream ends by itself
    assert b"revoked" in tail and time.monotonic() - started < 5
    r.close()


def test_streams_beyond_the_limit_are_refused_even_in_a_burst(settings, keys, clock):
    import dataclasses

    from app import create_app
    from app.api.events import _stream

    limited = dataclasses.replace(settings, events_max_streams=1)
    app = create_app(limited, clock=clock)
    try:
        client = app.test_client()
        headers = {"Authorization": f"Bearer {keys['admin']}"}
        first = client.get("/events?after=0", headers=headers, buffered=False)
        assert first.status_code == 200
        refused = client.get("/events?after=0", headers=headers)  # refused at the door once one runs
        assert refused.status_code == 503 and "RPM_EVENTS_MAX_STREAMS" in refused.json["message"]
        # a stream let through in a burst (past the door before the first took its place) ends when it starts,
        # telling its client to come back
        late = _stream(app.extensions["rpm"].uow, 0, None, None, limited, True, lambda: None)
        assert "too many event streams" in "".join(late)
        first.close()
        again = client.get("/events?after=0", headers=headers, buffered=False)
        assert again.status_code == 200
        again.close()
    finally:
        app.extensions["rpm"].db.dispose()


def test_the_documented_receiver_works_as_printed(deliver, client, capsys):
    """The receiver of docs/events.md, run as it is printed (its secret and port given), behind a real delivery."""
    import re
    import urllib.error
    import urllib.request
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "docs" / "events.md").read_text()
    code = re.search(r"A receiver, with its signature check.*?```python\n(.*?)```", readme, re.S).group(1)
    secret = "whsec_readme-receiver-secret-0123456789"
    code = code.replace('SECRET = b"whsec_..."', f"SECRET = {secret.encode()!r}")
    code, serve = code.rsplit("\n", 2)[0], code.rsplit("\n", 2)[1]
    assert serve.startswith("HTTPServer((") and serve.endswith(".serve_forever()")
    namespace: dict = {}
    exec(compile(code, "docs/events.md", "exec"), namespace)  # noqa: S102  (the page's own code)
    server = namespace["HTTPServer"](("127.0.0.1", 0), namespace["Receiver"])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/rpm-events"
        register(client, url, secret=secret)
        assert client.post("/halt", json={"reason": "drill"}).status_code == 200
        assert client.post("/resume", json={}).status_code == 200
        deliverer = deliver()
        deliverer.work(deliverer.conn)
        assert len(namespace["done"]) == 4 and namespace["applied"] == {"default": 4}
        assert "cancel every working order of default" in capsys.readouterr().out
        forged = urllib.request.Request(url, data=b'{"id": 99}', method="POST", headers={"RPM-Signature": "t=1,v1=00"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(forged, timeout=5)
        refused.value.close()
        assert refused.value.code == 401
    finally:
        server.shutdown()
        server.server_close()
