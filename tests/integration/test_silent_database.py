"""SPEC §9: a silent or unreachable database answers 503 within a documented bound and never hangs; the
first request after the database returns succeeds; a value the database cannot store is not a 503.

"Silent" is a proxy that keeps every TCP connection open and accepts new ones but forwards nothing
(TcpProxy.stall): what a stopped backend or a black-holed network looks like to the client, where no
error ever comes and no server-side timeout can fire.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from decimal import Decimal

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from app import create_app
from app.compliance import DecisionFilter
from app.services import Actor
from app.settings import Settings
from app.store.database import Database, DatabaseUnavailable
from app.store.migrate import migration_status

from ..conftest import SEED_INTENT, TcpProxy, http

SILENCE_MS = 1500  # RPM_DB_SILENCE_TIMEOUT_MS of the servers below
CONNECT_S = 2  # RPM_CONNECT_TIMEOUT_S (psycopg's least)
# a request holding a connection is cut after SILENCE_MS, one opening a connection gives up after CONNECT_S;
# the watchdog looks every 50 ms, the rest is HTTP and the slack of a busy machine
BOUND = max(SILENCE_MS / 1000, CONNECT_S) + 1.0  # (the slack: a busy 2-core machine)
TINY_MS = 300  # the in-process tests' bound


@pytest.fixture
def proxy(database_url):
    """(a TcpProxy in front of the test database, the database's URL through it)."""
    url = make_url(database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    yield proxy, url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    proxy.close()


def server_env(proxied: str) -> dict[str, str]:
    # lock and statement timeouts below the silence bound, as the configuration table asks
    return {"DATABASE_URL": proxied, "RPM_DB_SILENCE_TIMEOUT_MS": str(SILENCE_MS),
            "RPM_CONNECT_TIMEOUT_S": str(CONNECT_S), "RPM_LOCK_TIMEOUT_MS": "1000", "RPM_STATEMENT_TIMEOUT_MS": "1000"}


def timed(method: str, url: str, body=None, key: str | None = None):
    """(status, answer, seconds); a request still unanswered well past the bound fails the test."""
    started = time.monotonic()
    status, answer = http(method, url, body, key=key, timeout=BOUND + 5)
    return status, answer, time.monotonic() - started


def bounded(fn, limit: float):
    """(seconds, what fn returned or raised), run in a thread so that a hang fails the test instead of
    blocking it (the thread is left behind, blocked until the proxy closes)."""
    outcome: list = []

    def run():
        try:
            outcome.append(fn())
        except Exception as exc:  # the outcome under test: reported, not raised in the thread
            outcome.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert outcome, f"still waiting for the database after {limit} s"
    return time.monotonic() - started, outcome[0]


def trade(intent_id: str) -> dict:
    return {**SEED_INTENT, "atr": 0.5, "intent_id": intent_id}  # small: a dozen fit in the symbol limit


@pytest.mark.slow
def test_a_silent_database_answers_503_within_the_bound_and_the_first_request_after_succeeds(
        servers, proxy, keys, sql, capsys):
    proxy, proxied = proxy
    server = servers(server_env(proxied), workers=2, threads=4)
    trader = keys["trader"]
    assert http("POST", server.url + "/process_trade", trade("warm"), key=trader)[0] == 200
    rounds = []
    for n in range(3):
        proxy.stall()
        status, answer, trade_s = timed("POST", server.url + "/process_trade", trade(f"silent-{n}"), key=trader)
        assert status == 503 and trade_s < BOUND, (status, answer, trade_s)
        assert "decision" not in answer
        ready, readiness, ready_s = timed("GET", server.url + "/health/ready")
        assert ready == 503 and readiness["database"] == "unavailable" and ready_s < BOUND, (ready, readiness, ready_s)
        proxy.resume()
        status, answer, first_s = timed("POST", server.url + "/process_trade", trade(f"after-{n}"), key=trader)
        assert status == 200 and answer["decision"]["status"] == "APPROVED", (status, answer)
        rounds.append((trade_s, ready_s, first_s))
    stored = {row[0] for row in sql("SELECT intent_id FROM decisions")}
    assert stored == {"warm", "after-0", "after-1", "after-2"}
    with capsys.disabled():
        print(f"\n[silent database] bound {SILENCE_MS} ms (connect {CONNECT_S} s): "
              + "; ".join(f"trade 503 in {t:.2f} s, readiness 503 in {r:.2f} s, then 200 in {f:.2f} s"
                          for t, r, f in rounds))


def pooled_connections(proxy: TcpProxy, url: str, key: str, wanted: int) -> int:
    """Concurrent reads until the server holds ``wanted`` open connections (idle in its pool, afterwards)."""

    def open_connections() -> int:  # the proxy closes its side of a connection the other side closed
        return sum(client.fileno() != -1 for client, _ in proxy.pairs)

    with ThreadPoolExecutor(8) as pool:
        for _ in range(50):
            if open_connections() >= wanted:
                break
            assert all(s == 200 for s, _ in pool.map(lambda _: http("GET", url + "/portfolio", key=key), range(8)))
    assert open_connections() >= wanted
    return open_connections()


@pytest.mark.slow
def test_the_first_request_after_an_outage_succeeds(servers, proxy, keys, sql, capsys):
    proxy, proxied = proxy
    # one worker: every request meets the same pool, with several idle connections that the outage kills.
    # Keys from the cache: the decisions go straight to the raw connection of the pipelined path (a key
    # looked up through the ORM would have SQLAlchemy's own disconnect handling renew the pool first)
    server = servers({**server_env(proxied), "RPM_AUTH_CACHE_SECONDS": "600"}, workers=1, threads=8)
    trader = keys["trader"]
    seen = pooled_connections(proxy, server.url, trader, 3)
    proxy.cut()
    during = http("POST", server.url + "/process_trade", trade("during"), key=trader)
    assert during[0] == 503
    proxy.restore()
    after = http("POST", server.url + "/process_trade", trade("after-outage"), key=trader)
    assert after[0] == 200 and after[1]["decision"]["status"] == "APPROVED", after
    # an outage no request saw: every idle connection died meanwhile
    seen_idle = pooled_connections(proxy, server.url, trader, 3)
    proxy.cut()
    proxy.restore()
    unseen = http("POST", server.url + "/process_trade", trade("after-unseen-outage"), key=trader)
    assert unseen[0] == 200 and unseen[1]["decision"]["status"] == "APPROVED", unseen
    assert {row[0] for row in sql("SELECT intent_id FROM decisions")} == {"after-outage", "after-unseen-outage"}
    with capsys.disabled():
        print(f"\n[outage ended] {seen} pooled connections cut, one request 503, then the first request: "
              f"{after[0]}; {seen_idle} cut while idle, then the first request: {unseen[0]}")


def test_a_silent_call_fails_within_the_bound_on_every_path(proxy, capsys):
    """In process, each way RPM reaches the database: an ORM transaction, the raw connection of the
    pipelined decisions, and the readiness query."""
    proxy, proxied = proxy
    db = Database(proxied, connect_timeout_s=CONNECT_S, silence_timeout_ms=TINY_MS)

    def orm():
        with db.transaction() as session:
            return session.execute(text("SELECT 1")).scalar()

    def raw():
        with db.connection() as conn:
            return conn.execute("SELECT 1").fetchone()[0]

    def ready():
        status = migration_status(db)
        if not status["ready"]:
            raise DatabaseUnavailable(status["message"])
        return 1

    waits = {}
    try:
        for name, call in (("transaction", orm), ("connection", raw), ("readiness", ready)):
            assert call() == 1  # an idle connection in the pool, which the silence catches
            proxy.stall()
            waited, outcome = bounded(call, 10)
            proxy.resume()
            assert isinstance(outcome, DatabaseUnavailable), outcome
            assert waited < TINY_MS / 1000 + 0.5, (name, waited)
            assert call() == 1  # and the next one succeeds
            waits[name] = waited
    finally:
        db.dispose()
    with capsys.disabled():
        print(f"\n[silent call, bound {TINY_MS} ms] " + ", ".join(f"{k} 503 in {v:.2f} s" for k, v in waits.items()))


def test_a_forked_process_watches_its_own_calls(database_url):
    """gunicorn forks its workers: a child gets none of its parent's threads, so it must start its own
    watchdog (here the call is a statement slower than the bound: cut as a silent one would be)."""
    parent = Database(database_url, silence_timeout_ms=TINY_MS)
    with parent.connection() as conn:  # the parent's watchdog is running
        conn.execute("SELECT 1")
    parent.dispose()
    with warnings.catch_warnings():
        # Python 3.12+ warns of a fork with threads running (the watchdog, here on purpose); gunicorn's
        # master, which forks the workers, runs none
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child leaves through os._exit only: pytest's machinery is the parent's
        code = 1
        try:
            db = Database(database_url, silence_timeout_ms=TINY_MS)
            started = time.monotonic()
            try:
                with db.connection() as conn:
                    conn.execute("SELECT pg_sleep(3)")
            except DatabaseUnavailable:
                code = 0 if time.monotonic() - started < TINY_MS / 1000 + 0.5 else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0:  # a child stuck for good must not hang the suite
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child did not finish in 20 s")
        time.sleep(0.05)
    status = waited[1]
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_slow_export_is_not_cut_but_a_silent_one_is(proxy, monkeypatch, tmp_path, clock, capsys):
    """The CSV export streams over one connection for as long as its client takes: the bound is per
    batch fetched from the database, not per export."""
    proxy, proxied = proxy
    monkeypatch.setenv("RPM_DB_SILENCE_TIMEOUT_MS", str(TINY_MS))
    app = create_app(replace(Settings.from_env(), database_url=proxied, instance_path=str(tmp_path)), clock=clock)
    try:
        trading, compliance = app.extensions["rpm"].trading, app.extensions["rpm_compliance"]
        for i in range(5):
            trading.process_trade(trade(f"csv-{i}"), Actor("t", "trader"))
            clock.advance(minutes=1)
        started = time.monotonic()
        chunks = []
        for chunk in compliance.decisions_csv(DecisionFilter(None)):
            chunks.append(chunk)
            time.sleep(3 * TINY_MS / 1000)  # a slow client: three bounds between two batches
        slow_s = time.monotonic() - started
        assert "".join(chunks).count("\n") == 6 and slow_s > 3 * TINY_MS / 1000

        export = compliance.decisions_csv(DecisionFilter(None))
        assert next(export).count("\n") == 6
        proxy.stall()
        waited, outcome = bounded(lambda: list(export), 10)
        assert isinstance(outcome, OperationalError), outcome
        assert waited < TINY_MS / 1000 + 0.5
    finally:
        proxy.resume()
        app.extensions["rpm"].db.dispose()
    with capsys.disabled():
        print(f"\n[export, bound {TINY_MS} ms] slow client: {slow_s:.2f} s, not cut; "
              f"database silent mid-export: cut in {waited:.2f} s")


def test_a_value_the_database_cannot_store_is_rejected_not_unavailable(database_url, sql):
    """The backstop behind the input domain (SPEC §9): SQLSTATE class 22 is the request's fault (422), on
    every path; the connection, and the pool, stay as they were."""
    from app.store.database import DataRejected  # here: the other tests run on a version without it

    db = Database(database_url)
    too_big = Decimal("1e20")  # 21 digits before the point: NUMERIC(28, 10) holds 18
    try:
        with db.transaction() as session:
            session.execute(text("CREATE TABLE scratch (x NUMERIC(28, 10))"))
        with pytest.raises(DataRejected, match="NumericValueOutOfRange"), db.transaction() as session:
            session.execute(text("INSERT INTO scratch VALUES (:x)"), {"x": too_big})
        with pytest.raises(DataRejected, match="InvalidTextRepresentation"), db.reader() as session:
            session.execute(text("SELECT CAST(:x AS numeric)"), {"x": "1,5"})
        # the pipelined decisions' way
        with pytest.raises(DataRejected, match="NumericValueOutOfRange"), db.connection() as conn, conn.pipeline():
            conn.execute("INSERT INTO scratch VALUES (%s)", [too_big])
        assert not issubclass(DataRejected, DatabaseUnavailable)
        with db.transaction() as session:
            session.execute(text("INSERT INTO scratch VALUES (:x)"), {"x": Decimal("1e17")})
    finally:
        db.dispose()
    assert sql("SELECT x FROM scratch") == [(Decimal("1e17"),)]


def test_a_transaction_left_idle_gives_its_portfolio_lock_back(database_url):
    """The server's side of a connection lost to a one-way partition (or cut by the watchdog before the
    server noticed): an open transaction idle for IDLE_IN_TRANSACTION_FACTOR silence bounds is ended by the
    server, and the portfolio's row lock it held is free again (it would otherwise be held for hours)."""
    from app.store.database import IDLE_IN_TRANSACTION_FACTOR

    db = Database(database_url, silence_timeout_ms=TINY_MS)
    other = create_engine(database_url)
    try:
        with db.connection() as conn:
            conn.execute("SELECT id FROM portfolios WHERE id = 'default' FOR UPDATE")
            time.sleep(IDLE_IN_TRANSACTION_FACTOR * TINY_MS / 1000 + 0.5)  # the client goes quiet, lock held
            with other.begin() as free:
                assert free.execute(text("SELECT id FROM portfolios WHERE id = 'default' FOR UPDATE NOWAIT")
                                    ).scalar() == "default"
    except DatabaseUnavailable:
        pass  # the rollback of the ended session fails: the connection is gone, as it should be
    finally:
        other.dispose()
        db.dispose()
