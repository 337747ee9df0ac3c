"""The audit trail: append-only in the database itself, hash-chained, verifiable, queryable."""

import csv
import io
import json
import re
from decimal import Decimal

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import DBAPIError

from app.cli import main
from app.store import audit
from app.store.repository import decision_by_id

from ..conftest import SEED_INTENT

# an UPDATE that changes nothing: still refused
SAME = {"mark_snapshots": "symbol = symbol"}
SAME.update({t: "portfolio_id = portfolio_id" for t in ("decisions", "switch_events", "admin_actions",
                                                        "ledger_entries", "fills", "config_versions")})
AUDIT_TABLES = ["decisions", "switch_events", "admin_actions", "ledger_entries", "fills", "config_versions",
                "mark_snapshots"]


@pytest.fixture
def history(client, clock):
    """A small history: approvals, rejections, a fill, marks that trip switches, a halt and a resume."""
    ids = []
    for i in range(6):
        clock.advance(seconds=1)
        d = client.post("/process_trade", json={**SEED_INTENT, "symbol": ["EURUSD", "GBPUSD"][i % 2],
                                                "current_price": [1.1, 1.25][i % 2], "atr": 0.05,
                                                "confidence_score": [0.75, 0.4][i % 3 == 2]}).json["decision"]
        ids.append(d["id"])
    client.post("/fills", json={"decision_id": ids[0], "filled_units": 1000, "fill_price": 1.1})
    client.post("/halt", json={"reason": "audit test"})
    client.post("/resume", json={})
    client.post("/marks", json={"prices": {"GBPUSD": 1.0}})
    return ids


@pytest.fixture
def superuser(database_url):
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


def verify(client):
    r = client.get("/audit/verify")
    assert r.status_code == 200
    return r.json


def test_a_clean_history_verifies_with_count_and_head(client, history, sql):
    report = verify(client)
    assert report["ok"] is True
    default = next(c for c in report["chains"] if c["chain"] == "default")
    # every table of the chain: decisions, switch events, admin actions, configuration versions, ledger entries,
    # fills, equity points, posted marks, risk events
    rows = sum(sql(f"SELECT count(*) FROM {model.__tablename__} WHERE portfolio_id = 'default'")[0][0]
               for model in audit.AUDITED)
    assert {model.__tablename__ for model in audit.AUDITED} == {
        "decisions", "switch_events", "admin_actions", "config_versions", "ledger_entries", "fills", "equity_points",
        "mark_updates", "risk_events"}
    assert default["count"] == rows == default["head_seq"]
    assert default["head_hash"] == sql("SELECT audit_head FROM portfolios WHERE id = 'default'")[0][0]
    system = next(c for c in report["chains"] if c["chain"] == "_system")
    assert system["ok"] and system["count"] == 4  # the four keys of the test


def test_numbers_finer_than_their_columns_are_hashed_as_stored_and_verify(client, clock, sql):
    """NUMERIC(28, 10) keeps ten decimals: a price of 1.123456789012345 (what arithmetic on floats gives a
    signal engine) and a drawdown of many decimals must not read back as edited rows."""
    long = {**SEED_INTENT, "current_price": 1.123456789012345, "atr": 0.004}
    assert client.post("/process_trade", json=long).json["decision"]["status"] == "APPROVED"
    clock.advance(seconds=1)
    batch = [{**SEED_INTENT, "symbol": "GBPUSD", "current_price": 0.1 + 0.2 + 1, "atr": 0.004}]
    assert client.post("/process_trades", json={"intents": batch}).status_code == 200
    clock.advance(seconds=1)
    events = client.post("/marks", json={"prices": {"EURUSD": 1.0123456789012345}}).json["events"]
    finer = [Decimal(repr(e["value"])) for e in events if e["action"] == "TRIPPED"]
    assert finer and all(v != v.quantize(Decimal("1E-10")) for v in finer)  # more than ten decimals
    assert [p for (p,) in sql("SELECT price FROM decisions ORDER BY seq")] == [
        Decimal("1.1234567890"), Decimal("1.3000000000")]
    assert sorted(v for (v,) in sql("SELECT value FROM switch_events WHERE action = 'TRIPPED'")) == sorted(
        v.quantize(Decimal("1E-10")) for v in finer)
    report = verify(client)
    assert report["ok"] is True, report


@pytest.mark.parametrize("table", AUDIT_TABLES)
def test_update_delete_and_truncate_are_refused_by_the_triggers_even_for_a_superuser(history, superuser, table):
    with superuser.connect() as conn:
        for statement in (f"UPDATE {table} SET {SAME[table]}",
                          f"DELETE FROM {table}",
                          f"TRUNCATE {table} CASCADE"):
            with pytest.raises(DBAPIError, match="append-only"):
                conn.execute(text(statement))
        # session_replication_role = replica skips ordinary triggers, not ENABLE ALWAYS ones
        conn.execute(text("SET session_replication_role = replica"))
        with pytest.raises(DBAPIError, match="append-only"):
            conn.execute(text(f"DELETE FROM {table}"))
        conn.execute(text("SET session_replication_role = DEFAULT"))
        assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() > 0


@pytest.mark.parametrize("table", AUDIT_TABLES)
def test_the_application_role_may_only_insert_and_select(history, superuser, table):
    with superuser.connect() as conn:
        conn.execute(text("BEGIN"))
        conn.execute(text("SET LOCAL ROLE rpm_app"))
        assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() > 0
        conn.execute(text("SAVEPOINT s"))
        for statement in (f"UPDATE {table} SET {SAME[table]}", f"DELETE FROM {table}",
                          f"TRUNCATE {table}"):
            with pytest.raises(DBAPIError, match="permission denied"):
                conn.execute(text(statement))
            conn.execute(text("ROLLBACK TO SAVEPOINT s"))
        conn.execute(text("ROLLBACK"))


def test_the_service_runs_as_the_application_role(superuser, database_url, tmp_path, clock, keys):
    """`rpm serve` can run as rpm_app: every request works with INSERT/SELECT on the audit tables."""
    from app import create_app
    from app.settings import Settings

    login = "rpm_app_login_test"
    with superuser.connect() as conn:
        conn.execute(text(f"DROP ROLE IF EXISTS {login}"))
        conn.execute(text(f"CREATE ROLE {login} LOGIN IN ROLE rpm_app"))
    try:
        url = database_url.replace("postgres@", f"{login}@")
        app = create_app(Settings(database_url=url, instance_path=str(tmp_path)), clock=clock)
        client = app.test_client()
        auth = lambda role: {"Authorization": f"Bearer {keys[role]}"}  # noqa: E731
        r = client.post("/process_trade", json={**SEED_INTENT, "symbol": "AUDUSD", "current_price": 0.65},
                        headers=auth("trader"))
        assert r.status_code == 200 and r.json["decision"]["status"] == "APPROVED"
        assert client.post("/halt", json={"reason": "as rpm_app"}, headers=auth("admin")).status_code == 200
        assert client.post("/resume", json={}, headers=auth("admin")).status_code == 200
        assert client.post("/positions/AUDUSD/close", json={"price": 0.651}, headers=auth("trader")).status_code == 200
        decision = client.post("/process_trade", json={**SEED_INTENT, "symbol": "NZDUSD", "current_price": 0.6},
                               headers=auth("trader")).json["decision"]["id"]
        assert client.post("/fills", json={"decision_id": decision, "filled_units": 100, "fill_price": 0.6},
                           headers=auth("trader")).status_code == 200
        assert client.post("/marks", json={"prices": {"NZDUSD": 0.601}}, headers=auth("trader")).status_code == 200
        assert client.put("/config", json={"config": {"risk_per_trade": 0.005}, "reason": "as rpm_app"},
                          headers=auth("admin")).status_code == 200
        # checkpoints and proofs as rpm_app: the Merkle nodes and the checkpoint written, the proof served
        proof = client.get(f"/decisions/{decision}/proof", headers=auth("compliance"))
        assert proof.status_code == 200 and proof.json["checkpoint"]["statement"]["size"] >= proof.json["audit_seq"]
        assert client.get("/audit/verify", headers=auth("compliance")).json["ok"] is True
        # and the application's role moves a chain head only by appending to the chain
        with app.extensions["rpm"].db.engine.connect() as conn:
            conn.execute(text("UPDATE portfolios SET audit_seq = audit_seq - 1 WHERE id = 'default'"))
            with pytest.raises(DBAPIError, match="the head of chain default may not move back"):
                conn.commit()
        app.extensions["rpm"].db.dispose()
    finally:
        with superuser.connect() as conn:
            conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{login}'"))
            conn.execute(text(f"DROP OWNED BY {login}"))
            conn.execute(text(f"DROP ROLE {login}"))


def tamper(superuser, table, statement, **params):
    with superuser.begin() as conn:
        conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only"))
        conn.execute(text(statement), params)
        conn.execute(text(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_append_only"))


def test_documents_stored_as_text_and_as_before_0010_verify_read_and_replay_alike(app, client, clock, monkeypatch,
                                                                                   superuser, sql):
    """From 0010 a decision stores its breakdown and state before as their JSON text (a JSONB string) and
    its hash covers that text; rows written before hold the documents. One chain of both kinds verifies,
    reads, replays and shows in the view decision_documents alike, and an edit inside the text is caught."""
    from app.compliance import replay
    from app.services import trading

    def decide(symbol, price):
        clock.advance(seconds=1)
        return client.post("/process_trade", json={**SEED_INTENT, "symbol": symbol, "current_price": price,
                                                   "atr": 0.004}).json["decision"]["id"]

    with monkeypatch.context() as before_0010:  # rows as the code before 0010 wrote them
        before_0010.setattr(trading, "document_text", lambda document: document)
        old = [decide("EURUSD", 1.1), decide("GBPUSD", 1.25)]
    new = [decide("USDJPY", 150.0), decide("EURUSD", 1.1)]
    forms = "SELECT jsonb_typeof(breakdown), jsonb_typeof(state_before) FROM {} ORDER BY seq"
    assert sql(forms.format("decisions")) == [("object", "object")] * 2 + [("string", "string")] * 2
    assert sql(forms.format("decision_documents")) == [("object", "object")] * 4
    assert verify(client)["ok"] is True
    for decision_id in old + new:
        d = client.get(f"/decisions/{decision_id}").json
        assert d["breakdown"]["sizing"]["units"] > 0 and d["state_before"]["portfolio_id"] == "default"
    # the second EURUSD decision saw the first's position, whichever form recorded it
    assert set(client.get(f"/decisions/{new[1]}").json["state_before"]["positions"]) == {"EURUSD", "GBPUSD", "USDJPY"}
    differences = [i for i in replay(app.extensions["rpm"].uow, "default", None, None, None) if i["type"] == "difference"]
    assert differences == []
    # an edit inside the stored text of a new row
    seq = sql("SELECT audit_seq FROM decisions WHERE id = :id", id=new[0])[0][0]
    tamper(superuser, "decisions", "UPDATE decisions SET state_before = "
           "to_jsonb(replace(state_before #>> '{}', '\"realised_pnl\":\"0\"', '\"realised_pnl\":\"9\"')) "
           "WHERE id = :id", id=new[0])
    assert '"realised_pnl":"9"' in sql("SELECT state_before #>> '{}' FROM decisions WHERE id = :id", id=new[0])[0][0]
    report = verify(client)
    assert report["broken"]["default"]["first_broken_seq"] == seq
    assert report["broken"]["default"]["problem"] == "edited"


def test_an_edited_decision_is_named_by_its_sequence_number(client, history, superuser, sql):
    seq = sql("SELECT audit_seq FROM decisions WHERE id = :id", id=history[2])[0][0]
    tamper(superuser, "decisions", "UPDATE decisions SET approved_units = approved_units + 1000 WHERE id = :id",
           id=history[2])
    report = verify(client)
    assert report["ok"] is False
    assert report["broken"]["default"]["first_broken_seq"] == seq
    assert report["broken"]["default"]["problem"] == "edited"
    # a failed verification is a risk event (audit_failed), on the `_system` chain, naming who verified
    failed = sql("SELECT chain, data FROM risk_events WHERE type = 'audit_failed'")
    assert len(failed) == 1 and failed[0][0] == "_system", failed
    assert failed[0][1]["after"]["broken"] == {"default": "edited"} and failed[0][1]["actor"]["role"] == "compliance"


def test_a_deleted_row_is_named_as_a_gap(client, history, superuser, sql):
    seq = sql("SELECT audit_seq FROM decisions WHERE id = :id", id=history[1])[0][0]
    tamper(superuser, "decisions", "DELETE FROM decisions WHERE id = :id", id=history[1])
    report = verify(client)
    assert report["broken"]["default"] == {"first_broken_seq": seq, "problem": "missing",
                                           "detail": f"sequence numbers {seq}..{seq} are missing"}


def test_two_rows_swapped_and_rehashed_are_reported_as_reordered(client, history, superuser, sql, database_url):
    (a_id, a_seq), (b_id, b_seq) = sql("SELECT id, audit_seq FROM decisions ORDER BY audit_seq LIMIT 2")
    # a careful forger swaps their places and recomputes each row's own hash
    with superuser.begin() as conn:
        conn.execute(text("ALTER TABLE decisions DISABLE TRIGGER decisions_append_only"))
        conn.execute(text("UPDATE decisions SET audit_seq = -1 WHERE id = :id"), {"id": a_id})
        conn.execute(text("UPDATE decisions SET audit_seq = :s WHERE id = :id"), {"s": a_seq, "id": b_id})
        conn.execute(text("UPDATE decisions SET audit_seq = :s WHERE id = :id"), {"s": b_seq, "id": a_id})
        conn.execute(text("ALTER TABLE decisions ENABLE ALWAYS TRIGGER decisions_append_only"))
    rehash_rows(superuser, database_url, [a_id, b_id])
    report = verify(client)
    assert report["broken"]["default"]["problem"] == "reordered"
    assert report["broken"]["default"]["first_broken_seq"] == min(a_seq, b_seq)


def rehash_rows(superuser, database_url, ids):
    from sqlalchemy.orm import Session

    from app.store import models as m

    engine = create_engine(database_url)
    with Session(engine) as session:
        rows = {i: {c: getattr(decision_by_id(session, i), c) for c in audit.COLUMNS[m.Decision]} for i in ids}
    engine.dispose()
    with superuser.begin() as conn:
        conn.execute(text("ALTER TABLE decisions DISABLE TRIGGER decisions_append_only"))
        for i, values in rows.items():
            conn.execute(text("UPDATE decisions SET row_hash = :h WHERE id = :id"),
                         {"h": audit.row_hash(values["prev_hash"], "decision", values), "id": i})
        conn.execute(text("ALTER TABLE decisions ENABLE ALWAYS TRIGGER decisions_append_only"))


CHAINED = [model.__tablename__ for model in audit.AUDITED]


def rewrite_chain(superuser, database_url):
    """What a superuser who knows the scheme does: every hash of the chain recomputed, the head moved."""
    from sqlalchemy.orm import Session


    engine = create_engine(database_url)
    with Session(engine) as session:
        records = []
        for model in audit.AUDITED:
            for row in session.scalars(select(model).where(model.portfolio_id == "default",
                                                           model.audit_seq.isnot(None))):
                records.append((row.audit_seq, model, row.id, {c: getattr(row, c) for c in audit.COLUMNS[model]}))
    engine.dispose()
    records.sort(key=lambda r: r[0])
    prev = audit.GENESIS
    with superuser.begin() as conn:
        for table in CHAINED:
            conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only"))
        for _seq, model, row_id, values in records:
            values["prev_hash"] = prev
            prev = audit.row_hash(prev, audit.KIND[model], values)
            conn.execute(text(f"UPDATE {model.__tablename__} SET prev_hash = :p, row_hash = :h WHERE id = :id"),
                         {"p": values["prev_hash"], "h": prev, "id": row_id})
        conn.execute(text("UPDATE portfolios SET audit_head = :h WHERE id = 'default'"), {"h": prev})
        for table in CHAINED:
            conn.execute(text(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_append_only"))


def test_pagination_returns_every_decision_once_while_new_ones_arrive(client, history, clock):
    seen = []
    cursor = None
    arrivals = 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/decisions", query_string=params).json
        seen += [d["id"] for d in page["decisions"]]
        if arrivals < 3:  # a decision arrives between every page request
            clock.advance(seconds=1)
            client.post("/process_trade", json={**SEED_INTENT, "confidence_score": 0.1})
            arrivals += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    everything = client.get("/decisions", query_string={"limit": 1000}).json["decisions"]
    assert len(seen) == len(set(seen))
    assert set(history) <= set(seen)
    assert sorted(seen) == sorted(d["id"] for d in everything)


def test_csv_and_json_agree(client, history):
    page = client.get("/decisions", query_string={"limit": 1000}).json["decisions"]
    with client.get("/decisions", query_string={"format": "csv"}) as r:
        assert r.status_code == 200 and r.mimetype == "text/csv"
        rows = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert [row["id"] for row in rows] == [d["id"] for d in page]
    for row, d in zip(rows, page, strict=True):
        for column in ("seq", "symbol", "status", "reason_code", "approved_units", "config_hash", "key_name",
                       "row_hash", "decided_at"):
            assert row[column] == ("" if d[column] is None else str(d[column])), column


def test_decisions_filter_by_symbol_status_reason_time_and_key(client, history, clock):
    every = client.get("/decisions").json["decisions"]
    assert len(every) == 6
    gbp = client.get("/decisions", query_string={"symbol": "GBPUSD"}).json["decisions"]
    assert {d["symbol"] for d in gbp} == {"GBPUSD"} and len(gbp) == 3
    rejected = client.get("/decisions", query_string={"status": "REJECTED"}).json["decisions"]
    assert all(d["status"] == "REJECTED" for d in rejected) and rejected
    low = client.get("/decisions", query_string={"reason": "CONFIDENCE_TOO_LOW"}).json["decisions"]
    assert {d["reason_code"] for d in low} == {"CONFIDENCE_TOO_LOW"}
    window = client.get("/decisions", query_string={"from": every[1]["decided_at"],
                                                    "to": every[3]["decided_at"]}).json["decisions"]
    assert [d["seq"] for d in window] == [2, 3]
    by_key = client.get("/decisions", query_string={"key_name": "test-trader"}).json["decisions"]
    assert len(by_key) == 6
    assert client.get("/decisions", query_string={"intent_id": "none"}).json["decisions"] == []
    assert client.get("/decisions", query_string={"status": "MAYBE"}).status_code == 422
    assert client.get("/decisions", query_string={"cursor": "garbage"}).status_code == 422


def test_one_decision_with_its_breakdown_state_config_and_fills(client, history):
    d = client.get(f"/decisions/{history[0]}").json
    assert d["status"] == "APPROVED" and d["breakdown"]["sizing"]["units"] == 20000.0
    assert d["state_before"]["portfolio_id"] == "default"
    assert d["config"]["version"] == 1 and d["config"]["config_hash"] == d["config_hash"]
    assert d["fills"][0]["filled_units"] == 1000
    assert d["submitted_by"]["key_name"] == "test-trader"
    assert len(d["audit"]["row_hash"]) == 64
    assert client.get("/decisions/unknown").status_code == 404


def test_audit_events_show_switches_and_admin_actions_in_chain_order(client, history):
    events = client.get("/audit/events").json["events"]
    kinds = [(e["kind"], e.get("action")) for e in events]
    assert ("admin_action", "halt") in kinds and ("admin_action", "resume") in kinds
    assert ("switch_event", "TRIPPED") in kinds
    seqs = [e["audit_seq"] for e in events]
    assert seqs == sorted(seqs)
    halts = client.get("/audit/events", query_string={"kind": "admin_action", "actor": "test-admin"}).json["events"]
    assert [e["action"] for e in halts] == ["halt", "resume"] and halts[0]["reason"] == "audit test"
    keys = client.get("/audit/events", query_string={"portfolio_id": "_system"}).json["events"]
    assert [e["action"] for e in keys] == ["key_create"] * 4


def test_rpm_audit_verify_and_checkpoint_on_the_command_line(history, database_url, monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("RPM_INSTANCE_PATH", str(tmp_path))
    result = CliRunner().invoke(main, ["audit", "verify"])
    assert result.exit_code == 0 and re.search(r"^default +OK +\d+", result.output, re.M), result.output
    made = CliRunner().invoke(main, ["audit", "checkpoint"])
    assert made.exit_code == 0 and "2 checkpoint(s) appended" in made.output
    lines = [json.loads(line) for f in (tmp_path / "checkpoints").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert {c["statement"]["chain"] for c in lines} == {"default", "_system"}
    again = CliRunner().invoke(main, ["audit", "verify"])
    assert again.exit_code == 0 and "against 2 signed checkpoint(s)" in again.output


def test_the_events_of_a_portfolio_that_does_not_exist_are_a_404(client):
    r = client.get("/audit/events", query_string={"portfolio_id": "no-such-desk"})
    assert r.status_code == 404 and "no-such-desk" in r.json["message"]
    assert client.get("/audit/events", query_string={"portfolio_id": "_system"}).status_code == 200


def test_verify_under_decisions_being_made_reads_one_snapshot(app, client, clock):
    """verify while decisions are committed: heads and rows read from one snapshot (read at different moments, a
    chain looked longer than its head said: a false "edited")."""
    import threading

    compliance = app.extensions["rpm_compliance"]
    for _ in range(3):
        assert client.post("/process_trade", json={**SEED_INTENT, "atr": 0.05}).status_code == 200
    stop = threading.Event()

    def trading():
        trader = app.test_client()
        auth = {"Authorization": f"Bearer {client.rpm_keys['trader']}"}
        while not stop.is_set():
            trader.post("/process_trade", json={**SEED_INTENT, "atr": 0.05}, headers=auth)

    thread = threading.Thread(target=trading)
    thread.start()
    try:
        reports = [compliance.verify() for _ in range(15)]
    finally:
        stop.set()
        thread.join()
    assert all(r["ok"] for r in reports), next(r for r in reports if not r["ok"])


def test_a_csv_export_the_database_cuts_short_ends_with_a_line_saying_so(app, client, sql):
    """A streamed export has sent its status and first rows when the database fails: its last line says the file is
    short (a client reading lines, or a person opening the file, would take it for every decision), then the
    connection is cut."""
    from app.compliance import EXPORT_INCOMPLETE, DecisionFilter
    from app.store.database import DB_ERRORS

    assert client.post("/process_trade", json={**SEED_INTENT, "intent_id": "seed"}).status_code == 200
    sql("INSERT INTO decisions SELECT (jsonb_populate_record(d, jsonb_build_object('id', 'copy-' || g, 'seq', 1 + g, "
        "'intent_id', NULL, 'breakdown', '{}'::jsonb, 'state_before', '{}'::jsonb))).* "
        "FROM decisions d, generate_series(1, 5000) g WHERE d.intent_id = 'seed' RETURNING 1")
    stream = app.extensions["rpm_compliance"].decisions_csv(DecisionFilter(portfolios=None))
    chunks = [next(stream)]  # the header and the first batch
    assert chunks[0].startswith('"portfolio_id",') and EXPORT_INCOMPLETE not in chunks[0]
    exporting = sql("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND "
                    "query LIKE 'FETCH%' AND pid <> pg_backend_pid()")
    assert len(exporting) == 1
    sql("SELECT pg_terminate_backend(:pid)", pid=exporting[0][0])
    with pytest.raises(DB_ERRORS):
        for chunk in stream:
            chunks.append(chunk)
    rows = list(csv.reader(io.StringIO("".join(chunks))))
    assert rows[-1][0].startswith(f"{EXPORT_INCOMPLETE}: the database failed after {len(rows) - 2} rows")
    assert 1 < len(rows) - 2 < 5001  # (some rows, not all)
