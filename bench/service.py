"""Durable decisions under load, side by side with the database's own floor.

    python -m bench.service [--seconds 20] [--clients 8] [--workers 4] [--threads 4] [--runs 3] [--rss]

On a throw-away PostgreSQL database: starts `rpm serve` (gunicorn, production settings), drives
POST /process_trade with wrk over loopback (a mix of opening, adding and closing intents on eight
symbols, each its own intent_id, every decision committed), then POST /process_trades with 100
intents per call; in the same run, pgbench runs the naive equivalent transaction (lock the
portfolio row, read its positions, insert a decision with a ~1 KB JSON breakdown, upsert a position,
update the portfolio) with the same number of clients. Prints decisions/s, p50/p99, approval mix,
CPU and RSS per worker, and RPM's throughput as a ratio of pgbench's. Medians of --runs. For each
run also the share of the CPU the hypervisor stole, and the CPU time per decision (per pgbench
transaction) of RPM's workers, of the PostgreSQL cluster (all of it: run on a quiet cluster) and of
the load generator, and the write-ahead log written per decision. A benchmark: it prints figures
and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
PGBENCH_SQL = """\\set sym random(1, 8)
BEGIN;
SELECT id, last_seq FROM bench_portfolio WHERE id = 1 FOR UPDATE;
SELECT symbol, units FROM bench_positions WHERE portfolio_id = 1;
INSERT INTO bench_decisions (portfolio_id, symbol, breakdown, decided_at) VALUES (1, :sym, '{breakdown}', now());
INSERT INTO bench_positions (portfolio_id, symbol, units) VALUES (1, :sym, 1000)
    ON CONFLICT (portfolio_id, symbol) DO UPDATE SET units = bench_positions.units + 1;
UPDATE bench_portfolio SET last_seq = last_seq + 1 WHERE id = 1;
COMMIT;
"""
# the run's configuration: the throttle and the loss limits raised, limits that let most intents through
BENCH_LIMITS = dict(max_intents_per_second=1_000_000, max_drawdown=1.0, max_daily_drawdown=1.0, daily_loss_limit=1.0,
                    weekly_loss_limit=1.0, confidence_collapse_threshold=0.0, max_symbol_exposure_pct=0.5,
                    max_currency_exposure_pct=1.0, max_gross_exposure_pct=5.0, max_net_exposure_pct=3.0)
# the eight symbols of bench/wrk_intents.lua and their prices
BENCH_MARKS = {"EURUSD": 1.1, "GBPUSD": 1.25, "AUDUSD": 0.65, "NZDUSD": 0.6, "USDJPY": 150.0, "USDCHF": 0.9,
               "USDCAD": 1.35, "EURGBP": 0.88}
BREAKDOWN = json.dumps({"sizing": {f"factor_{i}": i * 1.2345 for i in range(20)},
                        "constraints": [{"name": f"c{i}", "before": 1000.0, "after": 900.0, "result": "PASS"}
                                        for i in range(8)]})


def fresh_database(admin_url: str, name: str) -> tuple[str, Engine]:
    """A new, empty database ``name`` on the cluster of ``admin_url`` (dropped first if it is there):
    its URL, and an AUTOCOMMIT engine on the cluster (for ``drop_database`` and cluster-wide figures)."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), admin


def drop_database(admin: Engine, name: str, *, keep: bool = False) -> None:
    if not keep:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / name).exists():
            return str(folder / name)
    raise SystemExit(f"{name} not found")


def http(method: str, url: str, key: str, body=None):
    request = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def worker_pids(master: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def proc_stat(stat: Path) -> tuple[str, list[str]]:
    """A process's name and the fields of its /proc/<pid>/stat after the name (utime is [11])."""
    text = stat.read_text()
    name, fields = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 1:].split()
    return name, fields


def cpu_seconds(pid: int) -> float:
    _, fields = proc_stat(Path(f"/proc/{pid}/stat"))
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int, int]:
    """(busy, stolen, total) jiffies of all cores since boot. Stolen: time the hypervisor ran something
    else while this VM had work (on a shared machine, what makes the same run vary)."""
    user, nice, system, idle, iowait, irq, softirq, steal = (
        int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9])
    # (guest time is already counted in user and nice)
    return user + nice + system + irq + softirq, steal, user + nice + system + idle + iowait + irq + softirq + steal


def postgres_cpu_seconds() -> float:
    """CPU time of the PostgreSQL cluster: its live processes, and the backends that have exited
    (the postmaster's reaped children: pgbench's connections end with it)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, fields = proc_stat(stat)
        except OSError:  # gone meanwhile
            continue
        if name != "postgres":
            continue
        ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the load generators, once they have ended
    return usage.ru_utime + usage.ru_stime


def wal_bytes(engine) -> int:
    """Where the cluster's write-ahead log is now, in bytes since its start."""
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")).scalar())


def busy_while(fn, *args, workers=(), wal=None, **kwargs):
    """fn's result, with the shares of the machine's CPU that were busy and stolen meanwhile, the
    CPU seconds spent by RPM's workers, by PostgreSQL and by the load generator, and the bytes of
    write-ahead log written (``wal``: the engine to ask)."""
    w0 = wal_bytes(wal) if wal is not None else 0
    b0, s0, t0 = machine_ticks()
    c0 = ({p: cpu_seconds(p) for p in workers}, postgres_cpu_seconds(), children_cpu_seconds())
    result = fn(*args, **kwargs)
    c1 = ({p: cpu_seconds(p) for p in workers}, postgres_cpu_seconds(), children_cpu_seconds())
    b1, s1, t1 = machine_ticks()
    w1 = wal_bytes(wal) if wal is not None else 0
    result = dict(result) if isinstance(result, dict) else {"value": result}
    result["busy"] = (b1 - b0) / max(1, t1 - t0)
    result["stolen"] = (s1 - s0) / max(1, t1 - t0)
    result["cpu_rpm"] = sum(c1[0][p] - c0[0][p] for p in workers)
    result["cpu_pg"] = c1[1] - c0[1]
    result["cpu_load"] = c1[2] - c0[2]
    result["wal"] = w1 - w0
    return result


def per_unit(measured: dict, units: float) -> str:
    """CPU time per decision (or per pgbench transaction), by whom: steadier than throughput on a
    machine whose CPU is shared (what is stolen is not counted)."""
    parts = [("RPM", measured["cpu_rpm"])] if measured["cpu_rpm"] else []  # (not measured beside pgbench)
    parts += [("PostgreSQL", measured["cpu_pg"]), ("load", measured["cpu_load"])]
    spent = ", ".join(f"{name} {seconds / max(1, units) * 1e6:,.0f}" for name, seconds in parts)
    return f"{spent} us, WAL {measured['wal'] / max(1, units) / 1024:.1f} KB"


def cpu(measured: dict) -> str:
    return f"CPU {measured['busy']:.0%} busy, {measured['stolen']:.0%} stolen"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wrk(url: str, key: str, tag: str, seconds: float, clients: int, batch: int = 0) -> dict:
    out = subprocess.run(["wrk", "-t", str(min(clients, 2)), "-c", str(clients), "-d", f"{max(1, int(seconds))}s",
                          "--timeout", "10s", "-s", str(ROOT / "bench" / "wrk_intents.lua"), url, "--",
                          key, tag, str(batch)], capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def pgbench(url: str, seconds: float, clients: int) -> float:
    u = make_url(url)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(PGBENCH_SQL.replace("{breakdown}", BREAKDOWN))
        script = f.name
    out = subprocess.run([pg_bin("pgbench"), "-n", "-c", str(clients), "-j", "2", "-T", str(int(seconds)),
                          "-f", script, "-h", u.host or "127.0.0.1", "-p", str(u.port or 5432),
                          "-U", u.username or "postgres", u.database], capture_output=True, text=True, check=True)
    os.unlink(script)
    tps = next(line for line in out.stdout.splitlines() if line.startswith("tps"))
    return float(tps.split("=")[1].split()[0])


def vacuum(url: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("VACUUM ANALYZE"))
    engine.dispose()


def prepare_pgbench(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE bench_portfolio (id int PRIMARY KEY, last_seq bigint NOT NULL)"))
        conn.execute(text("INSERT INTO bench_portfolio VALUES (1, 0)"))
        conn.execute(text("CREATE TABLE bench_positions (portfolio_id int, symbol text, units numeric, "
                          "PRIMARY KEY (portfolio_id, symbol))"))
        conn.execute(text("CREATE TABLE bench_decisions (id bigserial PRIMARY KEY, portfolio_id int, symbol text, "
                          "breakdown jsonb, decided_at timestamptz)"))
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=8)
    # default: what `rpm serve` would start (the production configuration)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--group-commit", choices=["on", "off"], default="on")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rss", action="store_true", help="also: RSS per worker over 100,000 decisions")
    parser.add_argument("--vacuum", action="store_true",
                        help="VACUUM ANALYZE before each run (what autovacuum would do; it is off on some machines)")
    parser.add_argument("--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install -y wrk")

    name = "rpm_bench_service"
    url, admin = fresh_database(args.admin_url, name)
    admin_key = "rpm_0bec0adb_" + "b" * 43
    port = 8095
    env = {**os.environ, "DATABASE_URL": url, "RPM_PORT": str(port), "RPM_HOST": "127.0.0.1",
           "RPM_BOOTSTRAP_ADMIN_KEY": admin_key,
           "RPM_GROUP_COMMIT": "1" if args.group_commit == "on" else "0"}
    for variable, value in (("RPM_WORKERS", args.workers), ("RPM_THREADS", args.threads)):
        if value is not None:
            env[variable] = str(value)
    from app.settings import Settings

    defaults = Settings.from_env()
    n_workers, n_threads = args.workers or defaults.workers, args.threads or defaults.threads
    try:
        with serving(env, port, admin_key, url) as (server, base, trader):
            wrk(base + "/process_trade", trader, "warm", 3, args.clients)
            workers = worker_pids(server.pid)
            singles, batches, floor_cpu = [], [], []
            cpu_before = {p: cpu_seconds(p) for p in workers}
            for run in range(args.runs):
                if args.vacuum:
                    vacuum(url)
                floor = busy_while(pgbench, url, args.seconds, args.clients, wal=admin)
                floor_cpu.append(floor)
                singles.append(busy_while(wrk, base + "/process_trade", trader, f"s{run}", args.seconds, args.clients,
                                          workers=workers, wal=admin))
                batches.append(busy_while(wrk, base + "/process_trades", trader, f"b{run}", args.seconds / 2, 2,
                                          batch=100, workers=workers, wal=admin))
            cpu_after = {p: cpu_seconds(p) for p in workers}
            floors = [f["value"] for f in floor_cpu]
            rates = [(r["requests"] - r["errors"] - r["socket_errors"]) / r["seconds"] for r in singles]
            ratios = [rate / floor for rate, floor in zip(rates, floors, strict=True)]
            # a failed call decided nothing: only answered calls count (an error is printed, never hidden)
            batch_rates = [100 * (r["requests"] - r["errors"] - r["socket_errors"]) / r["seconds"] for r in batches]
            approved = sum(r["approved"] for r in singles)
            rejected = sum(r["rejected"] for r in singles)
            print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                  f"gunicorn gthread {n_workers} workers x {n_threads} threads, group commit {args.group_commit}, "
                  f"{args.clients} clients (wrk)")
            for run, (r, floor, batch) in enumerate(zip(singles, floors, batches, strict=True)):
                print(f"  run {run + 1}: pgbench naive txn {floor:,.0f} tps ({cpu(floor_cpu[run])}) | "
                      f"RPM /process_trade ({cpu(r)}) "
                      f"{rates[run]:,.0f} decisions/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                      f"errors {r['errors'] + r['socket_errors']} | /process_trades x100 "
                      f"{batch_rates[run]:,.0f} decisions/s, p50 {batch['p50_ms']:.1f} ms, "
                      f"errors {batch['errors'] + batch['socket_errors']} ({cpu(batch)})")
                print(f"    CPU per pgbench transaction: {per_unit(floor_cpu[run], floor * args.seconds)}; "
                      f"per decision, /process_trade: {per_unit(r, rates[run] * r['seconds'])}; "
                      f"/process_trades x100: {per_unit(batch, batch_rates[run] * batch['seconds'])}")
            print(f"median: pgbench {statistics.median(floors):,.0f} tps; RPM {statistics.median(rates):,.0f} decisions/s "
                  f"= {statistics.median(ratios):.2f} x pgbench; p50 {statistics.median(r['p50_ms'] for r in singles):.1f} ms, "
                  f"p99 {statistics.median(r['p99_ms'] for r in singles):.1f} ms; "
                  f"/process_trades x100: {statistics.median(batch_rates):,.0f} decisions/s")
            print(f"approval mix (single intents): {approved:,} approved, {rejected:,} rejected "
                  f"({approved / max(1, approved + rejected):.0%} approved)")
            elapsed = args.runs * args.seconds * 1.5
            for p in workers:
                print(f"  worker {p}: CPU {(cpu_after[p] - cpu_before[p]) / elapsed:.0%} of a core over the runs, "
                      f"RSS {rss_mb(p):.0f} MB")
            if args.rss:
                print("RSS per worker over 100,000 decisions (POST /process_trades x100):")
                done = 0
                while done < 100_000:
                    r = wrk(base + "/process_trades", trader, f"rss{done}", 5, 2, batch=100)
                    done += 100 * r["requests"]
                    print(f"  after {done:,} decisions: " + ", ".join(f"{rss_mb(p):.0f} MB" for p in workers))
    finally:
        drop_database(admin, name)


@contextmanager
def serving(env: dict[str, str], port: int, admin_key: str, url: str) -> Iterator[tuple[subprocess.Popen, str, str]]:
    """`rpm serve` with ``env``, ready and configured as the benchmarks run it (limits raised, the eight
    symbols marked), and pgbench's tables made beside it: the server, its base URL and a trader key.
    Stopped at the end."""
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/health/ready", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        trader = subprocess.run([sys.executable, "-m", "app.cli", "keys", "create", "--role", "trader", "--name",
                                 "bench"], cwd=ROOT, env=env, capture_output=True, text=True,
                                check=True).stdout.strip()
        time.sleep(1.1)  # every worker's copy of the keys holds it
        config = http("GET", base + "/config", admin_key)["config"]
        config.update(BENCH_LIMITS)
        http("PUT", base + "/config", admin_key, {"config": config, "reason": "benchmark"})
        http("POST", base + "/marks", trader, {"prices": BENCH_MARKS})
        prepare_pgbench(url)
        yield server, base, trader
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)


if __name__ == "__main__":
    main()
