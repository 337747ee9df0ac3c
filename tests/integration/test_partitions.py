"""Decisions partitioned by month, idempotency across months, and archiving a month (`rpm audit archive`): the
chains still verify across what left, every archived decision still proves from its file."""

from __future__ import annotations

import gzip
import json

import pytest
import sqlalchemy.exc
from sqlalchemy import create_engine, text

from app.anchor import ProofError
from app.archive import Archiver, verify_file
from app.errors import Invalid
from app.services import Actor
from app.store import partitions

from ..conftest import SEED_INTENT
from .test_audit_anchor import tamper

OPERATOR = Actor("test-operator", "admin")


@pytest.fixture
def months(app, clock):
    """The test clock's month's partition and the next ones (its decisions go there, not to the default one)."""
    return app.extensions["rpm"].uow.ensure_partitions()


def trade(client, portfolio="default", **fields):
    r = client.post("/process_trade", json={**SEED_INTENT, "atr": 0.01, "portfolio_id": portfolio, **fields})
    assert r.status_code == 200, r.json
    return r.json["decision"]


def home(sql, decision_id):
    return sql("SELECT tableoid::regclass::text FROM decisions WHERE id = :i", i=decision_id)[0][0]


def test_a_decision_lands_in_its_months_partition_and_months_ahead_are_made(app, client, clock, months, sql):
    assert [f"{m:%Y-%m}" for m in months] == ["2026-03", "2026-04", "2026-05", "2026-06"]
    assert home(sql, trade(client)["id"]) == "decisions_2026_03"
    clock.advance(days=31)
    assert home(sql, trade(client)["id"]) == "decisions_2026_04"
    assert app.extensions["rpm"].uow.ensure_partitions() == [partitions.parse_month("2026-07")]
    # a month whose decisions went to the default partition (made before its partition) is not made after
    clock.advance(days=365)
    assert home(sql, trade(client)["id"]) == "decisions_default"
    assert partitions.parse_month("2027-04") not in app.extensions["rpm"].uow.ensure_partitions()


def test_an_intent_id_is_decided_once_whatever_the_month(client, clock, months, sql, database_url):
    first = trade(client, intent_id="sig-1")
    clock.advance(days=40)  # another month, another partition
    again = client.post("/process_trade", json={**SEED_INTENT, "atr": 0.01, "intent_id": "sig-1"}).json["decision"]
    assert again["id"] == first["id"] and again["replay"]
    assert sql("SELECT count(*) FROM decisions WHERE intent_id = 'sig-1'")[0][0] == 1
    # and the database refuses it even to a writer that skips the portfolio's lock: the unique key is its own table
    engine = create_engine(database_url)
    try:
        with pytest.raises(sqlalchemy.exc.IntegrityError, match="pk_decision_intents"), engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO decisions SELECT (jsonb_populate_record(d, jsonb_build_object('id', 'copy', 'seq', 99, "
                "'decided_at', '2026-05-02T12:00:00+00:00'))).* FROM decisions d WHERE intent_id = 'sig-1'"))
    finally:
        engine.dispose()


def test_a_month_archived_then_dropped_leaves_a_trail_that_verifies_and_proves(app, client, clock, months, sql,
                                                                                tmp_path):
    services, compliance = app.extensions["rpm"], app.extensions["rpm_compliance"]
    assert client.post("/portfolios", json={"portfolio_id": "quiet"}).status_code == 201
    march = [trade(client, intent_id=f"m-{i}") for i in range(5)] + [trade(client, "quiet")]
    client.post("/marks", json={"prices": {"EURUSD": 1.1010}})  # (a record of another table between decisions)
    march.append(trade(client, intent_id="m-5"))
    clock.advance(days=31)
    april = [trade(client, intent_id=f"a-{i}") for i in range(3)]
    archiver = Archiver(services.uow, compliance, compliance.anchor)
    with pytest.raises(Invalid, match="has not passed"):
        archiver.archive(partitions.parse_month("2026-05"), tmp_path, OPERATOR)

    done = archiver.archive(partitions.parse_month("2026-04"), tmp_path, OPERATOR)
    assert [(a.month.month, a.rows, a.dropped) for a in done] == [(3, len(march), False)]
    held = verify_file(done[0].file, compliance.anchor.trusted)
    assert held["rows"] == len(march) and set(held["chains"]) == {"default", "quiet"}
    # the month left the table (detached, not dropped); the rest is as it was
    assert sql("SELECT count(*) FROM decisions")[0][0] == len(april)
    assert sql("SELECT count(*) FROM decisions_2026_03")[0][0] == len(march)
    assert client.get(f"/decisions/{march[0]['id']}").status_code == 404
    # its intent ids are kept: a retry is refused, naming the archived decision, never decided again
    retried = client.post("/process_trade", json={**SEED_INTENT, "atr": 0.01, "intent_id": "m-0"})
    assert retried.status_code == 409 and retried.json["decision_id"] == march[0]["id"], retried.json
    assert "archived" in retried.json["message"]
    assert client.get(f"/decisions/{april[0]['id']}/proof").status_code == 200

    report = compliance.verify()
    assert report["ok"], report
    chains = {c["chain"]: c for c in report["chains"]}
    assert chains["default"]["archived"] == len(march) - 1 and chains["quiet"]["archived"] == 1
    # the quiet portfolio's last row left: it trades on (its chain's head found among the archived heads)
    trade(client, "quiet")
    again = archiver.archive(partitions.parse_month("2026-04"), tmp_path, OPERATOR, drop=True)
    assert [(a.month.month, a.dropped) for a in again] == [(3, True)]
    assert sql("SELECT to_regclass('decisions_2026_03')")[0][0] is None
    report = compliance.verify()
    assert report["ok"], report
    actions = [r[0] for r in sql("SELECT action FROM admin_actions WHERE portfolio_id IS NULL ORDER BY audit_seq")]
    assert actions[-2:] == ["audit_archived", "audit_archive_dropped"]


def test_verify_finds_a_row_deleted_inside_an_archived_range_and_an_archive_file_edited(app, client, clock, months,
                                                                                      sql, tmp_path, database_url):
    compliance = app.extensions["rpm_compliance"]
    trade(client)
    client.post("/marks", json={"prices": {"EURUSD": 1.1010}})
    trade(client)
    clock.advance(days=31)
    trade(client)
    [archived] = Archiver(app.extensions["rpm"].uow, compliance, compliance.anchor).archive(
        partitions.parse_month("2026-04"), tmp_path, OPERATOR)
    # a record between the archived decisions deleted: its position now looks archived, one too many
    between = sql("SELECT audit_seq FROM mark_updates WHERE portfolio_id = 'default' ORDER BY audit_seq LIMIT 1")[0][0]
    superuser = create_engine(database_url)
    try:
        tamper(superuser, "mark_updates", "DELETE FROM mark_updates WHERE portfolio_id = 'default' AND audit_seq = :s",
               s=between)
    finally:
        superuser.dispose()
    report = compliance.verify()
    assert not report["ok"] and report["broken"]["default"]["problem"] == "missing", report
    # an archived decision edited in its file: its proof no longer holds
    with gzip.open(archived.file, "rt") as f:
        lines = f.read().splitlines()
    proof = json.loads(lines[1])
    proof["canonical"] = proof["canonical"].replace('"APPROVED"', '"REJECTED"')
    lines[1] = json.dumps(proof)
    with gzip.open(archived.file, "wt") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(ProofError, match="edited"):
        verify_file(archived.file, compliance.anchor.trusted)


def test_an_archive_waits_out_a_long_reader_a_second_at_a_time_and_trading_goes_on(app, client, clock, months,
                                                                                   database_url, tmp_path):
    import threading
    import time

    compliance = app.extensions["rpm_compliance"]
    trade(client)
    clock.advance(days=31)
    reader = create_engine(database_url)
    holding = threading.Event()

    def long_read():  # a transaction that read the decisions (an export, a report) and stays open 3 s
        with reader.begin() as conn:
            conn.execute(text("SELECT count(*) FROM decisions"))
            holding.set()
            time.sleep(3)

    thread = threading.Thread(target=long_read)
    thread.start()
    holding.wait(5)
    done = {}

    def archive():
        started = time.monotonic()
        done["archived"] = Archiver(app.extensions["rpm"].uow, compliance, compliance.anchor).archive(
            partitions.parse_month("2026-04"), tmp_path, OPERATOR)
        done["seconds"] = time.monotonic() - started

    archiving = threading.Thread(target=archive)
    archiving.start()
    waits = []
    for _ in range(6):  # decisions meanwhile: each waits at most the archive's second behind the long reader
        started = time.monotonic()
        trade(client)
        waits.append(time.monotonic() - started)
        time.sleep(0.2)
    archiving.join(30)
    thread.join()
    reader.dispose()
    assert not archiving.is_alive() and [a.rows for a in done["archived"]] == [1]
    assert done["seconds"] > 2  # it waited for the reader
    # each decision answered 200 (trade() asserts it), none waiting out its own lock timeout (2 s: a 503)
    assert max(waits) < 2, waits


def test_decisions_of_the_month_arriving_after_its_export_are_archived_too(app, client, clock, months, tmp_path):
    """A decision stamped in the month being archived that commits between its export and its detachment (a host
    whose clock is behind): what would leave is not what was exported, so it all starts again, with it."""
    compliance = app.extensions["rpm_compliance"]
    trade(client)
    clock.advance(days=31)
    exports = []

    class Late(Archiver):
        def _export(self, month, chains, path, *more):
            done = super()._export(month, chains, path, *more)
            exports.append(done[0])
            if len(exports) == 1:  # a decision of March arrives now
                now = clock.now
                clock.now = partitions.start_of(month).replace(day=20)
                trade(client)
                clock.now = now
            return done

    [archived] = Late(app.extensions["rpm"].uow, compliance, compliance.anchor).archive(
        partitions.parse_month("2026-04"), tmp_path, OPERATOR)
    assert exports == [1, 2] and archived.rows == 2
    assert verify_file(archived.file, compliance.anchor.trusted)["rows"] == 2
    assert compliance.verify()["ok"]


def test_verify_reads_what_was_archived_from_the_trail_not_from_a_table(app, client, clock, months, sql, tmp_path,
                                                                        database_url):
    """A decision deleted, and a row added to audit_archives claiming it: verify still finds it missing."""
    compliance = app.extensions["rpm_compliance"]
    trade(client)
    gone = trade(client)
    compliance.anchor.checkpoint(force=True, wait=True)
    superuser = create_engine(database_url)
    try:
        tamper(superuser, "decisions", "DELETE FROM decisions WHERE id = :i", i=gone["id"])
        with superuser.begin() as conn:
            conn.execute(text("INSERT INTO audit_archives (month, partition, rows, file, sha256, archived_at) "
                              "VALUES ('2026-03-01', 'decisions_2026_03', 1, 'x', 'x', now())"))
    finally:
        superuser.dispose()
    report = compliance.verify()
    assert not report["ok"] and report["broken"]["default"]["problem"] == "missing", report


def test_verify_archive_holds_a_file_to_what_the_trail_recorded(app, client, clock, months, settings, tmp_path,
                                                                database_url):
    import os
    import subprocess
    import sys

    from ..conftest import ROOT

    compliance = app.extensions["rpm_compliance"]
    trade(client)
    clock.advance(days=31)
    [archived] = Archiver(app.extensions["rpm"].uow, compliance, compliance.anchor).archive(
        partitions.parse_month("2026-04"), tmp_path, OPERATOR)
    public = f"{settings.instance_path}/audit-signing-key.pem.pub"

    def check(path, *more):
        return subprocess.run([sys.executable, "-m", "app.cli", "audit", "verify-archive", str(path), "--public-key",
                               public, *more], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "DATABASE_URL": database_url})

    held = check(archived.file)
    assert held.returncode == 0 and "the file the trail records" in held.stdout, held
    # every decision taken out, the header made to agree: its proofs (none) hold, the trail's record does not
    with gzip.open(archived.file, "rt") as f:
        header = json.loads(f.readline())
    trimmed = tmp_path / "trimmed.jsonl.gz"
    with gzip.open(trimmed, "wt") as f:
        f.write(json.dumps({**header, "chains": {}, "rows": 0}) + "\n")
    refused = check(trimmed)
    assert refused.returncode == 1 and refused.stderr.startswith("Error: BROKEN") and "Traceback" not in refused.stderr
    assert check(trimmed, "--offline").returncode == 0  # (offline, the proofs alone: as its help says)


def test_several_makers_of_partitions_at_once_make_each_month_once(app, database_url):
    import threading
    from datetime import UTC, datetime

    engine = create_engine(database_url)
    errors, made = [], []

    def maker():
        try:
            with engine.begin() as conn:
                made.extend(partitions.ensure(conn, datetime(2031, 1, 5, tzinfo=UTC), ahead=5))
        except Exception as exc:  # noqa: BLE001 (what the test looks for)
            errors.append(exc)

    threads = [threading.Thread(target=maker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with engine.connect() as conn:
        held = [m for m in partitions.months(conn) if m.year == 2031]
    engine.dispose()
    assert not errors and len(held) == 6 and sorted(made) == held


def test_an_archived_month_is_dropped_only_while_its_file_is_there_unchanged(app, client, clock, months, sql,
                                                                            tmp_path):
    from app.errors import Conflict

    compliance = app.extensions["rpm_compliance"]
    trade(client)
    clock.advance(days=31)
    archiver = Archiver(app.extensions["rpm"].uow, compliance, compliance.anchor)
    [archived] = archiver.archive(partitions.parse_month("2026-04"), tmp_path / "a", OPERATOR)
    moved = tmp_path / "elsewhere.jsonl.gz"
    (tmp_path / "a" / "decisions_2026_03.jsonl.gz").rename(moved)
    with pytest.raises(Conflict, match="not at"):
        archiver.archive(partitions.parse_month("2026-04"), tmp_path / "a", OPERATOR, drop=True)
    with gzip.open(moved, "rt") as f:
        lines = f.read().splitlines()
    with gzip.open(archived.file, "wt") as f:  # back, but not as it was
        f.write("\n".join(lines + [lines[-1]]) + "\n")
    with pytest.raises(Conflict, match="SHA-256 differs"):
        archiver.archive(partitions.parse_month("2026-04"), tmp_path / "a", OPERATOR, drop=True)
    assert sql("SELECT to_regclass('decisions_2026_03') IS NOT NULL")[0][0]
    # and the file checked alone: a decision twice is refused, whatever its header says
    with pytest.raises(ProofError, match="twice"):
        verify_file(archived.file, compliance.anchor.trusted)
    with pytest.raises(Invalid, match="cannot be written"):
        archiver.archive(partitions.parse_month("2026-04"), "/proc/rpm-archive", OPERATOR)
