"""Every endpoint through the Flask test client, on real PostgreSQL."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from ..conftest import SEED_INTENT


def post(client, path, body, **query):
    return client.post(path, json=body, query_string=query)


def test_spec_request_is_approved_with_27272_72_units_and_stored(client, sql):
    r = post(client, "/process_trade", SEED_INTENT)
    assert r.status_code == 200
    d = r.json["decision"]
    assert d["status"] == "APPROVED" and d["reason"] is None and d["rejected_trade"] is None
    assert d["approved_trade"] == {"symbol": "EURUSD", "direction": 1, "position_units": 27272.72,
                                   "confidence_score": 0.75, "regime": "TRENDING", "atr": 0.001,
                                   "risk_per_trade": 1000.0, "current_price": 1.1, "reducing": False, "expires_at": None}
    assert set(d["breakdown"]) >= {"kill_switches", "sizing", "constraints"}
    assert len(d["config_hash"]) == 64
    assert r.json["portfolio_state"]["open_positions"] == 1
    assert r.json["risk_metrics"]["total_decisions"] == 1
    rows = sql("SELECT status, approved_units, seq, symbol FROM decisions")
    assert [(s, float(u), q, sym) for s, u, q, sym in rows] == [("APPROVED", 27272.72, 1, "EURUSD")]
    assert float(sql("SELECT units FROM positions WHERE symbol='EURUSD'")[0][0]) == 27272.72


def test_a_rejection_is_a_normal_200_answer(client):
    r = post(client, "/process_trade", {**SEED_INTENT, "confidence_score": 0.3})
    assert r.status_code == 200
    d = r.json["decision"]
    assert d["status"] == "REJECTED" and d["approved_trade"] is None
    assert d["rejected_trade"]["reason_code"] == "CONFIDENCE_TOO_LOW"
    assert d["rejected_trade"]["context"] == {"confidence_score": 0.3, "threshold": 0.6}


def test_sequence_numbers_are_gap_free_per_portfolio(client, sql):
    for confidence in (0.75, 0.3, 0.75):
        post(client, "/process_trade", {**SEED_INTENT, "confidence_score": confidence})
    assert [r[0] for r in sql("SELECT seq FROM decisions ORDER BY seq")] == [1, 2, 3]


def test_what_if_returns_a_decision_and_changes_nothing(client, sql):
    r = post(client, "/what_if", SEED_INTENT)
    assert r.status_code == 200 and r.json["decision"]["status"] == "APPROVED"
    assert r.json["decision"]["what_if"] is True
    assert sql("SELECT count(*) FROM decisions")[0][0] == 0
    assert sql("SELECT count(*) FROM positions")[0][0] == 0


def test_marks_revalue_and_trip_the_drawdown_switch(client, sql):
    post(client, "/process_trade", SEED_INTENT)
    r = post(client, "/marks", {"prices": {"EURUSD": 0.70}})
    assert r.status_code == 200
    assert "drawdown" in r.json["tripped"]
    assert r.json["portfolio_state"]["drawdown_pct"] == pytest.approx(10.909, abs=0.01)
    health = client.get("/health").json
    assert health["kill_switches"]["drawdown"]["state"] == "TRIPPED"
    assert health["kill_switches"]["drawdown"]["current_pct"] == pytest.approx(10.909, abs=0.01)
    assert health["trading_state"] == "HALTED"
    # the curve's last point: the equity, and the peak its drawdown is measured from
    last = client.get("/portfolio/equity").json["points"][-1]
    assert last["peak_equity"] == 100000 and last["equity"] == pytest.approx(89090.91, abs=0.01)
    assert last["drawdown"] == pytest.approx(1 - last["equity"] / last["peak_equity"])
    events = sql("SELECT switch, action FROM switch_events ORDER BY id")
    assert ("drawdown", "TRIPPED") in events
    blocked = post(client, "/process_trade", {**SEED_INTENT, "symbol": "GBPUSD", "current_price": 1.25})
    assert blocked.json["decision"]["reason"] == "HALTED"
    closing = post(client, "/process_trade", {**SEED_INTENT, "direction": -1, "current_price": 0.70})
    assert closing.json["decision"]["status"] == "APPROVED"
    assert closing.json["decision"]["approved_trade"]["reducing"] is True


def test_fill_reconciles_an_approved_decision(client, sql):
    d = post(client, "/process_trade", SEED_INTENT).json["decision"]
    r = post(client, "/fills", {"decision_id": d["id"], "filled_units": 20000, "fill_price": 1.1002})
    assert r.status_code == 200
    assert r.json["released_units"] == pytest.approx(7272.72)
    assert [float(v) for v in sql("SELECT units, avg_price FROM positions")[0]] == [20000, 1.1002]
    again = post(client, "/fills", {"decision_id": d["id"], "filled_units": 1, "fill_price": 1.1})
    assert again.status_code == 409


def test_over_fill_and_fill_of_a_rejection_are_refused(client, sql):
    d = post(client, "/process_trade", SEED_INTENT).json["decision"]
    over = post(client, "/fills", {"decision_id": d["id"], "filled_units": 30000, "fill_price": 1.1})
    assert over.status_code == 409 and "over-fill" in over.json["message"]
    rejected = post(client, "/process_trade", {**SEED_INTENT, "confidence_score": 0.1}).json["decision"]
    r = post(client, "/fills", {"decision_id": rejected["id"], "filled_units": 1, "fill_price": 1.1})
    assert r.status_code == 409
    unknown = post(client, "/fills", {"decision_id": "00000000-0000-4000-8000-000000000000", "filled_units": 1,
                                      "fill_price": 1.1})
    assert unknown.status_code == 404
    malformed = post(client, "/fills", {"decision_id": "nope", "filled_units": 1, "fill_price": 1.1})
    assert malformed.status_code == 422 and "decision_id" in malformed.json["errors"]
    assert sql("SELECT count(*) FROM fills")[0][0] == 0


def test_close_realises_pnl(client):
    post(client, "/process_trade", SEED_INTENT)
    r = post(client, "/positions/EURUSD/close", {"price": 1.1010})
    assert r.status_code == 200
    assert r.json["realised_pnl"] == pytest.approx(27.27272)
    assert r.json["portfolio_state"]["open_positions"] == 0
    assert post(client, "/positions/EURUSD/close", {"price": 1.1}).status_code == 404


def test_portfolio_shows_positions_exposures_and_pnl(client):
    post(client, "/process_trade", SEED_INTENT)
    p = client.get("/portfolio").json
    assert p["positions"][0]["symbol"] == "EURUSD" and p["positions"][0]["units"] == 27272.72
    assert p["exposures"]["symbol"]["EURUSD"] == pytest.approx(29999.992)
    assert p["exposures"]["currency"] == {"EUR": pytest.approx(29999.992)}
    assert set(p) >= {"equity", "realised_pnl", "unrealised_pnl", "drawdown", "daily_pnl", "weekly_pnl"}


def test_metrics_count_decisions_by_status_and_reason(client):
    post(client, "/process_trade", SEED_INTENT)
    post(client, "/process_trade", {**SEED_INTENT, "confidence_score": 0.2})
    m = client.get("/metrics").json
    assert (m["total_decisions"], m["trades_approved"], m["trades_rejected"]) == (2, 1, 1)
    assert m["approval_rate"] == 0.5
    assert m["rejections_by_reason"] == {"CONFIDENCE_TOO_LOW": 1}
    assert m["latency_ms"]["count"] == 2 and m["latency_ms"]["p99"] is not None


def test_health_reports_each_switch_and_the_database(client):
    h = client.get("/health").json
    assert h["health"] == "HEALTHY" and h["database"]["status"] == "ok"
    assert set(h["kill_switches"]) == {"drawdown", "daily_drawdown", "daily_loss", "weekly_loss",
                                       "confidence_collapse", "volatility_shock", "manual_halt"}
    assert h["kill_switches"]["daily_loss"]["threshold"] == -2000


def test_liveness_and_readiness(client):
    assert client.get("/health/live").json == {"status": "alive"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json["ready"] is True


def test_halt_and_resume_are_audited(client, sql, clock):
    r = post(client, "/halt", {"reason": "desk review"})
    assert r.status_code == 200 and r.json["trading_state"] == "HALTED"
    assert post(client, "/process_trade", SEED_INTENT).json["decision"]["reason"] == "HALTED"
    assert post(client, "/resume", {}).status_code == 200
    assert post(client, "/process_trade", SEED_INTENT).json["decision"]["status"] == "APPROVED"
    actions = sql("SELECT action, reason, before->>'trading_state', after->>'trading_state' FROM admin_actions "
                  "WHERE action NOT LIKE 'key_%' ORDER BY id")
    assert actions == [("halt", "desk review", "ACTIVE", "HALTED"), ("resume", None, "HALTED", "ACTIVE")]


def test_halt_needs_a_reason(client, sql):
    for body in ({}, {"reason": ""}, {"reason": "   "}):
        r = post(client, "/halt", body)
        assert r.status_code == 422 and "reason" in r.json["errors"]
    assert sql("SELECT count(*) FROM admin_actions WHERE action NOT LIKE 'key_%'")[0][0] == 0


def test_resume_during_cooldown_is_409_unless_forced_with_a_reason(client, clock, sql):
    post(client, "/process_trade", SEED_INTENT)
    post(client, "/marks", {"prices": {"EURUSD": 0.70}})
    r = post(client, "/resume", {})
    assert r.status_code == 409 and "drawdown" in r.json["errors"]["cooldown"]
    assert post(client, "/resume", {"force": True}).status_code == 422
    forced = post(client, "/resume", {"force": True, "reason": "loss accepted by the CRO"})
    assert forced.status_code == 200 and forced.json["trading_state"] == "ACTIVE"
    before, after = sql("SELECT before, after FROM admin_actions WHERE action='resume'")[0]
    assert after["forced"] is True
    assert float(before["references"]["peak_equity"]) == 100000
    assert float(after["references"]["peak_equity"]) == pytest.approx(89090.91, abs=0.01)


def test_config_get_and_put_make_a_new_audited_version(client, sql):
    c = client.get("/config").json
    assert c["version"] == 1 and c["config"]["risk_per_trade"] == 0.01
    r = client.put("/config", json={"config": {**c["config"], "risk_per_trade": 0.005},
                                    "reason": "tighten risk"})
    assert r.status_code == 200 and r.json["version"] == 2 and r.json["config_hash"] != c["config_hash"]
    assert client.get("/config").json["config"]["risk_per_trade"] == 0.005
    d = post(client, "/process_trade", SEED_INTENT).json["decision"]
    assert d["config_hash"] == r.json["config_hash"] and d["config_version"] == 2
    action = sql("SELECT action, reason, after FROM admin_actions WHERE action = 'config_change'")[0]
    assert action[0] == "config_change" and action[1] == "tighten risk"
    assert action[2]["changed"] == {"risk_per_trade": {"before": 0.01, "after": 0.005}}


@pytest.mark.parametrize("config, field", [
    ({"risk_per_trade": 0.5}, "risk_per_trade"),
    ({"max_drawdown": -1}, "max_drawdown"),
    ({"no_such_limit": 1}, "no_such_limit"),
    ({"regime_adjustments": "high"}, "regime_adjustments"),
])
def test_invalid_config_is_422_naming_the_field_and_changes_nothing(client, sql, config, field):
    r = client.put("/config", json={"config": config})
    assert r.status_code == 422
    assert field in r.json["errors"]["config"]
    assert sql("SELECT count(*) FROM config_versions")[0][0] == 1


def test_unknown_portfolio_is_404(client):
    assert client.get("/portfolio?portfolio_id=nope").status_code == 404
    r = post(client, "/process_trade", {**SEED_INTENT, "portfolio_id": "nope"})
    assert r.status_code == 404 and r.json["code"] == 404


def test_openapi_document_lists_every_endpoint_and_docs_are_local(client):
    spec = client.get("/openapi.json").json
    paths = set(spec["paths"])
    assert paths >= {"/process_trade", "/what_if", "/marks", "/fills", "/positions/{symbol}/close", "/portfolio",
                     "/health", "/health/live", "/health/ready", "/metrics", "/halt", "/resume", "/config"}
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "/docs/assets/swagger-ui-bundle.js" in html and "http" not in html.split("<body>")[1].split("url:")[0]
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-standalone-preset.js"):
        with client.get(f"/docs/assets/{asset}") as response:
            assert response.status_code == 200 and len(response.get_data()) > 1000


def test_process_trades_decides_a_list_in_order_each_its_own_decision(client, sql):
    client.post("/portfolios", json={"portfolio_id": "p2"})
    intents = [{**SEED_INTENT, "atr": 0.05, "intent_id": "b1"},
               {**SEED_INTENT, "atr": 0.05, "intent_id": "b2"},
               {**SEED_INTENT, "confidence_score": 0.1},
               {**SEED_INTENT, "portfolio_id": "p2"},
               {**SEED_INTENT, "atr": 0.05, "intent_id": "b1"}]  # a retry within the batch
    r = client.post("/process_trades", json={"intents": intents})
    assert r.status_code == 200
    d = r.json["decisions"]
    assert [x["status"] for x in d] == ["APPROVED", "APPROVED", "REJECTED", "APPROVED", "APPROVED"]
    assert [x["approved_trade"]["position_units"] for x in d[:2]] == [20000.0, 7272.72]  # the second sees the first
    assert d[4]["replay"] is True and d[4]["id"] == d[0]["id"]
    assert [x["seq"] for x in d] == [1, 2, 3, 1, 1]
    assert set(r.json["portfolio_states"]) == {"default", "p2"}
    assert sql("SELECT portfolio_id, count(*) FROM decisions GROUP BY portfolio_id ORDER BY 1") == [
        ("default", 3), ("p2", 1)]
    assert client.get("/audit/verify").json["ok"] is True


def test_an_invalid_intent_refuses_the_whole_batch(client, sql):
    r = client.post("/process_trades", json={"intents": [SEED_INTENT, {**SEED_INTENT, "symbol": "XAUXAU"}]})
    assert r.status_code == 422 and "1" in r.json["errors"]
    assert sql("SELECT count(*) FROM decisions")[0][0] == 0


def test_a_position_opened_closed_and_reopened_within_one_batch(client, sql):
    intents = [{**SEED_INTENT, "intent_id": "open"},
               {**SEED_INTENT, "direction": -1, "intent_id": "close"},
               {**SEED_INTENT, "symbol": "GBPUSD", "current_price": 1.25, "intent_id": "other"},
               {**SEED_INTENT, "intent_id": "reopen"}]
    r = client.post("/process_trades", json={"intents": intents})
    assert r.status_code == 200, r.json
    d = r.json["decisions"]
    assert [x["status"] for x in d] == ["APPROVED"] * 4
    assert d[1]["approved_trade"]["reducing"] is True
    assert sql("SELECT symbol, units FROM positions ORDER BY symbol") == [
        ("EURUSD", Decimal(str(d[3]["approved_trade"]["position_units"]))),
        ("GBPUSD", Decimal(str(d[2]["approved_trade"]["position_units"])))]
    assert sql("SELECT kind, symbol FROM ledger_entries ORDER BY seq") == [
        ("open", "EURUSD"), ("reduce", "EURUSD"), ("open", "GBPUSD"), ("open", "EURUSD")]
    assert sql("SELECT last_seq, last_ledger_seq FROM portfolios WHERE id = 'default'") == [(4, 4)]
    assert client.get("/audit/verify").json["ok"] is True
    # the state read back is the state written: the next decision sees both positions
    assert client.get("/portfolio").json["open_positions"] == 2


def test_queued_rows_are_written_in_order_with_their_values(app, client, sql):
    """The pipeline queues rows and sends each table's as one JSON array (jsonb_populate_recordset),
    every FLUSH_ROWS rows and at the commit: all arrive, in order, their values as given."""
    from app.store import models as m
    from app.store.transaction import FLUSH_ROWS, PortfolioTransaction

    db = app.extensions["rpm"].db
    at = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    details = [{"n": i} for i in range(FLUSH_ROWS + 3)]
    details[5] = {"n": 2**63 - 1, "x": [0.30000000000000004, None, "\u00e9"]}
    with db.connection() as conn:
        tx = PortfolioTransaction(conn, db.cache_key)
        with tx.writing():
            for i, detail in enumerate(details):
                tx.add([(m.SwitchEventRow, dict(
                    portfolio_id="default", switch="test", action="REBASED", symbol=None, at=at,
                    value=Decimal("0.1234567890"), threshold=None, cooldown_until=None, reason=f"r{i}",
                    detail=detail, decision_id=None, audit_seq=1000 + i, prev_hash="0" * 64, row_hash="1" * 64))])
            tx.commit()
    rows = sql("SELECT reason, detail, value, symbol, at FROM switch_events WHERE switch = 'test' ORDER BY id")
    assert [(r, d) for r, d, *_ in rows] == [(f"r{i}", d) for i, d in enumerate(details)]
    assert {(v, s, a) for *_, v, s, a in rows} == {(Decimal("0.1234567890"), None, at)}


def test_an_intent_checked_before_the_lock_is_checked_again_under_a_newer_configuration(client):
    """Group commit validates an intent early under the last configuration the process saw; a
    configuration changed since is the one that counts."""
    tsla = {**SEED_INTENT, "symbol": "TSLA", "current_price": 190.0, "atr": 2.0}
    assert post(client, "/process_trade", SEED_INTENT).status_code == 200  # the process now knows version 1
    config = client.get("/config").json["config"]
    # (TSLA is not among the shared instruments a new portfolio lists)
    with_tsla = {**config, "instruments": {**config["instruments"], "TSLA": {"asset_class": "equity", "currency": "USD"}}}
    assert client.put("/config", json={"config": with_tsla, "reason": "list TSLA"}).status_code == 200
    r = post(client, "/process_trade", tsla)  # refused under version 1, accepted under version 2
    assert r.status_code == 200 and r.json["decision"]["config_version"] == 2
    assert client.put("/config", json={"config": config, "reason": "delist TSLA"}).status_code == 200
    r = post(client, "/process_trade", tsla)  # accepted under version 2, refused under version 3
    assert r.status_code == 422 and "symbol" in r.json["errors"]


def test_an_intent_id_is_unique_per_portfolio_not_across_portfolios(client, sql):
    client.post("/portfolios", json={"portfolio_id": "p2"})
    body = {**SEED_INTENT, "intent_id": "shared-id"}
    first = post(client, "/process_trade", body).json["decision"]
    other = post(client, "/process_trade", {**body, "portfolio_id": "p2", "confidence_score": 0.9}).json["decision"]
    again = post(client, "/process_trade", body).json["decision"]
    assert other["replay"] is False and other["portfolio_id"] == "p2" and other["id"] != first["id"]
    assert again["replay"] is True and again["id"] == first["id"]
    assert sql("SELECT portfolio_id FROM decisions WHERE intent_id = 'shared-id' ORDER BY 1") == [("default",), ("p2",)]


def test_intents_that_join_a_transaction_after_its_lock_read_what_they_need(app, client, sql):
    """Group commit: intents queued while the leader awaited the lock join its transaction; one more
    round trip reads what the first read did not — another symbol's ATR history, whether an intent
    id was decided — so a joiner decides on the whole state and a retry among them is a replay."""
    from app.services import Actor
    from app.services.trading import Item

    trading = app.extensions["rpm"].trading
    client.post("/portfolios", json={"portfolio_id": "p2"})
    usdjpy = {**SEED_INTENT, "symbol": "USDJPY", "current_price": 150.0, "atr": 0.9}
    for n in range(3):
        assert post(client, "/process_trade", {**usdjpy, "atr": 0.9 + n / 10, "intent_id": f"jpy-{n}"}).status_code == 200
    first = post(client, "/process_trade", {**SEED_INTENT, "intent_id": "dup"}).json["decision"]
    [(jpy_before,)] = sql("SELECT history FROM atr_histories WHERE portfolio_id = 'default' AND symbol = 'USDJPY'")
    assert len(jpy_before) == 3

    actor = Actor("test", "trader")
    item = lambda fields: Item(fields, actor, 0.0)  # noqa: E731
    lead = item({**SEED_INTENT, "intent_id": "lead"})
    joiners = [item({**usdjpy, "atr": 1.5, "intent_id": "late-jpy"}), item({**SEED_INTENT, "intent_id": "dup"}),
               item({**SEED_INTENT, "portfolio_id": "p2", "intent_id": "other"})]
    offered = []

    def more(accept):
        offered.extend(j for j in joiners if not accept(j))
        return [j for j in joiners if accept(j)]

    answers = trading._decide_group([lead], more)
    assert [j.fields["intent_id"] for j in offered] == ["other"]  # not this transaction's portfolio
    assert [(a["decision"]["intent_id"], a["decision"]["replay"]) for a in answers] == [
        ("lead", False), ("late-jpy", False), ("dup", True)]
    assert answers[2]["decision"]["id"] == first["id"]
    [(jpy_after,)] = sql("SELECT history FROM atr_histories WHERE portfolio_id = 'default' AND symbol = 'USDJPY'")
    assert jpy_after[:3] == jpy_before and len(jpy_after) == 4  # the history read, then extended
    assert sql("SELECT seq FROM decisions WHERE portfolio_id = 'default' ORDER BY seq") == [(n,) for n in range(1, 7)]
    assert sql("SELECT count(*) FROM decisions WHERE portfolio_id = 'p2'") == [(0,)]
    assert client.get("/audit/verify").json["ok"] is True


def test_intent_id_lookups_probe_the_unique_index_on_a_table_without_statistics(client, database_url):
    """Before a table has statistics (autovacuum off, a new database), the planner guesses that an intent id
    matches 0.5% of the decisions: the 100 ids of a batch made it read the whole table under the portfolio
    lock. Each id is now one probe of decision_intents' primary key (portfolio_id, intent_id), then one of the
    decision's by (id, decided_at), in the plan for the given ids and in the generic plan, and the lookups find
    exactly the ids decided in the portfolio."""
    import psycopg

    from app.store.partitions import PARTITION
    from app.store.transaction import _SELECT_DECIDED, _SELECT_STATE

    client.post("/portfolios", json={"portfolio_id": "other"})
    for pid, intent_id in (("default", "seed"), ("other", "elsewhere")):
        assert client.post("/process_trade", json={**SEED_INTENT, "intent_id": intent_id,
                                                   "portfolio_id": pid}).status_code == 200
    dsn = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in ("decisions_default", "decision_intents"):  # no statistics, ever (the test's clock's month)
            conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        conn.execute(  # 30,000 more decisions of `default` (copies of the first, with small documents)
            "INSERT INTO decisions SELECT (jsonb_populate_record(d, jsonb_build_object('id', 'copy-' || g, "
            "'seq', 100 + g, 'intent_id', 'copy-' || g, 'breakdown', '{}'::jsonb, 'state_before', '{}'::jsonb))).* "
            "FROM decisions d, generate_series(1, 30000) g WHERE d.intent_id = 'seed'")
        assert conn.execute("SELECT count(*) FROM pg_stats WHERE tablename IN ('decisions_default', "
                            "'decision_intents')").fetchone()[0] == 0
        ids = [f"copy-{n}" for n in range(1, 60)] + [f"new-{n}" for n in range(40)] + ["elsewhere"]
        params = {"p": "default", "s": ["EURUSD"], "i": ids}
        # the plan for these values, and the generic plan the decision transaction asks for
        # (_GENERIC_PLANS), read from the statement as psycopg prepares it ($1... in order of appearance)
        for statement, order in ((_SELECT_STATE, ("p", "s", "i")), (_SELECT_DECIDED, ("i", "p"))):
            conn.execute(statement, params, prepare=True).fetchall()
            name = conn.execute("SELECT name FROM pg_prepared_statements ORDER BY prepare_time DESC LIMIT 1").fetchone()[0]
            arguments = ", ".join("%s::text" if key == "p" else "%s::text[]" for key in order)
            conn.execute("SET plan_cache_mode = force_generic_plan")
            generic = psycopg.ClientCursor(conn).execute(  # (a utility statement takes no bound parameters)
                f"EXPLAIN (FORMAT JSON) EXECUTE {name}({arguments})", [params[k] for k in order]).fetchone()
            conn.execute("SET plan_cache_mode = auto")
            custom = conn.execute("EXPLAIN (FORMAT JSON) " + statement, params).fetchone()
            for ((plan,),) in (generic, custom):
                probes = list(_nodes_on(plan["Plan"], lambda name: name == "decision_intents"))
                assert probes and all(n["Node Type"] in ("Index Scan", "Index Only Scan")
                                      and n["Index Name"] == "pk_decision_intents" for n in probes), probes
                scans = list(_nodes_on(plan["Plan"], PARTITION.match))  # the months' partitions
                assert scans and all(n["Node Type"] in ("Index Scan", "Index Only Scan")
                                     and n["Index Name"].endswith("_pkey") for n in scans), scans
        found = conn.execute(_SELECT_STATE, params).fetchone()[-1]
        assert sorted(found) == sorted(ids[:59])  # not the new ones, nor the one of another portfolio
        assert sorted(r[0] for r in conn.execute(_SELECT_DECIDED.replace("d.*", "d.intent_id"), params)) == sorted(
            ids[:59])


def _nodes_on(node, relation):
    if relation(node.get("Relation Name") or ""):
        yield node
    for child in node.get("Plans", ()):
        yield from _nodes_on(child, relation)
