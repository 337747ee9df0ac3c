"""What the levels above a portfolio cost a decision: the same decisions, in-process on PostgreSQL, for a
portfolio directly under a firm without limits, and for one in a group with limits whose other members hold
positions (and, third, with the firm's limits too), in the same run, alternated.

    python -m bench.firm [--decisions 300] [--rounds 5] [--members 4]

On a throw-away database: portfolios `alone` (under the firm), `desk-0` .. `desk-N` in group `fx`, each holding
the positions of `make bench`'s intents. Each round decides ``--decisions`` single intents (`Trading.process_trade`,
one transaction each: the lock, the state read, the decision, the commit) and batches of 100
(`Trading.process_trades`) for each case in turn; prints the median time per decision of each and the cost of
the levels against the portfolio alone. A group's decision reads its other members' books after the group's
lock: one more round trip, and their positions valued. A benchmark: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from .instructions import intents, service
from .service import BENCH_LIMITS, BENCH_MARKS, drop_database, fresh_database

DATABASE = "rpm_bench_firm"


def prepare(url: str, members: int) -> None:
    from app.services import books, firm, operator, portfolios, reading
    from app.store.migrate import upgrade

    upgrade(url)
    svc, actor = service(url)
    admin = type(actor)("bench", "admin", "bench", "bench")
    svc.uow.ensure_default()
    config = reading.get_config(svc.uow, "default")["config"]
    config.update(BENCH_LIMITS)
    firm.create_group(svc.uow, "fx", {"gross_exposure": 1e9, "net_exposure": 1e9, "currency_exposure": 1e9,
                                      "symbol_exposure": 1e9, "positions": 1000, "drawdown": 0.99,
                                      "daily_loss": 1e9}, "bench", admin)
    ids = ["alone", *(f"desk-{i}" for i in range(members))]
    for pid in ids:
        portfolios.create_portfolio(svc.uow, pid, None, None, config, admin)
        books.apply_marks(svc.uow, pid, BENCH_MARKS, actor)
        if pid != "alone":
            firm.assign(svc.uow, pid, "fx", "bench", admin)
        source = intents(hash(pid) % 1000, f"prepare-{pid}-{time.time_ns()}")
        for _ in range(3):
            svc.trading.process_trades([{**next(source), "portfolio_id": pid} for _ in range(100)], actor)
    del operator
    svc.db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--decisions", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--admin-url", default=os.environ.get("RPM_BENCH_ADMIN_URL",
                                                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    url, admin = fresh_database(args.admin_url, DATABASE)
    try:
        prepare(url, args.members)
        svc, actor = service(url)
        from app.services import firm

        admin_actor = type(actor)("bench", "admin", "bench", "bench")
        cases = {"under the firm, no limits": "alone", "in a group with limits": "desk-0",
                 "group and firm with limits": "desk-0"}
        singles: dict[str, list[float]] = {c: [] for c in cases}
        batches: dict[str, list[float]] = {c: [] for c in cases}
        for r in range(args.rounds):
            for case, pid in cases.items():
                firm_limits = {"gross_exposure": 1e9} if case.startswith("group and firm") else {}
                firm.set_limits(svc.uow, "firm", firm_limits, "bench", admin_actor)
                source = intents(11 + r, f"{pid}-{r}-{time.time_ns()}")
                for _ in range(20):  # warm
                    svc.trading.process_trade({**next(source), "portfolio_id": pid}, actor)
                started = time.perf_counter()
                for _ in range(args.decisions):
                    svc.trading.process_trade({**next(source), "portfolio_id": pid}, actor)
                singles[case].append((time.perf_counter() - started) / args.decisions * 1e6)
                started = time.perf_counter()
                for _ in range(3):
                    svc.trading.process_trades([{**next(source), "portfolio_id": pid} for _ in range(100)], actor)
                batches[case].append((time.perf_counter() - started) / 300 * 1e6)
        base_s, base_b = statistics.median(singles[next(iter(cases))]), statistics.median(batches[next(iter(cases))])
        print(f"levels above a portfolio: {args.rounds} rounds, {args.decisions} single decisions and 300 in batches "
              f"of 100 per case and round, alternated; {args.members} desks in the group, each with its positions")
        print(f"{'':30} {'single (us/decision)':>22} {'vs alone':>9} {'batch of 100 (us/decision)':>28} {'vs alone':>9}")
        for case in cases:
            s, b = statistics.median(singles[case]), statistics.median(batches[case])
            print(f"{case:30} {s:>22,.0f} {s / base_s:>8.2f}x {b:>28,.0f} {b / base_b:>8.2f}x")
        svc.db.dispose()
    finally:
        drop_database(admin, DATABASE)


if __name__ == "__main__":
    main()
