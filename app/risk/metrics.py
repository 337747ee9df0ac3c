"""Decision statistics: counts, approval rate, rejections by reason and category, sizes, latency."""

from __future__ import annotations

from collections import deque
from typing import Any

from .model import Decision


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


class RiskMetrics:
    """In-memory accumulator used by the in-process engine (the service computes the same from the database)."""

    def __init__(self, latency_window: int = 10_000):
        self.total = 0
        self.approved = 0
        self.rejected = 0
        self.by_reason: dict[str, int] = {}
        self.by_category: dict[str, int] = {}
        self.units_total = 0.0
        self.units_min: float | None = None
        self.units_max: float | None = None
        self.latencies_ms: deque[float] = deque(maxlen=latency_window)

    def record(self, decision: Decision, latency_ms: float | None = None) -> None:
        self.count(decision.approved, float(decision.units), decision.reason, decision.category, latency_ms)

    def count(self, approved: bool, units: float, reason: str | None, category: str | None,
              latency_ms: float | None = None) -> None:
        self.total += 1
        if approved:
            self.approved += 1
            self.units_total += units
            self.units_min = units if self.units_min is None else min(self.units_min, units)
            self.units_max = units if self.units_max is None else max(self.units_max, units)
        else:
            self.rejected += 1
            self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
            self.by_category[category] = self.by_category.get(category, 0) + 1
        if latency_ms is not None:
            self.latencies_ms.append(latency_ms)

    # -- persistence of the counters (the service keeps them on the portfolio row) ---
    def counters(self) -> dict[str, Any]:
        return {
            "total": self.total, "approved": self.approved, "rejected": self.rejected,
            "by_reason": self.by_reason, "by_category": self.by_category,
            "units_total": self.units_total, "units_min": self.units_min, "units_max": self.units_max,
        }

    @classmethod
    def from_counters(cls, data: dict[str, Any] | None, latencies_ms: list[float] = ()) -> RiskMetrics:
        metrics = cls()
        data = data or {}
        metrics.total = data.get("total", 0)
        metrics.approved = data.get("approved", 0)
        metrics.rejected = data.get("rejected", 0)
        metrics.by_reason = dict(data.get("by_reason", {}))
        metrics.by_category = dict(data.get("by_category", {}))
        metrics.units_total = data.get("units_total", 0.0)
        metrics.units_min = data.get("units_min")
        metrics.units_max = data.get("units_max")
        metrics.latencies_ms.extend(latencies_ms)
        return metrics

    def to_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "total_decisions": self.total,
            "trades_approved": self.approved,
            "trades_rejected": self.rejected,
            "approval_rate": self.approved / self.total if self.total else 0.0,
            "rejections_by_reason": dict(sorted(self.by_reason.items())),
            "rejections_by_category": dict(sorted(self.by_category.items())),
            "sizing": {
                "avg_approved_units": self.units_total / self.approved if self.approved else None,
                "min_approved_units": self.units_min,
                "max_approved_units": self.units_max,
                "total_approved_units": self.units_total,
            },
            "latency_ms": {
                "count": len(lat),
                "avg": sum(lat) / len(lat) if lat else None,
                "p50": percentile(lat, 0.50),
                "p99": percentile(lat, 0.99),
                "max": lat[-1] if lat else None,
            },
        }
