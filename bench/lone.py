"""Lone requests: the latency a gate adds to every trade when it is not busy, beside the database's own.

    python -m bench.lone [--seconds 20] [--rate 80] [--admin-url URL]

On a throw-away PostgreSQL database: starts `rpm serve` (production settings) and sends, from one
keep-alive client at a fixed rate (80 a second by default: nothing queues), in turn for each endpoint:
POST /process_trade (the intents of `make bench`: opening, adding and closing on eight symbols, each
its own intent_id), POST /what_if, GET /portfolio and GET /health/live; in the same run, pgbench runs
the naive decision transaction of `make bench` (lock the portfolio row, read its positions, insert a
decision with ~1 KB of JSON, upsert a position, update the portfolio) from one client at the same rate.
Prints p50, p99 and the mean of each, and each p50 and p99 as a multiple of pgbench's mean latency.
The client is Python's http.client (its own time, ~0.1 ms, is in the figures). A benchmark: it prints
figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import http.client as httpclient
import itertools
import json
import os
import random
import re
import statistics
import subprocess
import tempfile
import time

from sqlalchemy.engine import make_url

from .service import (
    BENCH_MARKS,
    BREAKDOWN,
    PGBENCH_SQL,
    drop_database,
    fresh_database,
    pg_bin,
    serving,
)

REGIMES = ("TRENDING", "RANGING", "VOLATILE")


def intents(tag: str):
    """The intents of bench/wrk_intents.lua, from a fixed seed, each with its own intent_id."""
    rnd = random.Random(7)
    for n in itertools.count(1):
        symbol = rnd.choice(list(BENCH_MARKS))
        price = BENCH_MARKS[symbol]
        yield {"symbol": symbol, "direction": 1 if rnd.random() < 0.65 else -1,
               "confidence_score": round(0.6 + rnd.random() * 0.35, 3), "regime": rnd.choice(REGIMES),
               "atr": round(price * (0.004 + rnd.random() * 0.01), 6), "vol_percentile": round(rnd.random() * 0.9, 2),
               "current_price": price, "intent_id": f"{tag}-{n}"}


def paced(port: int, key: str, requests, seconds: float, rate: float) -> list[float]:
    """Latencies (ms) of ``requests`` (method, path, body) sent one at a time on one keep-alive connection,
    one every 1/rate s."""
    conn = httpclient.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies = []
    start = time.perf_counter()
    for n, (method, path, body) in enumerate(requests):
        due = start + n / rate
        if due - start > seconds:
            break
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        payload = None if body is None else json.dumps(body)
        sent = time.perf_counter()
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        response.read()
        latencies.append((time.perf_counter() - sent) * 1000)
        if response.status != 200:
            raise SystemExit(f"{method} {path}: {response.status}")
    conn.close()
    return latencies


def pgbench_latency(url: str, seconds: float, rate: float) -> float:
    """pgbench's mean latency (ms) of the naive decision transaction, one client, ``rate`` a second."""
    u = make_url(url)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(PGBENCH_SQL.replace("{breakdown}", BREAKDOWN))
        script = f.name
    out = subprocess.run([pg_bin("pgbench"), "-n", "-c", "1", "-R", str(rate), "-T", str(int(seconds)), "-f", script,
                          "-h", u.host or "127.0.0.1", "-p", str(u.port or 5432), "-U", u.username or "postgres",
                          u.database], capture_output=True, text=True, check=True).stdout
    os.unlink(script)
    return float(re.search(r"latency average = ([0-9.]+) ms", out).group(1))


def summary(latencies: list[float], floor: float) -> str:
    ordered = sorted(latencies)
    p50, p99 = ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"p50 {p50:.2f} ms ({p50 / floor:.1f} x), p99 {p99:.2f} ms ({p99 / floor:.1f} x), "
            f"mean {statistics.fmean(latencies):.2f} ms, {len(latencies)} requests")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=float, default=80)
    parser.add_argument("--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    name = "rpm_bench_lone"
    url, admin = fresh_database(args.admin_url, name)
    admin_key = "rpm_0bec0adb_" + "b" * 43
    port = 8096
    env = {**os.environ, "DATABASE_URL": url, "RPM_PORT": str(port), "RPM_HOST": "127.0.0.1",
           "RPM_BOOTSTRAP_ADMIN_KEY": admin_key, "RPM_LOG_LEVEL": os.environ.get("RPM_LOG_LEVEL", "INFO")}
    try:
        with serving(env, port, admin_key, url) as (_server, _base, trader):
            paced(port, trader, (("POST", "/process_trade", i) for i in intents("warm")), 3, args.rate)
            floor = pgbench_latency(url, args.seconds, args.rate)
            what_if = {k: v for k, v in next(intents("w")).items() if k != "intent_id"}
            runs = {
                "POST /process_trade": (("POST", "/process_trade", i) for i in intents("lone")),
                "POST /what_if": itertools.repeat(("POST", "/what_if", what_if)),
                "GET /portfolio": itertools.repeat(("GET", "/portfolio", None)),
                "GET /health/live": itertools.repeat(("GET", "/health/live", None)),
            }
            print(f"one keep-alive client at {args.rate:g} requests/s, {args.seconds:g} s each; rpm serve with its "
                  f"production settings")
            print(f"  pgbench, the naive decision transaction, 1 client at {args.rate:g}/s: mean {floor:.2f} ms")
            for label, requests in runs.items():
                print(f"  {label:20} {summary(paced(port, trader, requests, args.seconds, args.rate), floor)}")
    finally:
        drop_database(admin, name)


if __name__ == "__main__":
    main()
