"""Webhooks: risk events delivered to the endpoints admins register, at least once, in order, signed.

The outbox is the queue: ``risk_events`` (app/store/events.py), numbered in commit order. One deliverer works at a
time in a deployment, however many processes and hosts run: each process started by `rpm serve` runs a
``Deliverer`` thread that asks PostgreSQL for a session advisory lock (``pg_try_advisory_lock``) on a connection of
its own; the one that holds it delivers, the others wait and ask again. Its connection lost (the process killed, the
host gone), PostgreSQL releases the lock and another takes over where the deliveries table says.

For each endpoint, events are queued in id order (``webhook_deliveries``: those of its types and portfolios) and
sent one at a time, the next only once the one before was acknowledged (a 2xx) or given up: in order per endpoint,
and so per portfolio. A failed attempt is retried after 1, 2, 4... seconds (at most ``RETRY_CAP_S``); after
``max_attempts`` the delivery is `failed`, visible at `GET /webhooks/{id}/deliveries`, and can be retried.
A process killed between the request and recording its answer sends it again: at least once, the same
``Idempotency-Key`` (the event's id) each time.

Each request is signed as Stripe signs its webhooks: ``RPM-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>.<body>" with the endpoint's secret>``; a receiver recomputes it and refuses a timestamp outside its tolerance.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import logging
import os
import secrets
import socket
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import orjson
import psycopg
from psycopg.rows import dict_row
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from app.errors import Invalid, NotFound
from app.risk import domain
from app.store import models as m
from app.store.audit import system_chain
from app.store.events import TYPES, WANTED, payload
from app.store.repository import add_admin_action

log = logging.getLogger("rpm.webhooks")
DELIVERER_LOCK = 0x52504D_5748  # one deliverer per deployment (pg_try_advisory_lock)
RETRY_CAP_S = 300.0
MAX_URL = 2048
SIGNATURE_HEADER = "RPM-Signature"
STATUSES = ("pending", "delivered", "failed")


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``RPM-Signature`` header of a body sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(secret: str, header: str, body: bytes, tolerance_s: int = 300, now: float | None = None) -> bool:
    """What a receiver checks (docs/events.md's example does the same): a v1 signature of the body with the timestamp,
    the timestamp within ``tolerance_s`` of now."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = signature(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def backoff(attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: 1, 2, 4, ... at most RETRY_CAP_S."""
    return min(RETRY_CAP_S, 2.0 ** max(0, attempts - 1))


# -- registration (admin) ----------------------------------------------------------------------

def _url(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_URL:
        raise Invalid("invalid url", {"url": [f"must be an http(s) URL of at most {MAX_URL} characters"]})
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (out of range: ValueError)
    except ValueError:
        parts = None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.username is not None
            or not value.isascii() or any(c.isspace() or not c.isprintable() for c in value)):
        raise Invalid("invalid url", {"url": ["must be an absolute http:// or https:// URL (ASCII, no credentials, "
                                              "a port within 1-65535)"]})
    return value


def _types(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or any(t not in TYPES for t in value):
        raise Invalid("invalid types", {"types": [f"a non-empty list of: {', '.join(TYPES)}"]})
    return sorted(set(value))


def _portfolios(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or len(value) > 1000 or any(
            not domain.PORTFOLIO_ID.matches(p) for p in value):
        raise Invalid("invalid portfolios", {"portfolios": ["a non-empty list of portfolio ids"]})
    return sorted(set(value))


def view(hook: m.Webhook, *, secret: bool = False) -> dict[str, Any]:
    out = {"id": hook.id, "url": hook.url, "types": hook.types, "portfolios": hook.portfolios,
           "description": hook.description, "created_at": hook.created_at.isoformat(), "created_by": hook.created_by,
           "active": hook.disabled_at is None,
           "disabled_at": hook.disabled_at.isoformat() if hook.disabled_at else None, "queued_to": hook.queued_to}
    if secret:
        out["secret"] = hook.secret
    return out


def create(uow: Any, body: dict[str, Any], actor: Any) -> dict[str, Any]:
    """Register an endpoint: it receives the events committed from now on. Its secret is shown once."""
    url, types, portfolios = _url(body.get("url")), _types(body.get("types")), _portfolios(body.get("portfolios"))
    secret = body.get("secret") or "whsec_" + secrets.token_urlsafe(32)
    if not isinstance(secret, str) or not 16 <= len(secret) <= 128 or not secret.isprintable() or not secret.isascii() \
            or any(c.isspace() for c in secret):
        raise Invalid("invalid secret", {"secret": ["16 to 128 printable ASCII characters, no spaces"]})
    description = body.get("description")
    now = uow.clock()
    with uow.session() as session:
        hook = m.Webhook(id=str(uuid.uuid4()), url=url, secret=secret, types=types, portfolios=portfolios,
                         description=description, created_at=now, created_by=actor.name,
                         queued_to=session.execute(select(m.RiskEvent.id).order_by(m.RiskEvent.id.desc()).limit(1))
                         .scalar() or 0)
        session.add(hook)
        add_admin_action(session, system_chain(session), actor, portfolio_id=None, action="webhook_create", at=now,
                         reason=description, after={"webhook": hook.id, "url": url, "types": types,
                                                    "portfolios": portfolios})
        return view(hook, secret=True)


def listing(uow: Any) -> list[dict[str, Any]]:
    with uow.reading() as session:
        return [view(h) for h in session.scalars(select(m.Webhook).order_by(m.Webhook.created_at, m.Webhook.id))]


def _hook(session: Any, webhook_id: str) -> m.Webhook:
    hook = session.get(m.Webhook, webhook_id) if _is_uuid(webhook_id) else None
    if hook is None:
        raise NotFound(f"unknown webhook {webhook_id!r}")
    return hook


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def one(uow: Any, webhook_id: str) -> dict[str, Any]:
    with uow.reading() as session:
        hook = _hook(session, webhook_id)
        counts = dict(session.execute(
            select(m.WebhookDelivery.status, func.count()).where(m.WebhookDelivery.webhook_id == webhook_id)
            .group_by(m.WebhookDelivery.status)).all())
        return {**view(hook), "deliveries": {s: counts.get(s, 0) for s in STATUSES}}


def disable(uow: Any, webhook_id: str, reason: str | None, actor: Any) -> dict[str, Any]:
    """Stop delivering to an endpoint (its record and deliveries stay)."""
    now = uow.clock()
    with uow.session() as session:
        hook = _hook(session, webhook_id)
        if hook.disabled_at is None:
            hook.disabled_at = now
            add_admin_action(session, system_chain(session), actor, portfolio_id=None, action="webhook_disable",
                             at=now, reason=reason, before={"webhook": hook.id, "active": True},
                             after={"webhook": hook.id, "active": False})
        return view(hook)


def deliveries(uow: Any, webhook_id: str, status: str | None, after: int | None, limit: int) -> dict[str, Any]:
    """An endpoint's deliveries in event order (those of ``status``), ``limit`` after event ``after``."""
    with uow.reading() as session:
        _hook(session, webhook_id)
        query = (select(m.WebhookDelivery, m.RiskEvent.type, m.RiskEvent.portfolio_id, m.RiskEvent.level)
                 .join(m.RiskEvent, m.RiskEvent.id == m.WebhookDelivery.event_id)
                 .where(m.WebhookDelivery.webhook_id == webhook_id))
        if status is not None:
            query = query.where(m.WebhookDelivery.status == status)
        if after is not None:
            query = query.where(m.WebhookDelivery.event_id > after)
        rows = session.execute(query.order_by(m.WebhookDelivery.event_id).limit(limit)).all()
        items = [_delivery(d, kind, portfolio, level) for d, kind, portfolio, level in rows]
        return {"webhook_id": webhook_id, "deliveries": items,
                "next_after": items[-1]["event_id"] if len(items) == limit else None}


def _delivery(d: m.WebhookDelivery, kind: str, portfolio: str | None, level: str | None) -> dict[str, Any]:
    def iso(t: datetime | None) -> str | None:
        return t.isoformat() if t else None

    return {"event_id": d.event_id, "type": kind, "portfolio_id": portfolio, "level": level, "status": d.status,
            "attempts": d.attempts, "next_attempt_at": iso(d.next_attempt_at) if d.status == "pending" else None,
            "last_attempt_at": iso(d.last_attempt_at), "last_status": d.last_status, "last_error": d.last_error,
            "delivered_at": iso(d.delivered_at), "queued_at": iso(d.queued_at)}


def retry(uow: Any, webhook_id: str, event_id: int | None, actor: Any) -> dict[str, Any]:
    """Send failed deliveries again (one event's, or all of the endpoint's): pending, attempts from 0, now."""
    now = uow.clock()
    with uow.session() as session:
        hook = _hook(session, webhook_id)
        query = select(m.WebhookDelivery).where(m.WebhookDelivery.webhook_id == hook.id,
                                                m.WebhookDelivery.status == "failed")
        if event_id is not None:
            query = query.where(m.WebhookDelivery.event_id == event_id)
        found = session.scalars(query.with_for_update()).all()
        if event_id is not None and not found:
            raise NotFound(f"no failed delivery of event {event_id} to webhook {webhook_id}")
        for d in found:
            d.status, d.attempts, d.next_attempt_at = "pending", 0, now
        if found:
            add_admin_action(session, system_chain(session), actor, portfolio_id=None, action="webhook_retry", at=now,
                             reason=None, after={"webhook": hook.id, "events": [d.event_id for d in found]})
        return {"webhook_id": hook.id, "retried": sorted(d.event_id for d in found)}


# -- delivery -----------------------------------------------------------------------------------

# the events an endpoint wants, queued after ``queued_to`` up to the newest committed (ids follow commit order:
# none below it can appear later), and its cursor moved there, in one statement. A `_system` event (a group's, the
# firm's, the service's) goes to an endpoint of some portfolios when it is about a level above one of them.
_QUEUE = f"""
WITH top AS (SELECT coalesce(max(id), 0) AS m FROM risk_events),
queued AS (
    INSERT INTO webhook_deliveries (webhook_id, event_id, status, attempts, next_attempt_at, queued_at)
    SELECT %(w)s, e.id, 'pending', 0, %(now)s, %(now)s FROM risk_events e, top
    WHERE e.id > %(q)s AND e.id <= top.m AND {WANTED}
    ON CONFLICT DO NOTHING)
UPDATE webhooks SET queued_to = top.m FROM top WHERE webhooks.id = %(w)s AND top.m > webhooks.queued_to
"""
_DUE = """
SELECT d.event_id, d.attempts, d.next_attempt_at, e.id, e.type, e.portfolio_id, e.level, e.seq, e.at, e.data,
       e.audit_seq, e.row_hash
FROM webhook_deliveries d JOIN risk_events e ON e.id = d.event_id
WHERE d.webhook_id = %s AND d.status = 'pending'
  AND EXISTS (SELECT 1 FROM webhooks w WHERE w.id = d.webhook_id AND w.disabled_at IS NULL)
ORDER BY d.event_id LIMIT 20
"""
_DELIVERED = ("UPDATE webhook_deliveries SET status = 'delivered', attempts = attempts + 1, last_attempt_at = %s, "
              "delivered_at = %s, last_status = %s, last_error = NULL WHERE webhook_id = %s AND event_id = %s")
_FAILED = ("UPDATE webhook_deliveries SET status = %s, attempts = %s, last_attempt_at = %s, next_attempt_at = %s, "
           "last_status = %s, last_error = %s WHERE webhook_id = %s AND event_id = %s")


# the deliverer's session on the server side: a host gone silent is dropped (its lock released) within ~25 s
_SERVER_KEEPALIVES = ("-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3 "
                      "-c tcp_user_timeout=25000")


def conninfo(url: str) -> str:
    """A SQLAlchemy URL as a libpq connection string, as SQLAlchemy's psycopg dialect would connect with it (several
    hosts too), for a connection of the deliverer's own."""
    from psycopg.conninfo import make_conninfo
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

    _args, params = PGDialect_psycopg().create_connect_args(make_url(url))
    return make_conninfo(**{k: v for k, v in params.items() if isinstance(v, str | int)})


class Deliverer:
    """A background thread that delivers risk events to webhooks while it holds the deployment's deliverer lock."""

    def __init__(self, url: str, *, poll_s: float = 0.5, timeout_s: float = 5.0, max_attempts: int = 20,
                 connect_timeout_s: int = 3, clock: Any = None):
        self.conninfo = conninfo(url)
        self.poll_s, self.timeout_s, self.max_attempts = poll_s, timeout_s, max_attempts
        self.connect_timeout_s = connect_timeout_s
        self.standby_s = max(poll_s, 1.0)  # how often a process on standby asks for the lock
        self.turn_s = 1.0  # an endpoint's turn in a round (one request may run to its deadline)
        self.clock = clock or (lambda: datetime.now(UTC))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.holding = False

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rpm-webhooks", daemon=True)
            self._thread.start()

    def stop(self, wait: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(wait)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                # keepalives both ways: this side notices a silent server; the server notices a silent host and
                # releases the lock with the session (its own default waits two hours)
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=self.connect_timeout_s,
                                     keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
                                     options=_SERVER_KEEPALIVES,
                                     application_name=f"rpm-webhooks-{os.getpid()}") as conn:
                    # on standby: ask again on the same connection until the holder goes (its connection with it)
                    while not conn.execute("SELECT pg_try_advisory_lock(%s)", (DELIVERER_LOCK,)).fetchone()[0]:
                        if self._stop.wait(self.standby_s):
                            return
                    self.holding = True
                    log.info("webhook deliverer: this process delivers")
                    while not self._stop.is_set():
                        self.work(conn)
                        self._stop.wait(self.poll_s)
            except Exception:  # the database away, or this process's lock connection lost: ask again
                if self.holding:
                    log.warning("webhook deliverer stopped delivering; trying again", exc_info=True)
            self.holding = False
            self._stop.wait(self.standby_s)

    def work(self, conn: psycopg.Connection) -> int:
        """Queue what is new for each active endpoint, and deliver what is due, each endpoint's turn bounded (a slow
        one cannot hold the others back longer than one request's deadline); the deliveries acknowledged."""
        hooks = conn.cursor(row_factory=dict_row).execute(
            "SELECT id, url, secret, types, portfolios, queued_to FROM webhooks WHERE disabled_at IS NULL "
            "ORDER BY id").fetchall()
        done = 0
        for hook in hooks:
            conn.execute(_QUEUE, {"w": hook["id"], "q": hook["queued_to"], "types": hook["types"],
                                  "ps": hook["portfolios"], "now": self.clock()})
            done += self._deliver(conn, hook, time.monotonic() + self.turn_s)
        return done

    def _deliver(self, conn: psycopg.Connection, hook: dict[str, Any], turn_ends: float) -> int:
        """An endpoint's due deliveries, in event order, until its turn ends, the head must wait, or none is due.
        The endpoint is read again with each batch: one disabled meanwhile gets nothing more."""
        from app.observability import WEBHOOK_DELIVERED, WEBHOOK_FAILURES

        done = 0
        while not self._stop.is_set() and time.monotonic() < turn_ends:
            due = conn.cursor(row_factory=dict_row).execute(_DUE, (hook["id"],)).fetchall()
            if not due:
                return done
            for row in due:
                if row["next_attempt_at"] > self.clock() or time.monotonic() >= turn_ends:
                    return done  # (the head waits: the events after it wait with it, in order)
                status, error = self.send(hook, row)
                attempts = row["attempts"] + 1
                at = self.clock()
                if status is not None and 200 <= status < 300:
                    conn.execute(_DELIVERED, (at, at, status, hook["id"], row["event_id"]))
                    WEBHOOK_DELIVERED.labels(hook["id"]).inc()
                    done += 1
                    continue
                WEBHOOK_FAILURES.labels(hook["id"]).inc()
                gave_up = attempts >= self.max_attempts
                conn.execute(_FAILED, ("failed" if gave_up else "pending", attempts, at,
                                       at + timedelta(seconds=backoff(attempts)), status, error, hook["id"],
                                       row["event_id"]))
                log.warning("webhook delivery failed", extra={
                    "event_id": row["event_id"], "event_type": row["type"], "portfolio": row["portfolio_id"],
                    "reason": f"webhook {hook['id']}: attempt {attempts}: {error}"
                              + ("; given up" if gave_up else "")})
                if not gave_up:
                    return done
        return done

    def send(self, hook: dict[str, Any], row: dict[str, Any]) -> tuple[int | None, str | None]:
        """POST one event, within ``timeout_s`` in all (a receiver trickling its answer is cut at the deadline);
        (HTTP status, error) — status None when no answer came. Whatever goes wrong is a failed attempt."""
        body = orjson.dumps(payload(row))
        headers = {"Content-Type": "application/json", "User-Agent": "rpm-webhooks/1",
                   SIGNATURE_HEADER: signature(hook["secret"], int(time.time()), body),
                   "Idempotency-Key": f"rpm-event-{row['id']}", "RPM-Event-Id": str(row["id"]),
                   "RPM-Event-Type": row["type"]}
        try:
            parts = urlsplit(hook["url"])
            kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            conn = kind(parts.hostname, parts.port, timeout=self.timeout_s)
        except (ValueError, http.client.HTTPException) as exc:  # (a URL checked at registration: not expected)
            return None, f"{type(exc).__name__}: {exc}"[:500]
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        deadline = threading.Timer(self.timeout_s, _cut, (conn,))
        deadline.start()
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read(65536)  # (the status is what counts; the rest of a body is not read)
            status = response.status
            return status, None if 200 <= status < 300 else f"HTTP {status}"
        except Exception as exc:  # refused, reset, timed out, cut at the deadline, not HTTP at all (BadStatusLine)
            return None, f"{type(exc).__name__}: {exc}"[:500]
        finally:
            deadline.cancel()
            conn.close()


def _cut(conn: http.client.HTTPConnection) -> None:
    """A request past its deadline: its socket shut, so that whatever read waits on it ends now."""
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
