"""Operations: Prometheus metrics (correct under several gunicorn workers), JSON logs, request ids.

Counters and the latency histogram live in prometheus-client's multiprocess mode when
PROMETHEUS_MULTIPROC_DIR is set (`rpm serve` sets it); trading state, equity and drawdown are
read from the database at scrape time, so every worker answers the same.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Any

from flask import Flask, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from app.logformat import JsonFormatter
from app.risk.domain import REQUEST_ID

DECISIONS = Counter("rpm_decisions_total", "Decisions made, by portfolio, status and reason code",
                    ["portfolio", "status", "reason"])
LATENCY = Histogram("rpm_decision_latency_seconds", "Time to decide and commit one intent",
                    ["portfolio"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
PER_TRANSACTION = Histogram("rpm_decisions_per_transaction",
                            "Decisions committed together (group commit of concurrent intents, or a batch)",
                            buckets=(1, 2, 3, 4, 6, 8, 16, 32, 64, 128, 256, 1000))

EVENTS = Counter("rpm_risk_events_total", "Risk events committed, by type and portfolio (`_system`: groups, the firm)",
                 ["type", "portfolio"])
WEBHOOK_FAILURES = Counter("rpm_webhook_failures_total", "Webhook delivery attempts that failed, by webhook",
                           ["webhook"])
WEBHOOK_DELIVERED = Counter("rpm_webhook_deliveries_total", "Webhook deliveries acknowledged (2xx), by webhook",
                            ["webhook"])


def count_events(events: list[dict[str, Any]]) -> None:
    for e in events:
        EVENTS.labels(e["type"], e.get("portfolio_id") or "_system").inc()


def record_decisions(decisions: list[dict[str, Any]], seconds: float) -> None:
    """After the commit: count what was decided (replays are not new decisions)."""
    for d in decisions:
        if d.get("replay"):
            continue
        DECISIONS.labels(d["portfolio_id"], d["status"], d["reason"] or "").inc()
        LATENCY.labels(d["portfolio_id"]).observe(seconds)


class PortfolioCollector:
    """Gauges read from the database at scrape time: the same answer from every worker. The webhooks' only in a
    scrape of every portfolio (``portfolios`` None: a key of all of them)."""

    def __init__(self, uow: Any, portfolios: tuple[str, ...] | None):
        self.uow = uow
        self.portfolios = portfolios

    def collect(self):
        state = GaugeMetricFamily("rpm_trading_halted", "1 when the portfolio is halted (reduce-only)",
                                  labels=["portfolio"])
        equity = GaugeMetricFamily("rpm_equity", "Equity in the account currency", labels=["portfolio"])
        drawdown = GaugeMetricFamily("rpm_drawdown_ratio", "1 - equity / peak equity", labels=["portfolio"])
        tripped = GaugeMetricFamily("rpm_switch_tripped", "1 when the portfolio's kill switch is tripped, else 0",
                                    labels=["portfolio", "switch"])
        from app.risk import engine
        from app.services import portfolios

        now = self.uow.clock()
        for p in portfolios.list_portfolios(self.uow, self.portfolios):
            pid = p["portfolio_id"]
            # as GET /health reads it (app/services/reading.py): as committed, ticked to now (expired cooldowns
            # cleared), without its decision latencies
            with self.uow.portfolio(pid, lock=False) as opened:
                health = engine.health(engine.tick(opened.state, opened.config, now).state, opened.config, now)
            summary = health["portfolio_state"]
            state.add_metric([pid], 1.0 if health["trading_state"] == "HALTED" else 0.0)
            equity.add_metric([pid], summary["equity"])
            drawdown.add_metric([pid], summary["drawdown"])
            for switch, status in health["kill_switches"].items():
                tripped.add_metric([pid, switch], 1.0 if status["state"] == "TRIPPED" else 0.0)
        yield from (state, equity, drawdown, tripped)
        if self.portfolios is None:
            yield self._levels()
            yield from self._webhooks(now)

    def _levels(self) -> GaugeMetricFamily:
        """The switches tripped of each group and the firm (the keys of every portfolio see them)."""
        from sqlalchemy import select

        from app.store import models as m

        tripped = GaugeMetricFamily("rpm_level_switch_tripped", "1 for each switch tripped of a group or the firm",
                                    labels=["level", "switch"])
        with self.uow.reading() as session:
            for level, switches in session.execute(select(m.Group.id, m.Group.switches).order_by(m.Group.id)):
                for switch in sorted(switches or {}):
                    tripped.add_metric([level, switch], 1.0)
        return tripped

    def _webhooks(self, now: Any):
        """Each active webhook's deliveries pending and failed, and how long the oldest pending one's event has
        waited (one query)."""
        from sqlalchemy import and_, func, select

        from app.store import models as m

        lag = GaugeMetricFamily("rpm_webhook_lag_seconds",
                                "Age of the oldest event not yet delivered (pending, or not yet queued; 0: none)",
                                labels=["webhook"])
        pending = GaugeMetricFamily("rpm_webhook_pending", "Deliveries pending (to send, or to retry)",
                                    labels=["webhook"])
        failed = GaugeMetricFamily("rpm_webhook_failed", "Deliveries failed (attempts spent; retried on request)",
                                   labels=["webhook"])
        d, is_pending = m.WebhookDelivery, m.WebhookDelivery.status == "pending"
        # (an event not queued yet counts too: when no process delivers, nothing is queued, and the lag grows)
        unqueued = (select(m.RiskEvent.at).where(m.RiskEvent.id > m.Webhook.queued_to).order_by(m.RiskEvent.id)
                    .limit(1).correlate(m.Webhook).scalar_subquery())
        query = (select(m.Webhook.id, func.count().filter(is_pending), func.count().filter(d.status == "failed"),
                        func.least(func.min(m.RiskEvent.at).filter(is_pending), func.min(unqueued)))
                 .select_from(m.Webhook)
                 .outerjoin(d, and_(d.webhook_id == m.Webhook.id, d.status.in_(("pending", "failed"))))
                 .outerjoin(m.RiskEvent, m.RiskEvent.id == d.event_id)
                 .where(m.Webhook.disabled_at.is_(None))
                 .group_by(m.Webhook.id).order_by(m.Webhook.id))
        with self.uow.reading() as session:
            rows = session.execute(query).all()
        for webhook, n_pending, n_failed, oldest in rows:
            lag.add_metric([webhook], max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0)
            pending.add_metric([webhook], n_pending)
            failed.add_metric([webhook], n_failed)
        yield from (lag, pending, failed)


class OnlyPortfolios:
    """The samples of ``collectors`` about ``portfolios``: what a key limited to some portfolios may see of the
    process-wide counters (samples about no portfolio, such as decisions per transaction, are the whole
    service's: not shown to it)."""

    def __init__(self, collectors: list[Any], portfolios: tuple[str, ...]):
        self.collectors = collectors
        self.portfolios = frozenset(portfolios)

    def collect(self):
        for collector in self.collectors:
            for family in collector.collect():
                family.samples = [s for s in family.samples if s.labels.get("portfolio") in self.portfolios]
                if family.samples:
                    yield family


def prometheus_text(uow: Any, portfolios: tuple[str, ...] | None) -> tuple[bytes, str]:
    """The Prometheus exposition of ``portfolios`` (None: every portfolio)."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        counters: list[Any] = [multiprocess.MultiProcessCollector(None)]
    else:
        counters = [DECISIONS, LATENCY, PER_TRANSACTION, EVENTS, WEBHOOK_FAILURES, WEBHOOK_DELIVERED]
    if portfolios is None:
        for collector in counters:
            registry.register(collector)
    else:
        registry.register(OnlyPortfolios(counters, portfolios))
    registry.register(PortfolioCollector(uow, portfolios))
    return generate_latest(registry), CONTENT_TYPE_LATEST


def wants_prometheus() -> bool:
    """``format`` when given; else what ``Accept`` prefers (JSON when it prefers neither)."""
    if "format" in request.args:
        return request.args["format"] == "prometheus"
    best = request.accept_mimetypes.best_match(["application/json", "text/plain", "application/openmetrics-text"],
                                               default="application/json")
    return best != "application/json"


# -- structured logs and request ids ------------------------------------------------------------

def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    for name in ("rpm", "rpm.auth", "rpm.access", "rpm.events", "rpm.webhooks", "app"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


# the health probes (load balancers, orchestrators: every few seconds): their access lines only with RPM_LOG_HEALTH=1,
# or when one fails (a 4xx or 5xx is logged)
HEALTH_PROBES = frozenset({"/health/live", "/health/ready"})


def register_request_ids(app: Flask) -> None:
    log_health = app.config["RPM_SETTINGS"].log_health

    @app.before_request
    def assign_request_id() -> None:
        g.request_id = request_id_of(request.headers.get("X-Request-ID", ""))
        g.started = time.perf_counter()

    @app.after_request
    def log_request(response):
        request_id = g.get("request_id") or uuid.uuid4().hex
        response.headers["X-Request-ID"] = request_id
        if not log_health and response.status_code < 400 and request.path in HEALTH_PROBES:
            return response
        principal = g.get("rpm_principal")
        scope = g.get("rpm_scope")
        log_access(request_id, request.method, request.path, response.status_code, g.get("started"),
                   scope.portfolio if scope is not None else None, principal.name if principal else None,
                   g.get("decision_id"), g.get("decision_status"))
        return response


_ACCESS = logging.getLogger("rpm.access")


def request_id_of(given: str) -> str:
    """The client's X-Request-ID when it is a plain token, else a new one."""
    return given if REQUEST_ID.matches(given) else uuid.uuid4().hex


def log_access(request_id: str, method: str, path: str, status: int, started: float | None, portfolio: str | None,
               key_name: str | None, decision_id: str | None = None, decision_status: str | None = None) -> None:
    """The access log line of one request (also written by the fast path, app/api/fast.py): information, a warning
    for a 4xx, an error for a 5xx."""
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if not _ACCESS.isEnabledFor(level):
        return
    now = time.perf_counter()
    _ACCESS.log(level, "request", extra={
        "request_id": request_id, "method": method, "path": path, "status": status,
        "duration_ms": round((now - (started if started is not None else now)) * 1000, 3),
        "portfolio": portfolio, "key_name": key_name, "decision_id": decision_id,
        "decision_status": decision_status,
    })


def current_request_id() -> str | None:
    try:
        return g.get("request_id")
    except RuntimeError:  # outside a request (CLI, tests of the service layer)
        return None
