"""The Python client (app/client.py) against real `rpm serve` processes: trades, retries that decide an intent once
across 503s and lost answers, an exception per error status, timeouts, and the `rpm` commands' --url mode."""

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy.engine import make_url

from app.client import (
    Client,
    Conflict,
    ConnectionFailed,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    RpmError,
    TimedOut,
    Unauthorized,
    Unavailable,
)

from ..conftest import ROOT, SEED_INTENT, TcpProxy, free_port

pytestmark = pytest.mark.slow

NOWHERE = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"  # a command that read the local database would fail


class Recorded(httpx.HTTPTransport):
    """The network, and a note of each attempt: the intent_id it carried and what came back (a status, or the name
    of the failure)."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts: list[tuple[str | None, int | str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content or b"null")
        intent_id = body.get("intent_id") if isinstance(body, dict) else None
        try:
            response = super().handle_request(request)
        except httpx.TransportError as exc:
            self.attempts.append((intent_id, type(exc).__name__))
            raise
        self.attempts.append((intent_id, response.status_code))
        return response

    def outcomes(self) -> list[int | str]:
        return [outcome for _, outcome in self.attempts]


def proxied_server(servers, database_url, env=None):
    """A server whose database connections go through a proxy the test can cut or stall."""
    url = make_url(database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    return proxy, servers({"DATABASE_URL": proxied, **(env or {})}, workers=1, threads=4)


def until(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_a_trade_through_the_client_carries_an_intent_id_and_its_repeat_is_the_stored_decision(servers, database_url,
                                                                                              keys, sql):
    server = servers({"DATABASE_URL": database_url}, workers=1, threads=4)
    with Client(server.url, keys["trader"]) as trader, Client(server.url, keys["compliance"]) as compliance:
        assert trader.whoami()["role"] == "trader"
        answer = trader.process_trade(**SEED_INTENT)
        decision = answer["decision"]
        assert decision["status"] == "APPROVED" and decision["approved_trade"]["position_units"] == 27272.72
        assert decision["replay"] is False and uuid.UUID(decision["intent_id"])  # made by the client
        again = trader.process_trade(**SEED_INTENT, intent_id=decision["intent_id"])
        assert again["decision"]["replay"] is True and again["decision"]["id"] == decision["id"]
        assert sql("SELECT count(*) FROM decisions")[0][0] == 1

        batch = trader.process_trades([{**SEED_INTENT, "symbol": "GBPUSD", "current_price": 1.25},
                                       {**SEED_INTENT, "confidence_score": 0.5}])
        assert [d["status"] for d in batch["decisions"]] == ["APPROVED", "REJECTED"]
        assert all(uuid.UUID(d["intent_id"]) for d in batch["decisions"])
        assert batch["decisions"][1]["rejected_trade"]["reason_code"] == "CONFIDENCE_TOO_LOW"
        assert trader.what_if(**SEED_INTENT)["decision"]["what_if"] is True
        assert sql("SELECT count(*) FROM decisions")[0][0] == 3  # a what-if stores nothing

        marked = trader.marks({"EURUSD": 1.105})
        assert marked["portfolio_state"]["equity"] == pytest.approx(100136.36, abs=0.01)
        assert trader.portfolio()["open_positions"] == 2
        closed = trader.close_position("EURUSD", 1.105)
        assert closed["realised_pnl"] == pytest.approx(136.36, abs=0.01)

        found = compliance.decisions(intent_id=decision["intent_id"])
        assert [d["id"] for d in found["decisions"]] == [decision["id"]] and found["next_cursor"] is None
        assert len(list(compliance.iter_decisions(limit=1))) == 3  # page after page
        assert compliance.decision(decision["id"])["id"] == decision["id"]
        assert compliance.verify_audit()["ok"] is True
        report = compliance.eod_report(datetime.now(UTC).date())
        assert report["trading_day"] == datetime.now(UTC).date().isoformat()
        assert compliance.eod_report(datetime.now(UTC).date(), fmt="csv").startswith("level,")


def test_a_trade_is_retried_across_503s_with_one_intent_id_and_decided_once(servers, database_url, keys, sql):
    proxy, server = proxied_server(servers, database_url, {"RPM_CONNECT_TIMEOUT_S": "1"})
    try:
        proxy.cut()
        refused = Recorded()
        with Client(server.url, keys["trader"], retries=2, backoff=0.05, transport=refused) as client, \
                pytest.raises(Unavailable) as given_up:
            client.process_trade(**SEED_INTENT)
        assert refused.outcomes() == [503, 503, 503]  # the first try and 2 retries
        assert len({intent for intent, _ in refused.attempts}) == 1
        assert given_up.value.status == 503 and given_up.value.request_id and "database" in given_up.value.message

        recorded = Recorded()
        with Client(server.url, keys["trader"], retries=50, backoff=0.05, max_backoff=0.2, transport=recorded) as client, \
                ThreadPoolExecutor(1) as pool:
            call = pool.submit(client.process_trade, **SEED_INTENT)
            until(lambda: len(recorded.attempts) >= 2)
            proxy.restore()  # the database is back while the client retries
            answer = call.result(60)
        outcomes = recorded.outcomes()
        assert outcomes[-1] == 200 and set(outcomes[:-1]) == {503} and len(outcomes) >= 3, outcomes
        intent_id = answer["decision"]["intent_id"]
        assert {intent for intent, _ in recorded.attempts} == {intent_id}
        assert answer["decision"]["status"] == "APPROVED" and answer["decision"]["replay"] is False
        assert sql("SELECT count(*) FROM decisions WHERE intent_id = :i", i=intent_id)[0][0] == 1
        assert sql("SELECT count(*) FROM decisions")[0][0] == 1  # nothing of the call that gave up
    finally:
        proxy.close()


def test_an_answer_lost_to_a_timeout_is_retried_with_its_intent_id_and_answered_with_the_stored_decision(
        servers, database_url, keys, sql):
    proxy, server = proxied_server(servers, database_url)
    try:
        with Client(server.url, keys["trader"], read_timeout=0.5, retries=0) as impatient:
            proxy.stall()  # the database silent: the server waits (up to RPM_DB_SILENCE_TIMEOUT_MS), the client not
            started = time.monotonic()
            with pytest.raises(TimedOut) as timed_out:
                impatient.health()
            assert time.monotonic() - started < 2 and "ReadTimeout" in str(timed_out.value)
            assert timed_out.value.status is None and isinstance(timed_out.value, ConnectionFailed)
            proxy.resume()

        recorded = Recorded()
        with Client(server.url, keys["trader"], read_timeout=1.0, retries=3, backoff=1.0, max_backoff=1.0,
                    transport=recorded) as client, ThreadPoolExecutor(1) as pool:
            proxy.stall()
            call = pool.submit(client.process_trade, **SEED_INTENT)
            until(lambda: len(recorded.attempts) >= 1)
            proxy.resume()  # the first attempt is decided now, its answer sent to a client that stopped waiting
            answer = call.result(60)
        assert recorded.outcomes()[0] == "ReadTimeout" and recorded.outcomes()[-1] == 200, recorded.attempts
        intent_id = answer["decision"]["intent_id"]
        assert {intent for intent, _ in recorded.attempts} == {intent_id}
        # decided once, by the attempt whose answer was lost: the retry got that decision back
        assert answer["decision"]["replay"] is True
        assert sql("SELECT id FROM decisions WHERE intent_id = :i", i=intent_id) == [(answer["decision"]["id"],)]
    finally:
        proxy.close()


def test_each_error_status_is_its_own_exception_and_no_4xx_is_retried(servers, database_url, keys):
    server = servers({"DATABASE_URL": database_url, "RPM_AUTH_FAILURES_PER_MINUTE": "3"}, workers=1, threads=4)
    recorded = Recorded()
    trader = Client(server.url, keys["trader"], retries=3, transport=recorded)
    with pytest.raises(Invalid) as invalid:
        trader.process_trade(**{**SEED_INTENT, "confidence_score": 1.5})
    assert invalid.value.status == 422 and invalid.value.code == 422 and "confidence_score" in invalid.value.errors
    with pytest.raises(Forbidden) as forbidden:
        trader.halt("a trader may not halt")
    assert forbidden.value.status == 403 and forbidden.value.request_id
    with pytest.raises(NotFound) as not_found:
        trader.health("nope")
    assert not_found.value.status == 404 and "nope" in not_found.value.message
    first = trader.process_trade(**SEED_INTENT, intent_id="sig-1")["decision"]
    with pytest.raises(Conflict) as conflict:
        trader.process_trade(**{**SEED_INTENT, "confidence_score": 0.9}, intent_id="sig-1")
    assert conflict.value.status == 409 and conflict.value.details["decision_id"] == first["id"]
    assert recorded.outcomes() == [422, 403, 404, 200, 409]  # each once: an answer, not a failure
    trader.close()
    with Client(server.url, keys["compliance"]) as compliance, pytest.raises(NotFound):
        compliance.decision(str(uuid.uuid4()))
    with Client(server.url, keys["trader_elsewhere"]) as elsewhere, pytest.raises(Forbidden):
        elsewhere.portfolio("default")

    wrong = Recorded()
    with Client(server.url, "rpm_" + "x" * 40, transport=wrong) as stranger:
        with pytest.raises(Unauthorized) as unauthorized:
            stranger.health()
        assert unauthorized.value.status == 401 and unauthorized.value.headers["www-authenticate"].startswith("Bearer")
        with pytest.raises(RateLimited) as limited:
            for _ in range(5):
                with pytest.raises(Unauthorized):
                    stranger.health()
    assert limited.value.status == 429 and limited.value.retry_after == 60
    assert wrong.outcomes() == [401, 401, 401, 429]
    assert all(isinstance(e.value, RpmError) for e in (invalid, forbidden, not_found, conflict, limited))


def test_no_server_is_a_connection_error_after_bounded_retries_and_a_full_backlog_a_connect_timeout():
    recorded = Recorded()
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with Client(url, "k", retries=2, backoff=0.05, transport=recorded) as client, \
            pytest.raises(ConnectionFailed) as refused:
        client.fill(str(uuid.uuid4()), 1000, 1.1)  # not idempotent, but never sent: tried again
    assert recorded.outcomes() == ["ConnectError"] * 3 and time.monotonic() - started < 2
    assert refused.value.status is None and "no answer from" in str(refused.value)
    assert not isinstance(refused.value, TimedOut)

    with socket.socket() as listener:  # accepts no connection, and its backlog is full: a SYN goes unanswered
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        held = [socket.socket() for _ in range(3)]
        for s in held:
            s.setblocking(False)
            s.connect_ex(listener.getsockname())
        try:
            started = time.monotonic()
            with Client(f"http://127.0.0.1:{listener.getsockname()[1]}", connect_timeout=0.3, retries=0) as client, \
                    pytest.raises(TimedOut) as timed_out:
                client.live()
            assert "ConnectTimeout" in str(timed_out.value) and time.monotonic() - started < 3
        finally:
            for s in held:
                s.close()
    with pytest.raises(ValueError):
        Client("localhost:8005")


def rpm(*args, database_url=NOWHERE, **env):
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "DATABASE_URL": database_url, **env})


def one_line_error(done):
    return (done.returncode == 1 and "Traceback" not in done.stderr and done.stderr.startswith("Error: ")
            and done.stderr.count("\n") == 1)


def test_the_rpm_commands_act_on_a_server_given_by_url_with_the_local_output(servers, database_url, keys, tmp_path):
    server = servers({"DATABASE_URL": database_url}, workers=1, threads=4)
    halted = rpm("halt", "--reason", "desk drill", "--json", "--url", server.url, "--key", keys["admin"])
    assert halted.returncode == 0, halted.stderr
    assert json.loads(halted.stdout)["trading_state"] == "HALTED"
    table = tmp_path / "instruments.json"
    table.write_text(json.dumps({"AAPL": {"asset_class": "equity", "currency": "USD", "multiplier": 1,
                                          "lot_size": 1}}))
    remote = {"RPM_URL": server.url, "RPM_KEY": keys["admin"]}  # the environment's names for --url and --key
    put = rpm("instruments", "set", str(table), "--reason", "equities desk", **remote)
    assert put.returncode == 0 and "1 instrument(s)" in put.stdout, put

    # each command through the server, and on the database itself: the same output (the same refusal too)
    today = datetime.now(UTC).date().isoformat()
    commands = [["status"], ["instruments", "list"], ["groups"], ["report", "eod", "--date", today],
                ["status", "--portfolio", "nope"]]
    with ThreadPoolExecutor(2) as pool:  # (each `rpm` spends most of its start importing)
        remote_runs = list(pool.map(lambda args: rpm(*args, **remote), commands))
        local_runs = list(pool.map(lambda args: rpm(*args, database_url=database_url), commands))
    for args, remote_out, local_out in zip(commands, remote_runs, local_runs, strict=True):
        assert (remote_out.returncode, remote_out.stdout, remote_out.stderr) == \
            (local_out.returncode, local_out.stdout, local_out.stderr), args
    status, listed, _, _, unknown = remote_runs
    assert status.returncode == 0 and status.stdout.startswith("portfolio default: HALTED"), status
    assert "manual_halt          TRIPPED  desk drill" in status.stdout
    assert "AAPL" in listed.stdout
    assert one_line_error(unknown) and "unknown portfolio 'nope'" in unknown.stderr, unknown.stderr

    resumed = rpm("resume", **remote)
    assert resumed.returncode == 0 and resumed.stdout.startswith("resumed portfolio default: trading state ACTIVE")
    with ThreadPoolExecutor(2) as pool:
        wrong_key, not_admin, no_key = pool.map(lambda args: rpm(*args), [
            ["status", "--url", server.url, "--key", "rpm_" + "x" * 40],
            ["halt", "--reason", "r", "--url", server.url, "--key", keys["trader"]],
            ["groups", "--url", server.url]])
    assert one_line_error(wrong_key) and "API key" in wrong_key.stderr, wrong_key.stderr
    assert one_line_error(not_admin), not_admin.stderr
    assert no_key.returncode == 2 and "--key" in no_key.stderr


def test_a_server_that_is_down_is_one_line_and_a_non_zero_exit():
    down = f"http://127.0.0.1:{free_port()}"
    status = rpm("status", "--url", down, "--key", "k")
    assert one_line_error(status) and "no answer from" in status.stderr, status.stderr
    demo = rpm("demo", "--url", down, "--trader-key", "t", "--admin-key", "a")
    assert one_line_error(demo) and "no answer from" in demo.stderr and demo.stdout == "", demo
    bad = rpm("status", "--url", "localhost:8005", "--key", "k")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_the_demo_runs_against_a_live_server_through_the_client(servers, database_url, keys):
    server = servers({"DATABASE_URL": database_url}, workers=1, threads=4)
    done = rpm("demo", "--url", server.url, "--trader-key", keys["trader"], "--admin-key", keys["admin"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"RPM demo against {server.url}")
    assert "APPROVED     27,272.72 units" in done.stdout and "intent while halted         REJECTED  HALTED" in done.stdout
    assert "Demo complete" in done.stdout


class Stranger:
    """Not RPM: a server on a port that reads each request and then either closes the connection without an answer
    (an answer lost) or answers 200 with an HTML page (a proxy's sign-in page); it counts the requests."""

    def __init__(self, mode: str):
        import threading

        self.mode, self.requests = mode, []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append(head.split(b"\r\n")[0].decode())
                if self.mode == "html":
                    page = b"<html><body>sign in</body></html>"
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(page), page))

    def close(self) -> None:
        self.listener.close()


def test_a_call_that_acts_again_when_repeated_is_not_retried_once_sent_and_a_trade_is():
    """An answer lost after the request went out: a resume, a halt, marks, a PUT would act a second time (a resume
    retried late lifts a halt placed meanwhile), so each is sent once; a trade is retried with its intent_id."""
    stranger = Stranger("drop")
    try:
        with Client(stranger.url, "k", retries=2, backoff=0.01) as client:
            for call in (lambda: client.resume(force=True, reason="r"), lambda: client.halt("r"),
                         lambda: client.marks({"EURUSD": 1.1}), lambda: client.put_config({}, reason="r"),
                         lambda: client.halt_group("fx", "r"), lambda: client.firm_marks({"EURUSD": 1.1})):
                before = len(stranger.requests)
                with pytest.raises(ConnectionFailed):
                    call()
                assert len(stranger.requests) == before + 1, stranger.requests[before:]
            before = len(stranger.requests)
            with pytest.raises(ConnectionFailed, match="after 3 attempts"):
                client.process_trade(**{k: v for k, v in SEED_INTENT.items()})
            assert stranger.requests[before:] == ["POST /process_trade HTTP/1.1"] * 3
    finally:
        stranger.close()


def test_an_answer_that_is_not_rpms_json_is_an_rpm_error_and_one_line_from_the_cli():
    stranger = Stranger("html")
    try:
        with Client(stranger.url, "k", retries=0) as client, pytest.raises(RpmError, match="is not RPM's JSON"):
            client.portfolio()
        done = rpm("status", "--url", stranger.url, "--key", "k")
        assert one_line_error(done) and "is not RPM's JSON (text/html)" in done.stderr, done.stderr
    finally:
        stranger.close()
