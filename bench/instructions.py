"""Instructions per decision, counted by valgrind: the figure that compares two versions of the code
on a machine whose clocks cannot (here the same `make bench` varies by ±20% from run to run, and the
same function timed twice a minute apart by 30%).

    python -m bench.instructions [--batches 5] [--singles 100]

Counts the instructions that RPM's own process executes per decision (`valgrind --tool=callgrind`,
counting switched on only around the measured calls, after warm-up calls):

- the pure engine, on `bench.engine`'s state (8 open positions, full mark histories);
- `Trading.process_trades` with 100 intents, in-process, on a throw-away PostgreSQL database:
  validation, the portfolio locked and read, each intent decided, sealed on the audit chain and its
  rows sent, the commit, the answers built — everything `POST /process_trades` does but HTTP;
- `Trading.process_trade`, one intent per transaction (nothing else is queued in-process).

The intents are those of `make bench` (bench/wrk_intents.lua: opening, adding and closing on eight
symbols) from a fixed seed, on a portfolio already holding its positions and full ATR histories.
What PostgreSQL and the kernel do is not counted (`bench.service` prints their CPU time), and
valgrind's CPU hides some instruction sets from libraries (OpenSSL's SHA extensions), so the counts
are for comparing versions, not a clock. A benchmark: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta

from .service import BENCH_LIMITS, BENCH_MARKS, drop_database, fresh_database

DATABASE = "rpm_bench_instructions"
REGIMES = ("TRENDING", "RANGING", "VOLATILE")


def intents(seed: int, tag: str):
    """The intents of bench/wrk_intents.lua, from a seed: each with its own intent_id."""
    rnd = random.Random(seed)
    symbols = list(BENCH_MARKS)
    n = 0
    while True:
        n += 1
        symbol = rnd.choice(symbols)
        price = BENCH_MARKS[symbol]
        yield {"symbol": symbol, "direction": 1 if rnd.random() < 0.65 else -1,
               "confidence_score": round(0.6 + rnd.random() * 0.35, 3), "regime": rnd.choice(REGIMES),
               "atr": round(price * (0.004 + rnd.random() * 0.01), 6), "vol_percentile": round(rnd.random() * 0.9, 2),
               "current_price": price, "intent_id": f"{tag}-{n}"}


def service(url: str):
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("RPM_LOG_LEVEL", "WARNING")
    from app.factory import create_app
    from app.services import Actor
    from app.settings import Settings

    return create_app(Settings.from_env()).extensions["rpm"], Actor("bench", "trader", "bench", "bench")


def prepare(url: str) -> None:
    """A portfolio configured as `make bench` configures it, holding its positions and ATR histories."""
    from app.store.migrate import upgrade

    upgrade(url)
    svc, actor = service(url)
    from app.services import books, operator, reading

    svc.uow.ensure_default()
    config = reading.get_config(svc.uow, "default")["config"]
    config.update(BENCH_LIMITS)
    operator.put_config(svc.uow, "default", config, "benchmark", actor)
    books.apply_marks(svc.uow, "default", BENCH_MARKS, actor)
    source = intents(1, f"prepare-{time.time_ns()}")
    for _ in range(12):
        svc.trading.process_trades([next(source) for _ in range(100)], actor)
    svc.db.dispose()


def on(flag: str) -> None:
    """Switch callgrind's counting on or off in this process (it waits until valgrind has done it)."""
    subprocess.run(["callgrind_control", "-i", flag, str(os.getpid())], check=True, capture_output=True)


def phase(name: str, url: str, count: int) -> None:
    """Run under valgrind: warm up, then count ``count`` decisions' worth of calls."""
    if name == "engine":
        from app.risk import decide
        from bench.engine import T0, workload

        config, state, batch = workload()
        now = T0 + timedelta(seconds=1000)

        def run() -> None:
            nonlocal now
            for intent in batch:
                now += timedelta(milliseconds=1)
                decide(state, intent, config, now, "bench")

        per_call = len(batch)
    else:
        svc, actor = service(url)
        source = intents(7, f"{name}-{time.time_ns()}")
        if name == "batch":
            def run() -> None:
                svc.trading.process_trades([next(source) for _ in range(100)], actor)

            per_call = 100
        else:
            def run() -> None:
                svc.trading.process_trade(next(source), actor)

            per_call = 1
    for _ in range(max(3, 300 // per_call)):
        run()
    calls = max(1, count // per_call)
    on("on")
    for _ in range(calls):
        run()
    on("off")
    print(f"DECISIONS {calls * per_call}")


def counted(name: str, url: str, count: int) -> tuple[int, int]:
    """(instructions, decisions) of one phase, run in a child process under callgrind."""
    with tempfile.TemporaryDirectory() as folder:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={folder}/callgrind.out",
             sys.executable, "-m", "bench.instructions", "--phase", name, "--url", url, "--count", str(count)],
            capture_output=True, text=True, check=True)
    instructions = int(re.search(r"Collected : (\d+)", out.stderr).group(1))
    decisions = int(re.search(r"^DECISIONS (\d+)$", out.stdout, re.M).group(1))
    return instructions, decisions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=5, help="batches of 100 counted")
    parser.add_argument("--singles", type=int, default=100, help="single intents counted")
    parser.add_argument("--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phase(args.phase, args.url, args.count)
        return
    for tool in ("valgrind", "callgrind_control"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: apt-get install -y valgrind")
    url, admin = fresh_database(args.admin_url, DATABASE)
    try:
        prepare(url)
        print("instructions per decision in RPM's process (valgrind --tool=callgrind; the database server's "
              "and the kernel's work not counted):")
        for name, label, count in (
                ("engine", "pure engine (bench.engine's state)", 240),
                ("batch", "process_trades, 100 intents a call, in-process", 100 * args.batches),
                ("single", "process_trade, one intent per transaction, in-process", args.singles)):
            instructions, decisions = counted(name, url, count)
            print(f"  {label}: {instructions / decisions:,.0f} ({decisions} decisions)", flush=True)
    finally:
        drop_database(admin, DATABASE)


if __name__ == "__main__":
    main()
