"""A standby made by pg_basebackup: failover by `pg_ctl promote` under load (the service finds the new primary by
itself through libpq's multi-host URL, answers 503 meanwhile and never an approval without its row, and no
acknowledged decision is missing after), and compliance reads served by the replica (DATABASE_READ_URL) with its
replication lag in the answer's headers, the trading path never reading it."""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.request

import pytest

from app import create_app
from app.services import Actor
from app.settings import Settings
from app.store.migrate import upgrade

from ..conftest import SEED_INTENT, http
from ..replication import Pair
from .test_hosts import Load

pytestmark = pytest.mark.slow


def rpm_database(node) -> tuple[str, dict[str, str]]:
    """An RPM database on ``node`` (migrated, the default portfolio made): its URL, a trader's and an admin's key."""
    node.sql("CREATE DATABASE rpm")
    url = f"postgresql+psycopg://postgres@127.0.0.1:{node.port}/rpm"
    upgrade(url)
    app = create_app(Settings(database_url=url))
    try:
        app.extensions["rpm"].uow.ensure_default()
        store = app.extensions["rpm_keys"]
        keys = {r: store.create(r, f"t-{r}", None, Actor("t", "admin"))[0] for r in ("trader", "admin", "compliance")}
    finally:
        app.extensions["rpm"].db.dispose()
    return url, keys


@pytest.fixture
def pair(request):
    made = Pair(synchronous=getattr(request, "param", False))
    yield made
    made.close()


@pytest.mark.parametrize(("pair", "stop"), [(True, "crash"), (False, "clean")], indirect=["pair"],
                         ids=["synchronous standby, primary crashed", "asynchronous standby, primary stopped cleanly"])
def test_failover_to_a_promoted_standby_loses_no_acknowledged_decision(pair, stop, servers, capsys):
    url, keys = rpm_database(pair.primary)
    standby = pair.make_standby()
    hosts = f"127.0.0.1:{pair.primary.port},127.0.0.1:{standby.port}"
    listed = f"postgresql://postgres@{hosts}/rpm?target_session_attrs=read-write"
    server = servers({"DATABASE_URL": listed, "RPM_CONNECT_TIMEOUT_S": "2", "RPM_CHECKPOINT_EVERY_SECONDS": "0"},
                     workers=2, threads=4)
    with Load(server.url, keys["trader"]) as load:
        time.sleep(2)
        mark = len(load.answers)
        (pair.primary.crash if stop == "crash" else pair.primary.stop_cleanly)()
        time.sleep(1)  # (what an operator's or a tool's detection takes)
        standby.promote()
        promoted = time.monotonic()
        while time.monotonic() < promoted + 30 and 200 not in [s for _, s, _ in load.answers[mark + 1:]]:
            time.sleep(0.05)
        recovered = time.monotonic() - promoted
        time.sleep(1)
    statuses = [s for _, s, _ in load.answers]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    acknowledged = load.acknowledged()
    stored = dict(standby.sql("SELECT intent_id, id FROM decisions WHERE intent_id LIKE 'load-%'", "rpm"))
    missing = {i for i in acknowledged if i not in stored}
    assert not missing, f"{len(missing)} acknowledged decision(s) missing on the new primary"
    assert all(stored[i] == d for i, d in acknowledged.items())
    # after the switch the service decides again, on the promoted standby
    assert 200 in statuses[:mark] and 200 in statuses[mark + 1:]
    # an intent answered 503 during the switch, sent again, is decided once
    refused = [i for i, s, _ in load.answers if s == 503]
    if refused:
        status, body = http("POST", server.url + "/process_trade", {**SEED_INTENT, "atr": 0.05, "intent_id": refused[0]},
                            key=keys["trader"])
        assert status == 200 and standby.sql("SELECT count(*) FROM decisions WHERE intent_id = %s", "rpm",
                                             (refused[0],))[0][0] == 1
    with capsys.disabled():
        print(f"\n[failover, {stop}] {statuses.count(200)} decided, {statuses.count(503)} answered 503 during the "
              f"switch, 0 other; deciding again {recovered:.1f} s after the promotion; {len(acknowledged)} acknowledged, all on "
              "the promoted standby")


def test_compliance_reads_come_from_the_replica_with_its_lag_and_trading_never_reads_it(pair, servers, capsys,
                                                                                           monkeypatch):
    url, keys = rpm_database(pair.primary)
    # a history to export: 100,000 decisions (copies of one, small documents), made before the standby
    server0 = servers({"DATABASE_URL": url}, workers=1, threads=2)
    assert http("POST", server0.url + "/process_trade", {**SEED_INTENT, "intent_id": "seed"}, key=keys["trader"])[0] == 200
    server0.stop()
    pair.primary.sql(
        "INSERT INTO decisions SELECT (jsonb_populate_record(d, jsonb_build_object('id', 'copy-' || g, 'seq', 1 + g, "
        "'intent_id', NULL, 'breakdown', '{}'::jsonb, 'state_before', '{}'::jsonb))).* "
        "FROM decisions d, generate_series(1, 100000) g WHERE d.intent_id = 'seed'", "rpm")
    standby = pair.make_standby()
    read_url = f"postgresql://postgres@127.0.0.1:{standby.port}/rpm"
    server = servers({"DATABASE_URL": url, "DATABASE_READ_URL": read_url}, workers=2, threads=4)
    trader, compliance = keys["trader"], keys["compliance"]

    status, answer = http("POST", server.url + "/process_trade", {**SEED_INTENT, "intent_id": "fresh"}, key=trader)
    assert status == 200
    pair.caught_up("rpm")
    request = urllib.request.Request(server.url + "/decisions?intent_id=fresh",
                                     headers={"Authorization": f"Bearer {compliance}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["RPM-Read-From"] == "replica"
        lag = float(response.headers["RPM-Replica-Lag-Seconds"])
        assert 0 <= lag < 5
        assert [d["id"] for d in json.loads(response.read())["decisions"]] == [answer["decision"]["id"]]
    # the trading path answers without the replica; the compliance reads are refused without it (never the primary)
    def lone(n: int) -> list[float]:
        times = []
        for _ in range(n):
            started = time.perf_counter()
            assert http("POST", server.url + "/process_trade", {**SEED_INTENT, "atr": 0.05}, key=trader)[0] == 200
            times.append((time.perf_counter() - started) * 1000)
        return times

    quiet = lone(60)
    pair.caught_up("rpm")
    stored = standby.sql("SELECT count(*) FROM decisions", "rpm")[0][0]  # what the export's snapshot will hold
    exported = {}

    def export():
        request = urllib.request.Request(server.url + "/decisions?format=csv",
                                         headers={"Authorization": f"Bearer {compliance}"})
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=120) as response:
            exported["from"] = response.headers["RPM-Read-From"]
            exported["lines"] = sum(1 for _ in response)
        exported["seconds"] = time.perf_counter() - started

    reader = threading.Thread(target=export)
    reader.start()
    # the export's session (a server-side cursor: DECLARE, then FETCH after FETCH), looked for on both servers by
    # the name compliance reads connect under (the primary's checkpointer streams the seeded rows with FETCH too)
    exporting = ("SELECT count(*) FROM pg_stat_activity WHERE datname = 'rpm' AND pid <> pg_backend_pid() AND "
                 "application_name = 'rpm-history' AND "
                 "(query LIKE 'FETCH%' OR query LIKE '%ORDER BY decisions.portfolio_id%')")
    on_standby = on_primary = 0
    while reader.is_alive() and not on_standby:
        on_standby = max(on_standby, standby.sql(exporting, "rpm")[0][0])
        on_primary = max(on_primary, pair.primary.sql(exporting, "rpm")[0][0])
    during = lone(60)
    while reader.is_alive():  # (the primary watched until the export ends)
        on_primary = max(on_primary, pair.primary.sql(exporting, "rpm")[0][0])
        time.sleep(0.05)
    reader.join(120)
    # every decision, and the header: an export cut short (a query the standby cancelled) ends without an error
    # a line-reading client notices, so it is counted
    assert exported["from"] == "replica" and exported["lines"] == stored + 1 > 100_000
    assert (on_standby, on_primary) == (1, 0)  # the export ran on the replica alone
    # without hot_standby_feedback the standby would cancel such an export once it replays trading's cleanup on
    # the primary (after max_standby_streaming_delay): `rpm serve` warns of a replica run so
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("DATABASE_READ_URL", read_url)
    import click

    from app.cli import _check_read_database, main

    capsys.readouterr()
    with click.Context(main):  # (as a command runs it: its connections closed at the end)
        _check_read_database(Settings.from_env())
    assert "hot_standby_feedback" not in capsys.readouterr().err
    standby.sql("ALTER SYSTEM SET hot_standby_feedback = off")
    standby.sql("SELECT pg_reload_conf()")
    with click.Context(main):
        _check_read_database(Settings.from_env())
    assert "a standby with hot_standby_feedback off" in capsys.readouterr().err
    standby.crash()
    assert http("POST", server.url + "/process_trade", {**SEED_INTENT, "atr": 0.05}, key=trader)[0] == 200
    status, body = http("GET", server.url + "/decisions", key=compliance, timeout=30)
    assert status == 503, body
    with capsys.disabled():
        print(f"\n[replica reads] lag {lag:.3f} s; export of {exported['lines'] - 1:,} decisions from the replica in "
              f"{exported['seconds']:.1f} s; lone decisions p50 {statistics.median(quiet):.1f} ms alone, "
              f"{statistics.median(during):.1f} ms during the export (same machine: the replica, the export's "
              "worker and the client share its 2 cores); replica down: trading 200, compliance reads 503")


def test_compliance_reads_take_at_most_their_share_of_a_process(database_url, tmp_path, keys):
    """RPM_HISTORY_READS: one export streaming holds the only slot; another compliance read is 503 at once, trading
    is not held; once the export ends, reads are served again."""
    from app.settings import Settings as S

    app = create_app(S(database_url=database_url, instance_path=str(tmp_path / "i"), history_reads=1))
    try:
        client = app.test_client()
        compliance, trader = ({"Authorization": f"Bearer {keys[r]}"} for r in ("compliance", "trader"))
        export = client.get("/decisions?format=csv", headers=compliance, buffered=False)
        assert export.status_code == 200
        refused = client.get("/decisions", headers=compliance)
        assert refused.status_code == 503 and "RPM_HISTORY_READS" in refused.json["message"]
        assert client.post("/process_trade", json=SEED_INTENT, headers=trader).status_code == 200
        export.close()
        assert client.get("/decisions", headers=compliance).status_code == 200
    finally:
        app.extensions["rpm"].db.dispose()


def test_rpm_serve_refuses_a_read_database_that_is_not_a_replica_of_its_own(database_url, empty_database_url):
    import os
    import subprocess
    import sys

    from ..conftest import ROOT

    upgrade(empty_database_url)  # another trail: its own trail id
    done = subprocess.run([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "DATABASE_URL": database_url,
                                            "DATABASE_READ_URL": empty_database_url, "RPM_PORT": "1"})
    assert done.returncode == 1 and "not a replica of this database" in done.stderr, done.stderr[-500:]
