"""Pure-engine throughput: decisions per second with 8 open positions and a full mark history.

    python -m bench.engine [--seconds 5]

A benchmark, not a test: it prints figures and asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from datetime import UTC, datetime, timedelta

from app.risk import PortfolioState, RPMConfig, TradeIntent, decide, engine

SYMBOLS = {"EURUSD": 1.10, "GBPUSD": 1.25, "USDJPY": 150.0, "AUDUSD": 0.65, "USDCHF": 0.90, "NZDUSD": 0.60,
           "USDCAD": 1.35, "EURGBP": 0.88}
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def setup(config: RPMConfig) -> PortfolioState:
    state = PortfolioState.new(config)
    # a realistic mark history: mark_history_size ticks of a random-looking walk per symbol
    for i in range(config.mark_history_size):
        prices = {s: p * (1 + 0.001 * math.sin(i * (k + 1) * 0.7)) for k, (s, p) in enumerate(SYMBOLS.items())}
        state = engine.mark(state, prices, config, T0 + timedelta(seconds=i)).state
    state = engine.mark(state, SYMBOLS, config, T0 + timedelta(seconds=200)).state
    for k, (symbol, price) in enumerate(SYMBOLS.items()):
        intent = TradeIntent.create(config, symbol=symbol, direction=(-1) ** k, confidence_score=0.65,
                                    regime="RANGING", atr=price * 0.05, vol_percentile=0.5, current_price=price)
        out = decide(state, intent, config, T0 + timedelta(seconds=300 + k), f"setup-{k}")
        assert out.decision.approved, out.decision.message
        state = out.state
    assert len(state.positions) == 8
    return state


def workload() -> tuple[RPMConfig, PortfolioState, list[TradeIntent]]:
    """The benchmark's configuration, its state (``setup``) and the intents decided on it over and over."""
    config = RPMConfig(max_intents_per_second=1_000_000, max_concurrent_positions=8)
    intents = []
    for k, (symbol, price) in enumerate(SYMBOLS.items()):
        for conf, regime in ((0.7, "TRENDING"), (0.9, "VOLATILE"), (0.55, "RANGING")):
            intents.append(TradeIntent.create(
                config, symbol=symbol, direction=(-1) ** k, confidence_score=conf, regime=regime,
                atr=price * 0.002 * (1 + k % 3), vol_percentile=0.5 + 0.05 * k, current_price=price))
    return config, setup(config), intents


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    config, state, intents = workload()
    n = 0
    approved = 0
    best_cpu = float("inf")  # CPU time of the fastest pass: what the code costs when the machine lets it run
    start = time.perf_counter()
    deadline = start + args.seconds
    now = T0 + timedelta(seconds=1000)
    while time.perf_counter() < deadline:
        cpu = time.process_time()
        for intent in intents:
            now += timedelta(milliseconds=1)
            out = decide(state, intent, config, now, "bench")
            approved += out.decision.approved
            n += 1
        best_cpu = min(best_cpu, (time.process_time() - cpu) / len(intents))
    elapsed = time.perf_counter() - start
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"pure engine: {n} decisions in {elapsed:.2f}s = {n / elapsed:,.0f} decisions/s "
          f"({elapsed / n * 1e6:.1f} us each; 8 open positions, {config.mark_history_size} marks per symbol; "
          f"{approved / n:.0%} approved)")
    print(f"fastest pass, CPU time: {best_cpu * 1e6:.1f} us per decision = {1 / best_cpu:,.0f} decisions/s "
          f"(wall time above includes the time a shared machine gives to others)")


if __name__ == "__main__":
    main()
