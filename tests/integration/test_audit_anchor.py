"""The trail covers everything that decides, is anchored outside the database, and proves each decision.

Each kind of tampering a superuser can do (triggers disabled and re-enabled) is named by `verify`: the
table, the row, what is wrong. The table in docs/audit.md is printed from these runs.
"""

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from app.anchor import public_pem
from app.cli import main
from app.store import audit

from ..conftest import SEED_INTENT, http
from .test_audit import rewrite_chain


@pytest.fixture
def superuser(database_url):
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture
def books(client, clock):
    """Decisions, a fill, a close, marks, a halt and resume, a configuration change: every chained table."""
    ids = []
    for symbol, price in [("EURUSD", 1.1), ("GBPUSD", 1.25), ("USDJPY", 150.0)]:
        clock.advance(seconds=1)
        ids.append(client.post("/process_trade", json={**SEED_INTENT, "symbol": symbol, "current_price": price,
                                                       "atr": 0.05 * price}).json["decision"]["id"])
    assert client.post("/fills", json={"decision_id": ids[0], "filled_units": 1000, "fill_price": 1.1}).status_code == 200
    assert client.post("/marks", json={"prices": {"GBPUSD": 1.26, "EURUSD": 1.101}}).status_code == 200
    assert client.post("/positions/USDJPY/close", json={"price": 150.5}).status_code == 200
    assert client.post("/halt", json={"reason": "audit"}).status_code == 200
    assert client.post("/resume", json={}).status_code == 200
    assert client.put("/config", json={"config": {"max_concurrent_positions": 7}, "reason": "audit"}).status_code == 200
    clock.advance(seconds=1)
    ids.append(client.post("/process_trade", json={**SEED_INTENT, "symbol": "AUDUSD", "current_price": 0.65,
                                                   "atr": 0.0325}).json["decision"]["id"])
    return ids


def verify(client):
    r = client.get("/audit/verify")
    assert r.status_code == 200
    return r.json


def tamper(superuser, table, statement, **params):
    """As a superuser: the table's append-only trigger disabled, the statement run, the trigger enabled again."""
    trigger = {"positions": None, "marks": None, "portfolios": "portfolios_chain_head"}.get(table, f"{table}_append_only")
    with superuser.begin() as conn:
        if trigger:
            conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}"))
        conn.execute(text(statement), params)
        if trigger:
            conn.execute(text(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {trigger}"))


def _seq(sql, table, where="true"):
    return sql(f"SELECT audit_seq FROM {table} WHERE portfolio_id = 'default' AND {where} ORDER BY audit_seq LIMIT 1")[0][0]


# (what is done, the table, the SQL, what verify must say: a chain problem at the row's sequence number, or a finding)
TAMPERING = [
    ("a configuration version's limit edited", "config_versions",
     "UPDATE config_versions SET body = jsonb_set(body, '{max_concurrent_positions}', '2') WHERE version = 2",
     {"chain": "edited", "seq_of": ("config_versions", "version = 2"),
      "finding": ("config_versions", "edited")}),
    ("a fill's price edited", "fills", "UPDATE fills SET fill_price = fill_price + 0.01",
     {"chain": "edited", "seq_of": ("fills", "true")}),
    ("a ledger entry's units edited", "ledger_entries",
     "UPDATE ledger_entries SET units = units * 2 WHERE seq = 1",
     {"chain": "edited", "seq_of": ("ledger_entries", "seq = 1")}),
    ("a ledger entry deleted", "ledger_entries", "DELETE FROM ledger_entries WHERE seq = 2",
     {"chain": "missing", "seq_of": ("ledger_entries", "seq = 2")}),
    ("an equity point edited", "equity_points", "UPDATE equity_points SET equity = equity + 1000",
     {"chain": "edited", "seq_of": ("equity_points", "true")}),
    ("a posted mark edited", "mark_updates",
     "UPDATE mark_updates SET prices = jsonb_set(prices, '{GBPUSD}', '\"1.5\"')",
     {"chain": "edited", "seq_of": ("mark_updates", "true")}),
    ("a decision's configuration hash edited", "decisions",
     "UPDATE decisions SET config_hash = repeat('a', 64) WHERE symbol = 'AUDUSD'",
     {"chain": "edited", "seq_of": ("decisions", "symbol = 'AUDUSD'"),
      "finding": ("decisions", "unknown configuration")}),
    ("a position's units edited", "positions", "UPDATE positions SET units = units * 3 WHERE symbol = 'EURUSD'",
     {"finding": ("positions", "differs")}),
    ("a position deleted", "positions", "DELETE FROM positions WHERE symbol = 'GBPUSD'",
     {"finding": ("positions", "differs")}),
    ("realised PnL edited", "portfolios", "UPDATE portfolios SET realised_pnl = realised_pnl + 5000",
     {"finding": ("portfolios", "differs")}),
    ("peak equity edited", "portfolios", "UPDATE portfolios SET peak_equity = peak_equity + 5000",
     {"finding": ("portfolios", "differs")}),
    ("starting capital edited", "portfolios", "UPDATE portfolios SET starting_capital = starting_capital * 10",
     {"finding": ("portfolios", "differs")}),
    ("a halt's cooldown extended", "portfolios",
     "UPDATE portfolios SET switches = jsonb_set(switches, '{portfolio,manual_halt,cooldown_until}', "
     "'\"2099-01-01T00:00:00.000000+00:00\"')",
     {"finding": ("portfolios", "differs"), "halted_first": True}),
    ("a mark made up for a symbol never posted", "marks",
     "INSERT INTO marks (portfolio_id, symbol, price, history, history_hash, updated_at) "
     "SELECT portfolio_id, 'USDCHF', 0.9, history, history_hash, updated_at FROM marks WHERE symbol = 'GBPUSD'",
     {"finding": ("marks", "differs")}),
    ("a posted mark's row deleted", "marks", "DELETE FROM marks WHERE symbol = 'GBPUSD'",
     {"finding": ("marks", "differs")}),
    ("a tripped switch removed", "portfolios",
     "UPDATE portfolios SET switches = '{\"portfolio\": {}, \"symbols\": {}}', trading_state = 'ACTIVE'",
     {"finding": ("portfolios", "differs"), "halted_first": True}),
    ("the configuration version in force moved back", "portfolios",
     "UPDATE portfolios SET config_version = 1", {"finding": ("portfolios", "differs")}),
    ("a mark's price edited", "marks", "UPDATE marks SET price = 1.3 WHERE symbol = 'GBPUSD'",
     {"finding": ("marks", "differs")}),
    ("a mark history snapshot edited", "mark_snapshots",
     "UPDATE mark_snapshots SET prices = '[1.3]' WHERE symbol = 'GBPUSD'",
     {"finding": ("mark_snapshots", "edited")}),
    ("the chain head moved back", "portfolios", "UPDATE portfolios SET audit_seq = audit_seq - 1",
     {"chain": "edited"}),
]


@pytest.mark.parametrize("what,table,statement,expected", TAMPERING, ids=[t[0] for t in TAMPERING])
def test_each_kind_of_tampering_is_named_by_verify(client, books, superuser, sql, what, table, statement, expected):
    assert verify(client)["ok"] is True
    if expected.get("halted_first"):
        assert client.post("/halt", json={"reason": "to be hidden"}).status_code == 200
    seq = _seq(sql, *expected["seq_of"]) if "seq_of" in expected else None
    tamper(superuser, table, statement)
    report = verify(client)
    assert report["ok"] is False, what
    said = []
    if "chain" in expected:
        broken = report["broken"]["default"]
        assert broken["problem"] == expected["chain"], broken
        if seq is not None:
            assert broken["first_broken_seq"] == seq
        said.append(f"chain default: {broken['problem']} at sequence {broken['first_broken_seq']}")
    if "finding" in expected:
        table_named, problem = expected["finding"]
        found = [f for f in report["findings"] if f["table"] == table_named and f["problem"] == problem]
        assert found, report.get("findings")
        said.append(f"{found[0]['table']} {json.dumps(found[0]['row'])}: {found[0]['detail']}")
    print(f"\n[tamper] {what}: {'; '.join(said)}")


def test_an_edited_configuration_is_caught_in_the_decisions_made_under_it(client, clock, keys, superuser):
    """The issue's attack: a limit edited in a stored configuration is enforced by the engine; the decisions
    made under it name a configuration hash no stored version has, and verify says so."""
    client.put("/config", json={"config": {"max_concurrent_positions": 8}, "reason": "v2"})
    tamper(superuser, "config_versions",
           "UPDATE config_versions SET body = jsonb_set(body, '{max_concurrent_positions}', '2') WHERE version = 2")
    # a fresh process reads the edited body
    from app import create_app

    other = create_app(client.application.config["RPM_SETTINGS"], clock=clock)
    try:
        c = other.test_client()
        for symbol in ("EURUSD", "GBPUSD", "AUDUSD"):
            clock.advance(seconds=1)
            r = c.post("/process_trade", json={**SEED_INTENT, "symbol": symbol, "current_price": 1.0, "atr": 0.05},
                       headers={"Authorization": f"Bearer {keys['trader']}"})
            last = r.json["decision"]
    finally:
        other.extensions["rpm"].db.dispose()
    assert last["status"] == "REJECTED" and last["reason"] == "MAX_POSITIONS"
    report = verify(client)
    problems = {(f["table"], f["problem"]) for f in report["findings"]}
    assert ("config_versions", "edited") in problems
    assert ("decisions", "unknown configuration") in problems


def test_the_application_role_cannot_move_a_chain_head(client, books, superuser):
    with superuser.connect() as conn:
        for change in ("audit_seq = audit_seq - 1", "audit_seq = audit_seq + 1", "audit_head = repeat('0', 64)",
                       "audit_seq = 0, audit_head = NULL"):
            conn.execute(text("BEGIN"))
            conn.execute(text("SET LOCAL ROLE rpm_app"))
            conn.execute(text(f"UPDATE portfolios SET {change} WHERE id = 'default'"))
            with pytest.raises(DBAPIError, match="the head of chain default"):
                conn.execute(text("COMMIT"))
            conn.execute(text("ROLLBACK"))
        conn.execute(text("BEGIN"))
        conn.execute(text("SET LOCAL ROLE rpm_app"))
        conn.execute(text("UPDATE audit_heads SET audit_seq = audit_seq - 1"))
        with pytest.raises(DBAPIError, match="the head of chain _system"):
            conn.execute(text("COMMIT"))
        conn.execute(text("ROLLBACK"))
    assert verify(client)["ok"] is True


def _checkpoint(app):
    return app.extensions["rpm_anchor"].checkpoint(force=True, wait=True)


def test_a_consistent_rewrite_is_located_to_its_checkpoint_interval(app, client, clock, books, superuser,
                                                                   database_url, sql):
    first = {c["statement"]["chain"]: c["statement"]["size"] for c in _checkpoint(app)}["default"]
    clock.advance(seconds=1)
    client.post("/process_trade", json={**SEED_INTENT, "symbol": "NZDUSD", "current_price": 0.6, "atr": 0.03})
    client.post("/marks", json={"prices": {"EURUSD": 1.102}})
    second = {c["statement"]["chain"]: c["statement"]["size"] for c in _checkpoint(app)}["default"]
    clock.advance(seconds=1)
    client.post("/process_trade", json={**SEED_INTENT, "symbol": "USDCAD", "current_price": 1.35, "atr": 0.06})
    _checkpoint(app)
    # a superuser edits the NZDUSD decision (between the first and second checkpoints) and rewrites the chain
    target = sql("SELECT audit_seq FROM decisions WHERE symbol = 'NZDUSD'")[0][0]
    assert first < target <= second
    with superuser.begin() as conn:
        conn.execute(text("ALTER TABLE decisions DISABLE TRIGGER decisions_append_only"))
        conn.execute(text("UPDATE decisions SET approved_units = 1 WHERE symbol = 'NZDUSD'"))
        conn.execute(text("ALTER TABLE decisions ENABLE ALWAYS TRIGGER decisions_append_only"))
    rewrite_chain(superuser, database_url)
    report = verify(client)
    assert "broken" not in report  # the chain alone is consistent again
    rewritten = [f for f in report["findings"] if f["problem"] == "rewritten"]
    assert rewritten == [{"chain": "default", "table": "checkpoints", "row": {"size": second}, "problem": "rewritten",
                          "first_seq": first + 1, "last_seq": second, "detail": rewritten[0]["detail"]}]
    print(f"\n[tamper] a consistent rewrite of decision {target}: {rewritten[0]['detail']}")


def test_a_decisions_proof_verifies_offline_and_fails_when_anything_was_changed(app, client, books, tmp_path,
                                                                                 monkeypatch):
    decision_id = books[1]
    r = client.get(f"/decisions/{decision_id}/proof")  # no checkpoint yet: one is made
    assert r.status_code == 200
    proof = r.json
    assert proof["checkpoint"]["statement"]["size"] >= proof["audit_seq"]
    public = tmp_path / "rpm.pub"
    public.write_text(public_pem(app.extensions["rpm_anchor"].signer.public))
    monkeypatch.delenv("DATABASE_URL", raising=False)  # offline: nothing but the file and the key

    def check(p, key=public):
        path = tmp_path / "proof.json"
        path.write_text(json.dumps(p))
        return CliRunner().invoke(main, ["audit", "check-proof", str(path), "--public-key", str(key)])

    good = check(proof)
    assert good.exit_code == 0 and good.output.startswith(f"VALID: decision {decision_id}"), good.output
    print(f"\n[proof] {good.output.strip()}")

    edited = {**proof, "canonical": proof["canonical"].replace('"approved_units":"', '"approved_units":"9')}
    tampered = json.loads(json.dumps(proof))
    tampered["checkpoint"]["statement"]["root"] = "00" * 32
    other_key = tmp_path / "other.pub"
    other_key.write_text(public_pem(Ed25519PrivateKey.generate().public_key()))
    wrong_path = {**proof, "inclusion_proof": list(reversed(proof["inclusion_proof"]))}
    if len(proof["inclusion_proof"]) < 2:
        wrong_path = {**proof, "leaf_index": proof["leaf_index"] ^ 1}
    for what, result, says in [
        ("an edited decision", check(edited), "the decision was edited"),
        ("a tampered checkpoint", check(tampered), "signature is not valid"),
        ("another public key", check(proof, other_key), "signature is not valid"),
        ("a wrong path", check(wrong_path), "does not lead to the checkpoint's root"),
    ]:
        assert result.exit_code == 1 and result.output.startswith("INVALID") and says in result.output, (what,
                                                                                                       result.output)
        print(f"[proof] {what}: {result.output.strip()}")


def test_proofs_are_the_compliance_roles_and_within_a_keys_portfolios(client, books, keys):
    r = client.get(f"/decisions/{books[0]}/proof", headers={"Authorization": f"Bearer {keys['trader']}"})
    assert r.status_code == 403
    assert client.get("/decisions/00000000-0000-0000-0000-000000000000/proof").status_code == 404
    assert client.get("/decisions/nonsense/proof").status_code == 404


def test_consistency_between_two_signed_checkpoints(app, client, clock, books, monkeypatch, database_url, tmp_path):
    _checkpoint(app)
    for symbol in ("NZDUSD", "USDCAD", "USDCHF"):
        clock.advance(seconds=1)
        client.post("/process_trade", json={**SEED_INTENT, "symbol": symbol, "current_price": 1.0, "atr": 0.05})
    _checkpoint(app)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("RPM_INSTANCE_PATH", app.instance_path)
    result = CliRunner().invoke(main, ["audit", "consistency", "--portfolio", "default"])
    assert result.exit_code == 0 and result.output.startswith("CONSISTENT: default size"), result.output
    print(f"\n[consistency] {result.output.strip()}")


@pytest.mark.slow
def test_rpm_serve_makes_signed_checkpoints_by_itself(servers, database_url, tmp_path, keys):
    """Every few records or seconds, a worker of `rpm serve` appends a signed checkpoint to the sink."""
    sink = tmp_path / "sink"
    server = servers({"DATABASE_URL": database_url, "RPM_AUDIT_SINK": str(sink),
                      "RPM_CHECKPOINT_EVERY_RECORDS": "5", "RPM_CHECKPOINT_EVERY_SECONDS": "0.5"})
    for i in range(12):
        status, _ = http("POST", server.url + "/process_trade",
                         {**SEED_INTENT, "intent_id": f"anchor-{i}", "confidence_score": 0.1}, key=keys["trader"])
        assert status == 200
    deadline = time.monotonic() + 10
    sizes: list[int] = []
    while time.monotonic() < deadline:
        lines = [json.loads(line) for f in sink.glob("*.jsonl") for line in f.read_text().splitlines()]
        sizes = sorted(c["statement"]["size"] for c in lines if c["statement"]["chain"] == "default")
        if sizes and sizes[-1] >= 13:  # the configuration version and the 12 decisions
            break
        time.sleep(0.2)
    assert sizes and sizes[-1] >= 13, sizes
    assert len(sizes) == len(set(sizes))  # one checkpoint per size, whichever worker made it
    print(f"\n[anchor] rpm serve, 2 workers: checkpoints of default at sizes {sizes}")


def test_the_chains_tables_are_what_audit_covers():
    assert audit.KIND.keys() == set(audit.AUDITED)


def test_a_sink_serves_one_trail_and_a_changed_trail_id_is_caught(app, client, books, superuser):
    """Every checkpoint names the trail it anchors: a superuser who changes the database's trail id, to make
    verify pass over the checkpoints, has every one of them reported."""
    _checkpoint(app)
    assert verify(client)["ok"] is True
    tamper(superuser, "audit_trail", "UPDATE audit_trail SET id = '00000000-0000-0000-0000-000000000000'")
    report = verify(client)
    assert report["ok"] is False and report["checkpoints"] == 0
    assert {f["problem"] for f in report["findings"]} == {"another trail"}
    print(f"\n[tamper] the trail id changed: {report['findings'][0]['detail']}")


def test_the_application_role_cannot_write_a_row_off_the_chain(books, superuser):
    """Rows of the tables chained since 0012 must have their place: an unchained fill, ledger entry, equity point
    or configuration version is refused, whoever inserts it."""
    with superuser.connect() as conn:
        for table, columns in [
            ("fills", "portfolio_id, decision_id, filled_units, fill_price, realised_delta, at"),
            ("ledger_entries", "portfolio_id, seq, kind, symbol, units, price, realised_pnl, position_units, at"),
            ("equity_points", "portfolio_id, at, equity, drawdown"),
            ("config_versions", "portfolio_id, version, body, config_hash, created_at"),
        ]:
            values = {"fills": "'default', (SELECT id FROM decisions WHERE symbol = 'GBPUSD'), 1, 1, 0, now()",
                      "ledger_entries": "'default', 99, 'close', 'EURUSD', 1, 1, 2727, 0, now()",
                      "equity_points": "'default', now(), 1, 0", "config_versions":
                      "'default', 9, '{}', repeat('0', 64), now()"}[table]
            conn.execute(text("BEGIN"))
            conn.execute(text("SET LOCAL ROLE rpm_app"))
            with pytest.raises(DBAPIError, match=f"a row of {table} off the chain refused"):
                conn.execute(text(f"INSERT INTO {table} ({columns}) VALUES ({values})"))
            conn.execute(text("ROLLBACK"))


def test_values_at_half_a_unit_of_the_last_digit_reconcile(client, clock):
    """Chained rows are rounded to their columns' scale before hashing, the state by PostgreSQL: both round a half
    away from zero, so a price of 1.10000000005 is 1.1000000001 in the position and in its ledger entry."""
    clock.advance(seconds=1)
    d = client.post("/process_trade", json={**SEED_INTENT, "current_price": 1.10000000005}).json["decision"]
    assert d["status"] == "APPROVED"
    assert client.post("/marks", json={"prices": {"GBPUSD": 1.00000000005}}).status_code == 200
    assert client.post("/fills", json={"decision_id": d["id"], "filled_units": 0.5, "fill_price": 1.1}).status_code == 200
    assert client.post("/positions/EURUSD/close", json={"price": 1.1000000001}).status_code == 200
    report = verify(client)
    assert report["ok"] is True, report.get("findings")


def test_one_broken_chain_does_not_stop_the_others_being_anchored(app, client, clock, books, superuser, sql):
    tamper(superuser, "decisions", "DELETE FROM decisions WHERE symbol = 'GBPUSD'")
    made = {c["statement"]["chain"] for c in app.extensions["rpm_anchor"].checkpoint(force=True)}
    assert made == {"_system"}  # default's is refused at its gap; _system's is still made
    assert sql("SELECT chain FROM audit_checkpoints") == [("_system",)]
    lines = [json.loads(line) for f in (Path(app.instance_path) / "checkpoints").glob("*.jsonl")
             for line in f.read_text().splitlines()]
    assert [c["statement"]["chain"] for c in lines] == ["_system"]  # the sink holds only what was committed
    r = client.get(f"/decisions/{books[0]}/proof")
    assert r.status_code == 409 and "is broken between sequence numbers" in r.json["message"], r.json


def test_a_sink_with_lines_that_are_not_checkpoints_is_reported_not_a_crash(app, client, books):
    _checkpoint(app)
    day = next((Path(app.instance_path) / "checkpoints").glob("*.jsonl"))
    with day.open("a") as f:
        f.write('123\n{"statement": "x", "signature": "y"}\nnot json\n')
    report = verify(client)
    assert report["ok"] is False and report["checkpoints"] == 2
    assert [f["problem"] for f in report["findings"]] == ["bad signature"] * 3


def test_check_proof_refuses_what_is_not_a_proof(tmp_path, app):
    public = tmp_path / "rpm.pub"
    public.write_text(public_pem(app.extensions["rpm_anchor"].signer.public))
    for content in ("[]", '"x"', "null", "{}", '{"format": "rpm-decision-proof/1"}', "not json"):
        path = tmp_path / "p.json"
        path.write_text(content)
        result = CliRunner().invoke(main, ["audit", "check-proof", str(path), "--public-key", str(public)])
        assert result.exit_code == 1 and result.output.startswith("INVALID"), (content, result.output)
    bad_key = tmp_path / "bad.pem"
    bad_key.write_text("not a key")
    result = CliRunner().invoke(main, ["audit", "check-proof", str(path), "--public-key", str(bad_key)])
    assert result.exit_code == 1 and "not a PEM Ed25519 key" in result.output


def test_checkpoints_of_a_rotated_key_still_verify_when_it_is_trusted(app, client, books, settings, clock, tmp_path):
    """A new signing key: the checkpoints signed with the old one are accepted when the old public key is listed
    in RPM_AUDIT_TRUSTED_KEYS, reported otherwise."""
    import dataclasses

    from app import create_app

    _checkpoint(app)
    old_public = tmp_path / "old.pub"
    old_public.write_text(public_pem(app.extensions["rpm_anchor"].signer.public))
    new_key = tmp_path / "new.pem"
    from app.anchor import Signer

    Signer.from_file(new_key, create=True)
    sink = str(Path(app.instance_path) / "checkpoints")
    for trusted, ok in (((), False), ((str(old_public),), True)):
        rotated = create_app(dataclasses.replace(settings, audit_signing_key=str(new_key), audit_sink=sink,
                                                 audit_trusted_keys=trusted), clock=clock)
        try:
            report = rotated.extensions["rpm_compliance"].verify()
        finally:
            rotated.extensions["rpm"].db.dispose()
        assert report["ok"] is ok, report.get("findings")
