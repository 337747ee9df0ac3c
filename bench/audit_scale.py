"""The audit trail at scale: 1,000,000 decisions, then a compliance query, a CSV export, the Merkle tree and a
signed checkpoint, decision proofs, and a verify against the checkpoint.

    python -m bench.audit_scale [--rows 1000000] [--admin-url postgresql+psycopg://postgres@127.0.0.1/postgres]

Creates a throw-away database (rpm_bench_audit), loads decisions with a valid hash chain
(generated from real engine decisions, COPY'd in), and prints:
- a one-day range for one symbol through GET /decisions (median of runs);
- the CSV export of every decision through GET /decisions?format=csv, in a separate process,
  with its peak resident memory;
- the Merkle tree built over the chain and a checkpoint signed (the first, the costliest: every leaf);
- `GET /decisions/{id}/proof` for random decisions (median and slowest), and the offline check of one;
- `verify` of the whole chain (and the derived state, and the signed checkpoint), and its time.
A benchmark: it prints figures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
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
STEP = timedelta(seconds=30)  # 1,000,000 decisions over about a year
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
                decided_at = T0 + STEP * n
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
                if n and n % 200_000 == 0:
                    print(f"  loaded {n:,} rows ({time.perf_counter() - started:.0f}s)", flush=True)
        cur.execute("UPDATE portfolios SET audit_seq = %s, audit_head = %s, last_seq = %s WHERE id = 'default'",
                    (seq, head, last_seq))
        conn.commit()
        cur.execute("ANALYZE decisions")
    print(f"loaded {rows:,} decisions in {time.perf_counter() - started:.1f}s")


def query_day(url: str) -> None:
    app = create_app(Settings(database_url=url, instance_path=INSTANCE))
    key, _ = app.extensions["rpm_keys"].create("compliance", "bench", None, Actor("bench", "admin"))
    client = app.test_client()
    auth = {"Authorization": f"Bearer {key}"}
    day = T0 + timedelta(days=200)
    params = {"symbol": "GBPUSD", "from": day.isoformat(), "to": (day + timedelta(days=1)).isoformat(),
              "limit": 1000}
    timings = []
    count = 0
    for _ in range(7):
        started = time.perf_counter()
        r = client.get("/decisions", query_string=params, headers=auth)
        timings.append((time.perf_counter() - started) * 1000)
        count = r.json["count"]
    print(f"GET /decisions one day, one symbol: {count} decisions; median {statistics.median(timings):.1f} ms, "
          f"min {min(timings):.1f} ms (7 runs, through Flask and SQLAlchemy)")
    app.extensions["rpm"].db.dispose()
    return key


EXPORT = """
import resource, sys, time
from app import create_app
from app.settings import Settings
app = create_app(Settings(database_url=sys.argv[1], instance_path=sys.argv[3]))
client = app.test_client()
started = time.perf_counter()
size = lines = 0
with client.get("/decisions", query_string={"format": "csv", "portfolio_id": "*"},
                headers={"Authorization": "Bearer " + sys.argv[2]}, buffered=False) as r:
    for chunk in r.response:
        size += len(chunk)
        lines += chunk.count(b"\\n")
elapsed = time.perf_counter() - started
print(f"CSV export of every decision: {lines - 1:,} rows, {size / 1e6:,.0f} MB in {elapsed:.1f}s; "
      f"peak resident memory of the exporting process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
"""


def export_csv(url: str, key: str) -> None:
    subprocess.run([sys.executable, "-c", EXPORT, url, key, INSTANCE], check=True)


def proofs(url: str, rows: int, key: str) -> None:
    import random

    from app.anchor import check_proof

    app = create_app(Settings(database_url=url, instance_path=INSTANCE))
    started = time.perf_counter()
    made = app.extensions["rpm_anchor"].checkpoint(force=True, wait=True)
    size = max(c["statement"]["size"] for c in made if c["statement"]["chain"] == "default")
    print(f"Merkle tree of {size:,} records built and a checkpoint signed in {time.perf_counter() - started:.1f}s")
    client = app.test_client()
    auth = {"Authorization": f"Bearer {key}"}
    picks = random.Random(7).sample(range(rows), 50)
    timings = []
    for n in picks:
        started = time.perf_counter()
        r = client.get(f"/decisions/{uuid.UUID(int=n + 1)}/proof", headers=auth)
        timings.append((time.perf_counter() - started) * 1000)
        assert r.status_code == 200, r.json
    started = time.perf_counter()
    check_proof(r.json, app.extensions["rpm_anchor"].signer.public)
    checked = (time.perf_counter() - started) * 1000
    print(f"GET /decisions/{{id}}/proof at {size:,} records: median {statistics.median(timings):.1f} ms, slowest "
          f"{max(timings):.1f} ms (50 random decisions, through Flask; {len(r.json['inclusion_proof'])} hashes per "
          f"proof); checked offline in {checked:.1f} ms")
    app.extensions["rpm"].db.dispose()


def verify(url: str) -> None:
    app = create_app(Settings(database_url=url, instance_path=INSTANCE))
    started = time.perf_counter()
    report = app.extensions["rpm_compliance"].verify()
    elapsed = time.perf_counter() - started
    print(f"verify: ok={report['ok']}, {report['count']:,} records and {report['checkpoints']} signed "
          f"checkpoint(s) in {elapsed:.1f}s "
          f"({report['count'] / elapsed:,.0f} records/s)")
    app.extensions["rpm"].db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    name = "rpm_bench_audit"
    url, admin = fresh_database(args.admin_url, name)
    try:
        upgrade(url)
        load(url, args.rows)
        key = query_day(url)
        export_csv(url, key)
        proofs(url, args.rows, key)
        verify(url)
        with admin.connect() as conn:
            size = conn.execute(text(f"SELECT pg_size_pretty(pg_database_size('{name}'))")).scalar()
        print(f"database size: {size}")
    finally:
        drop_database(admin, name, keep=args.keep)
        shutil.rmtree(INSTANCE, ignore_errors=True)


if __name__ == "__main__":
    main()
