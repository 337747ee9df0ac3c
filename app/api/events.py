"""Risk events pushed: the live stream (`GET /events`, Server-Sent Events) and the webhooks admins register."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import orjson
from flask import Response, current_app, request
from flask.views import MethodView
from marshmallow import RAISE, Schema, fields, validate

from app import webhooks
from app.errors import Forbidden, Invalid, ServiceError, Unavailable
from app.risk import domain
from app.store.database import DatabaseUnavailable
from app.store.events import TYPES, newest_id, read_after

from .auth import ANY, roles
from .common import Blueprint, actor, documented_errors, ok, uow
from .schemas import DeliveriesSchema, RegisteredWebhookSchema, RetriedSchema, WebhookListSchema, identifier
from .scope import FIRM, VISIBLE, acts_on, current

blp = Blueprint("events", __name__, description="Risk events: the live stream and webhooks")
_errors = documented_errors(blp)


class StreamQuerySchema(Schema):
    after = fields.Integer(validate=validate.Range(0, 2**63 - 1), metadata={
        "description": "send the events after this id (the `Last-Event-ID` header does the same; absent: only "
                       "events committed from now on)"})
    follow = fields.Boolean(load_default=True, metadata={
        "description": "false: send the events there are after the cursor, then end (a catch-up, not a stream)"})
    watch = identifier(domain.PORTFOLIO_ID, metadata={
        "description": "also send `portfolio` messages (no id) when this portfolio's state changes (a decision, a "
                       "mark, a fill, a close): its last decision's sequence number and the time of the change"})


class WebhookSchema(Schema):
    url = fields.String(required=True, metadata={"example": "https://execution.internal/rpm-events"})
    types = fields.List(fields.String(validate=validate.OneOf(list(TYPES))), metadata={
        "description": "the event types to deliver (absent: all)", "example": ["halted", "resumed"]})
    portfolios = fields.List(identifier(domain.PORTFOLIO_ID), metadata={
        "description": "the portfolios whose events to deliver, with those of the groups and the firm above them "
                       "(absent: every event)"})
    secret = fields.String(metadata={"description": "the signing secret (absent: one is made); shown once"})
    description = fields.String(validate=validate.Length(1, domain.REASON_LENGTH))


class DeliveriesQuerySchema(Schema):
    status = fields.String(validate=validate.OneOf(list(webhooks.STATUSES)))
    after = fields.Integer(validate=validate.Range(0, 2**63 - 1), metadata={"description": "event id"})
    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000))


class RetrySchema(Schema):
    event_id = fields.Integer(strict=True, validate=validate.Range(1, 2**63 - 1), metadata={
        "description": "the failed delivery to retry (absent: every failed delivery of the webhook)"})


class DisableSchema(Schema):
    reason = fields.String(validate=validate.Length(1, domain.REASON_LENGTH))


class _Open:
    """The streams open in this process: each holds a worker thread (gthread) for as long as it is open. A stream
    takes its place when it starts (one never started holds nothing) and none beyond the limit: the request is
    refused with a 503 when the limit is reached already, and a stream that finds it reached when it starts (a
    burst of them let through together) ends at once, telling its client to come back (``retry``)."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def take(self, limit: int) -> bool:
        with self.lock:
            if self.count >= limit:
                return False
            self.count += 1
            return True

    def give_back(self) -> None:
        with self.lock:
            self.count -= 1


OPEN = _Open()
# set when this process is told to stop (app/gunicorn_conf.py): every stream ends
CLOSING = threading.Event()


_EVENT_ID = re.compile(r"[0-9]{1,19}")


def _last_event_id(query: dict[str, Any]) -> int | None:
    header = request.headers.get("Last-Event-ID")
    if header is None:
        return query.get("after")
    if not _EVENT_ID.fullmatch(header) or int(header) > 2**63 - 1:
        raise Invalid("invalid Last-Event-ID", {"Last-Event-ID": ["must be the id of an event (digits)"]})
    return int(header)


@blp.route("/events")
class Events(MethodView):
    @roles(*ANY)
    @acts_on(VISIBLE)
    @blp.arguments(StreamQuerySchema(), location="query", unknown=RAISE)
    @blp.doc(responses={"200": {
        "description": "text/event-stream: `id:` the event's id, `event:` its type, `data:` the event as JSON; a comment "
                       "line every few seconds",
        "content": {"text/event-stream": {"schema": {  # an event, as the stream's readers parse it
            "type": "object", "properties": {"id": {"type": "string"}, "event": {"type": "string"},
                                             "data": {"type": "string"}, "retry": {"type": "integer"}}}}}}})
    @_errors
    def get(self, query):
        """The live stream of risk events the key may see (Server-Sent Events); reconnect with `Last-Event-ID` to
        miss nothing"""
        scope = current()
        visible = scope.visible
        watched = query.get("watch")
        if watched is not None and visible is not None and watched not in visible:
            raise Forbidden(f"this key may not use portfolio {watched!r}")
        after = _last_event_id(query)
        settings = current_app.config["RPM_SETTINGS"]
        unit = uow()
        if after is None:  # from now on
            try:
                after = newest_id(unit.db)
            except DatabaseUnavailable as exc:
                raise Unavailable(str(exc)) from exc
        if OPEN.count >= settings.events_max_streams:
            raise Unavailable("too many event streams open in this process (RPM_EVENTS_MAX_STREAMS)")
        store, key = current_app.extensions["rpm_keys"], request.headers["Authorization"].split(None, 1)[1].strip()
        return Response(_stream(unit, after, visible, watched, settings, query["follow"],
                                lambda: store.authenticate(key)),
                        mimetype="text/event-stream",
                        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _stream(unit: Any, after: int, visible: tuple[str, ...] | None, watched: str | None, settings: Any,
            follow: bool, still_valid: Any):
    """Poll the outbox (ids follow commit order, so `id > after` misses nothing), send what is new, a comment when
    quiet; end when the database is away (the client reconnects with its Last-Event-ID), when the process is told to
    stop, and when the key is revoked or expires (``still_valid`` raises: checked as often as keys are re-read)."""
    if not OPEN.take(settings.events_max_streams):
        yield f"retry: {int(settings.events_retry_ms)}\n: too many event streams open in this process; reconnect\n\n"
        return
    try:
        yield f"retry: {int(settings.events_retry_ms)}\n: rpm events after {after}\n\n"
        quiet_since = time.monotonic()
        last_seq = None
        checked = time.monotonic()
        while True:
            if CLOSING.is_set():
                yield ": the server is stopping; reconnect\n\n"
                return
            if time.monotonic() - checked >= settings.auth_cache_seconds:
                try:
                    still_valid()
                except ServiceError as exc:  # revoked, expired (or the keys unreadable: the database away)
                    yield f": {exc.message}\n\n"
                    return
                checked = time.monotonic()
            try:
                rows = read_after(unit.db, after, 500, visible)
                seq = _changed(unit.db, watched) if watched is not None else None
            except Exception:  # the database away: end the stream; the client comes back with its Last-Event-ID
                yield ": the database is unavailable; reconnect\n\n"
                return
            out = []
            for event in rows:
                after = event["id"]
                out.append(f"id: {event['id']}\nevent: {event['type']}\ndata: {orjson.dumps(event).decode()}\n\n")
            if seq is not None and seq != last_seq:
                if last_seq is not None or not out:
                    change = {"portfolio_id": watched, "last_seq": seq[0], "updated_at": seq[1]}
                    out.append(f"event: portfolio\ndata: {orjson.dumps(change).decode()}\n\n")
                last_seq = seq
            if out:
                yield "".join(out)
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= settings.events_heartbeat_s:
                yield ": keep-alive\n\n"
                quiet_since = time.monotonic()
            if len(rows) < 500:
                if not follow:
                    return
                CLOSING.wait(settings.events_poll_s)
    finally:
        OPEN.give_back()


def _changed(db: Any, portfolio: str) -> tuple[int, str] | None:
    """A portfolio's last decision and last change (None: no such portfolio)."""
    with db.connection() as conn:
        found = conn.execute("SELECT last_seq, updated_at FROM portfolios WHERE id = %s", (portfolio,)).fetchone()
    return None if found is None else (int(found[0]), found[1].isoformat())


@blp.route("/webhooks")
class Webhooks(MethodView):
    @roles("admin")
    @acts_on(FIRM)
    @blp.response(200, WebhookListSchema)
    @_errors
    def get(self):
        """The webhooks registered (their secrets are never shown again)"""
        return ok({"webhooks": webhooks.listing(uow())})

    @roles("admin")
    @acts_on(FIRM)
    @blp.arguments(WebhookSchema())
    @blp.response(201, RegisteredWebhookSchema)
    @_errors
    def post(self, body):
        """Register an endpoint for risk events committed from now on: signed, at least once, in order per
        portfolio. The answer shows its secret, once"""
        return ok(webhooks.create(uow(), body, actor()), 201)


def _webhook_id(webhook_id: str) -> str:
    if len(webhook_id) != 36:
        raise Invalid("invalid webhook id", {"webhook_id": ["must be a webhook's id (a UUID)"]})
    return webhook_id


@blp.route("/webhooks/<string:webhook_id>")
class Webhook(MethodView):
    @roles("admin")
    @acts_on(FIRM)
    @blp.response(200, RegisteredWebhookSchema)
    @_errors
    def get(self, webhook_id):
        """A webhook and how many of its deliveries are pending, delivered, failed"""
        return ok(webhooks.one(uow(), _webhook_id(webhook_id)))

    @roles("admin")
    @acts_on(FIRM)
    @blp.arguments(DisableSchema(), required=False)
    @blp.response(200, RegisteredWebhookSchema)
    @_errors
    def delete(self, body, webhook_id):
        """Stop delivering to a webhook (its deliveries stay readable)"""
        return ok(webhooks.disable(uow(), _webhook_id(webhook_id), body.get("reason"), actor()))


@blp.route("/webhooks/<string:webhook_id>/deliveries")
class Deliveries(MethodView):
    @roles("admin")
    @acts_on(FIRM)
    @blp.arguments(DeliveriesQuerySchema(), location="query", unknown=RAISE)
    @blp.response(200, DeliveriesSchema)
    @_errors
    def get(self, query, webhook_id):
        """A webhook's deliveries in event order: status, attempts, the last answer or error"""
        return ok(webhooks.deliveries(uow(), _webhook_id(webhook_id), query.get("status"), query.get("after"),
                                      query["limit"]))


@blp.route("/webhooks/<string:webhook_id>/deliveries/retry")
class Retry(MethodView):
    @roles("admin")
    @acts_on(FIRM)
    @blp.arguments(RetrySchema())
    @blp.response(200, RetriedSchema)
    @_errors
    def post(self, body, webhook_id):
        """Send failed deliveries again (one event's, or all of the webhook's), in order with the pending ones"""
        return ok(webhooks.retry(uow(), _webhook_id(webhook_id), body.get("event_id"), actor()))
