"""The audit trail at scale, partitioned by month and not, side by side: N decisions (default 10,000,000) over a
year, then for each layout a compliance query (one day, one symbol), a CSV export of one day, a decision by id, a
decision's proof — each timed — and the database's size.

    python -m bench.audit_scale [--rows 10000000] [--layouts partitioned,flat] [--verify]
                                [--admin-url postgresql+psycopg://postgres@127.0.0.1/postgres]

For each layout a throw-away database (rpm_bench_audit_<layout>) at the current schema; `flat` has its decisions
table made an ordinary table again (what the schema was before 0015), so the same code reads both. Decisions are
loaded with a valid hash chain (generated from real engine decisions, COPY'd in). With --verify, `verify` of the
whole trail too (about 11 minutes per layout at 10,000,000 on this machine's kind). A benchmark: it prints
figures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app import create_app
from app.risk import PortfolioState, RPMConfig, TradeIntent, decide, engine
from app.services import Actor
from app.settings import Settings
from app.store import audit
from app.store import models as m
from app.store.migrate import upgrade

from .service import drop_database, fresh_database

# the signing key and the checkpoints' sink of the run
INSTANCE = tempfile.mkdtemp(prefix="rpm-bench-audit-")
SYMBOLS = {"EURUSD": 1.10, "GBPUSD": 1.25, "USDJPY": 150.0, "AUDUSD": 0.65, "USDCHF": 0.90, "NZDUSD": 0.60,
           "USDCAD": 1.35, "EURGBP": 0.88}
T0 = datetime(2025, 1, 1, tzinfo=UTC)
YEAR = timedelta(days=365)  # the decisions are spread over it
COLUMNS = [c.name for c in m.Decision.__table__.columns]
JSON_COLUMNS = {c.name for c in m.Decision.__table__.columns if c.type is m.Json}


def templates(config: RPMConfig) -> list[tuple]:
    """Real engine decisions (approved, adjusted, rejected) to vary."""
    state = engine.mark(PortfolioState.new(config), SYMBOLS, config, T0).state
    out = []
    for i, (symbol, price) in enumerate(SYMBOLS.items()):
        for confidence in (0.75, 0.9, 0.4):
            intent = TradeIntent.create(config, symbol=symbol, direction=1 if i % 2 else -1,
                                        confidence_score=confidence, regime="TRENDING", atr=price * 0.004,
                                        vol_percentile=0.5, current_price=price)
            outcome = decide(state, intent, config, T0, "template")
            inputs = engine.decision_inputs(state, intent, T0).to_dict()
            inputs.pop("mark_history")
            inputs["mark_history_refs"] = {}
            out.append((intent, outcome.decision, inputs))
    return out


def load(url: str, rows: int) -> None:
    step = YEAR / rows
    config = RPMConfig()
    app = create_app(Settings(database_url=url, instance_path=INSTANCE))
    app.extensions["rpm"].uow.ensure_default()
    app.extensions["rpm"].db.dispose()
    kinds = templates(config)
    engine_ = create_engine(url)
    with engine_.begin() as conn:
        seq, head = conn.execute(text("SELECT audit_seq, coalesce(audit_head, :g) FROM portfolios "
                                      "WHERE id = 'default'"), {"g": audit.GENESIS}).one()
        last_seq = conn.execute(text("SELECT last_seq FROM portfolios WHERE id = 'default'")).scalar()
        # the decisions name the portfolio's stored configuration (verify checks that they do)
        config_hash = conn.execute(text("SELECT config_hash FROM config_versions WHERE portfolio_id = 'default' "
                                        "AND version = 1")).scalar()
    engine_.dispose()
    raw = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    started = time.perf_counter()
    with psycopg.connect(raw) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY decisions ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for n in range(rows):
                intent, d, inputs = kinds[n % len(kinds)]
                seq += 1
                last_seq += 1
                decided_at = T0 + step * n
                values = {
                    "id": str(uuid.UUID(int=n + 1)), "portfolio_id": "default", "seq": last_seq,
                    "intent_id": f"sig-{n}", "request_hash": "0" * 64, "symbol": intent.symbol,
                    "direction": intent.direction, "status": d.status.value, "reason_code": d.reason,
                    "message": d.message, "approved_units": d.units, "price": intent.current_price,
                    "reducing": False, "decided_at": decided_at, "config_hash": config_hash,
                    "config_version": 1, "intent": {**intent.to_dict(), "intent_id": f"sig-{n}"},
                    # the documents as the service stores them: their JSON text
                    "breakdown": audit.document_text(d.breakdown), "context": dict(d.context),
                    "state_before": audit.document_text(inputs),
                    "booking": None, "latency_ms": Decimal("1.234"), "key_id": None, "key_name": "bench",
                    "key_role": "trader", "request_id": None, "audit_seq": seq, "prev_hash": head,
                }
                values["row_hash"] = head = audit.row_hash(head, "decision", {c: values[c] for c in
                                                                               audit.COLUMNS[m.Decision]})
                copy.write_row([json.dumps(values[c]) if c in JSON_COLUMNS else values[c] for c in COLUMNS])
                if n and n % 1_000_000 == 0:
                    print(f"  loaded {n:,} rows ({time.perf_counter() - started:.0f}s)", flush=True)
        cur.execute("UPDATE portfolios SET audit_seq = %s, audit_head = %s, last_seq = %s WHERE id = 'default'",
                    (seq, head, last_seq))
        conn.commit()
        cur.execute("ANALYZE decisions")
    print(f"loaded {rows:,} decisions in {time.perf_counter() - started:.1f}s")


FLAT = """
ALTER TABLE decisions RENAME TO decisions_partitioned;
CREATE TABLE decisions (LIKE decisions_partitioned INCLUDING DEFAULTS INCLUDING STORAGE INCLUDING COMPRESSION
                        INCLUDING INDEXES);
DROP TABLE decisions_partitioned CASCADE;
CREATE VIEW decision_documents AS SELECT id, portfolio_id, seq, breakdown, state_before FROM decisions;
CREATE TRIGGER decisions_intent AFTER INSERT ON decisions FOR EACH ROW WHEN (NEW.intent_id IS NOT NULL)
    EXECUTE FUNCTION rpm_decision_intent();
"""


def flatten(url: str) -> None:
    """The decisions table as an ordinary table (the same columns, indexes and intent trigger)."""
    raw = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(raw, autocommit=True) as conn:
        conn.execute(FLAT)


def month_partitions(url: str) -> None:
    from app.store import partitions

    engine_ = create_engine(url)
    with engine_.begin() as conn:
        month = partitions.month_of(T0)
        while month <= partitions.month_of(T0 + YEAR):
            partitions.create(conn, month)
            month = partitions.next_month(month)
    engine_.dispose()


def timed(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


def measure(url: str, rows: int, do_verify: bool) -> dict[str, str]:
    import random

    from app.anchor import check_proof

    app = create_app(Settings(database_url=url, instance_path=INSTANCE))
    key, _ = app.extensions["rpm_keys"].create("compliance", "bench", None, Actor("bench", "admin"))
    client = app.test_client()
    auth = {"Authorization": f"Bearer {key}"}
    out = {}
    day = T0 + timedelta(days=200)
    window = {"from": day.isoformat(), "to": (day + timedelta(days=1)).isoformat()}
    found = {}

    def one_day():
        r = client.get("/decisions", query_string={"symbol": "GBPUSD", "limit": 1000, **window}, headers=auth)
        found["day"] = r.json["count"]

    t = timed(one_day, 7)
    out["one day, one symbol (GET /decisions)"] = f"{statistics.median(t):.1f} ms ({found['day']} rows)"

    def export_day():
        with client.get("/decisions", query_string={"format": "csv", "portfolio_id": "*", **window},
                        headers=auth, buffered=False) as r:
            found["csv"] = sum(chunk.count(b"\n") for chunk in r.response) - 1

    t = timed(export_day, 3)
    out["CSV export of one day"] = f"{statistics.median(t):.0f} ms ({found['csv']:,} rows)"
    picks = [str(uuid.UUID(int=n + 1)) for n in random.Random(7).sample(range(rows), 50)]
    t = [timed(lambda i=i: client.get(f"/decisions/{i}", headers=auth), 1)[0] for i in picks]
    out["a decision by id (GET /decisions/{id})"] = f"median {statistics.median(t):.1f} ms, slowest {max(t):.1f} ms"
    started = time.perf_counter()
    app.extensions["rpm_anchor"].checkpoint(force=True, wait=True)
    out["the first checkpoint (Merkle tree of every record)"] = f"{time.perf_counter() - started:.0f} s"
    t = []
    for i in picks:
        started = time.perf_counter()
        r = client.get(f"/decisions/{i}/proof", headers=auth)
        t.append((time.perf_counter() - started) * 1000)
        assert r.status_code == 200, r.json
    check_proof(r.json, app.extensions["rpm_anchor"].signer.public)
    out["a decision's proof (GET /decisions/{id}/proof)"] = f"median {statistics.median(t):.1f} ms, slowest {max(t):.1f} ms"
    if do_verify:
        started = time.perf_counter()
        report = app.extensions["rpm_compliance"].verify()
        elapsed = time.perf_counter() - started
        out["verify"] = f"ok={report['ok']} {elapsed:.0f} s ({report['count'] / elapsed:,.0f} records/s)"
    app.extensions["rpm"].db.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--layouts", default="partitioned,flat")
    parser.add_argument("--verify", action="store_true", help="verify the whole trail too (long)")
    parser.add_argument("--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    args = parser.parse_args()
    results: dict[str, dict[str, str]] = {}
    for layout in args.layouts.split(","):
        name = f"rpm_bench_audit_{layout}"
        url, admin = fresh_database(args.admin_url, name)
        try:
            upgrade(url)
            if layout == "flat":
                flatten(url)
            else:
                month_partitions(url)
            print(f"[{layout}]", flush=True)
            load(url, args.rows)
            results[layout] = measure(url, args.rows, args.verify)
            with admin.connect() as conn:
                results[layout]["database size"] = conn.execute(
                    text(f"SELECT pg_size_pretty(pg_database_size('{name}'))")).scalar()
            for what, figure in results[layout].items():
                print(f"  {what}: {figure}", flush=True)
        finally:
            drop_database(admin, name, keep=args.keep)
    shutil.rmtree(INSTANCE, ignore_errors=True)
    layouts = list(results)
    print(f"\n{args.rows:,} decisions over a year | " + " | ".join(layouts))
    for what in results[layouts[0]]:
        print(f"{what} | " + " | ".join(results[layout].get(what, "") for layout in layouts))


if __name__ == "__main__":
    main()
