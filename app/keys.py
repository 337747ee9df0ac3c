"""API keys: generated with a public prefix, stored only as a sha256, compared in constant time.

Each process authenticates against a copy of the whole api_keys table (it is small), read again when
older than ``cache_seconds``: a key revoked or created by another process (``rpm keys revoke``, another
worker) is refused or accepted by every worker within that bound, and a presented key costs a dict
lookup and one ``hmac.compare_digest`` whether its prefix exists or not, so the time taken tells
nothing about which prefixes exist. The database is never read per request.

Failed authentications are counted per client (remote address) in a moving window of a minute, in the
memory of each worker process (a client spread over N workers by the server may fail up to N times the
limit before each of them refuses it). Over the limit, a client's failures are answered 429 with
Retry-After instead of 401, neither counted nor logged one by one, until its failures are a minute old;
a valid key is still admitted, so that a key rotation (the old key still in flight) or a new key not yet
in every copy cannot lock a signal engine's host out of the gate. The throttle need not slow guessing,
which a 256-bit secret makes hopeless: it keeps a client failing in a loop from flooding the log, and
tells it to back off.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import select

from .errors import Invalid, NotFound, TooManyRequests, Unauthorized, Unavailable
from .risk import domain
from .services import Actor, UnitOfWork
from .settings import Settings
from .store import models as m
from .store import repository
from .store.audit import SYSTEM_CHAIN, system_chain

ROLES = domain.ROLES
# what generate_key() makes; the prefix ("rpm_" + 8 hex) is public: it finds the key and names it in logs
KEY_RE = re.compile(r"(?P<prefix>rpm_[0-9a-f]{8})_[A-Za-z0-9_-]{43}")
KEY_FORMAT = "rpm_ + 8 lowercase hex digits + _ + 43 URL-safe base64 characters"
FAILURE_WINDOW_SECONDS = 60
# compared against when the prefix is unknown, so that an unknown prefix costs what a known one does
_NO_HASH = "0" * 64
log = logging.getLogger("rpm.auth")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return f"rpm_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"


def key_prefix(key: str) -> str | None:
    """The public prefix of a well-formed key; None for anything else, of which nothing may be logged
    (it may be part of another system's secret sent here by mistake)."""
    match = KEY_RE.fullmatch(key)
    return match["prefix"] if match else None


@dataclass(frozen=True)
class _KeyRecord:
    id: str
    prefix: str
    key_hash: str
    name: str
    role: str
    portfolios: list[str] | None
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: m.ApiKey) -> _KeyRecord:
        return cls(row.id, row.prefix, row.key_hash, row.name, row.role, row.portfolios, row.expires_at,
                   row.revoked_at)


@dataclass(frozen=True)
class Principal:
    """An authenticated key: who (for the audit) and what it may do."""

    key_id: str
    name: str
    role: str
    portfolios: tuple[str, ...] | None

    @property
    def actor(self) -> Actor:
        return Actor(self.name, self.role, self.key_id)



def _key_payload(row: m.ApiKey, now: datetime) -> dict[str, Any]:
    state = "revoked" if row.revoked_at else ("expired" if row.expires_at and row.expires_at <= now else "active")
    return {
        "id": row.id, "prefix": row.prefix, "name": row.name, "role": row.role, "portfolios": row.portfolios,
        "created_at": row.created_at.isoformat(), "created_by": row.created_by,
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None, "state": state,
    }


def _check_key_format(key: str, message: str) -> None:
    if KEY_RE.fullmatch(key) is None:
        raise Invalid(f"{message}: expected {KEY_FORMAT}", {"key": [f"expected {KEY_FORMAT}, as generate_key() makes"]})


class KeyStore:
    def __init__(self, uow: UnitOfWork, cache_seconds: float = Settings.auth_cache_seconds, *,
                 failures_per_minute: int = Settings.auth_failures_per_minute):
        self.uow = uow
        self.cache_seconds = cache_seconds
        # (monotonic time its read began, {prefix: record}): replaced whole, never changed in place, so
        # that a request reads it without a lock; -inf: never read
        self._snapshot: tuple[float, dict[str, _KeyRecord]] = (float("-inf"), {})
        # one reader of the table at a time; it is also taken by this process's own changes, so that a
        # read begun before a change cannot replace the copy after the change was put in it
        self._lock = threading.Lock()
        # (monotonic time it ended, message) of the last read that failed
        self._failed_read: tuple[float, str] | None = None
        self._limit = RateLimitItemPerMinute(failures_per_minute) if failures_per_minute > 0 else None
        self._failures = MovingWindowRateLimiter(MemoryStorage()) if self._limit else None

    def create(self, role: str, name: str | None, portfolios: list[str] | None, actor: Actor,
               expires_in: timedelta | None = None, key: str | None = None) -> tuple[str, dict[str, Any]]:
        """Create a key; returns it in clear (shown once) and its stored record."""
        if role not in ROLES:
            raise Invalid("invalid role", {"role": [f"one of {', '.join(ROLES)}"]})
        for pid in portfolios or ():
            if not domain.PORTFOLIO_ID.matches(pid) or pid == SYSTEM_CHAIN:
                raise Invalid("invalid portfolio", {"portfolios": [f"invalid portfolio id {pid!r}"]})
        if name is not None and not domain.KEY_NAME.matches(name):
            # recorded with every decision and action the key makes, and printed in lists and logs
            raise Invalid("invalid key name", {"name": [f"must be {domain.KEY_NAME.description}"]})
        if key is not None:
            _check_key_format(key, "not an RPM key")
        key = key or generate_key()
        prefix = KEY_RE.fullmatch(key)["prefix"]

        with self.uow.session() as session:
            now = self.uow.clock()
            row = m.ApiKey(id=str(uuid.uuid4()), prefix=prefix, key_hash=hash_key(key),
                           name=name or f"{role}-{prefix}", role=role,
                           portfolios=sorted(set(portfolios)) if portfolios else None, created_at=now,
                           created_by=actor.name, expires_at=now + expires_in if expires_in else None)
            session.add(row)
            session.flush()
            payload = _key_payload(row, now)
            repository.add_admin_action(session, system_chain(session), actor, portfolio_id=None, action="key_create",
                                        at=now, reason=None, before=None, after=payload)
            record = _KeyRecord.of(row)
        self._remember(record)
        return key, payload

    def ensure_bootstrap(self, key: str) -> dict[str, Any]:
        """RPM_BOOTSTRAP_ADMIN_KEY: create that admin key, or keep it if it exists."""
        _check_key_format(key, "RPM_BOOTSTRAP_ADMIN_KEY is not an RPM key")

        with self.uow.reading() as session:
            existing = session.execute(select(m.ApiKey.key_hash, m.ApiKey.revoked_at).where(
                m.ApiKey.prefix == key_prefix(key))).one_or_none()
        if existing is not None:
            stored_hash, revoked_at = existing
            if not hmac.compare_digest(stored_hash, hash_key(key)):
                raise Invalid("RPM_BOOTSTRAP_ADMIN_KEY clashes with another key's prefix", {})
            return {"created": False, "revoked": revoked_at is not None}
        self.create("admin", "bootstrap-admin", None, Actor("bootstrap", "admin"), key=key)
        return {"created": True, "revoked": False}

    def list(self) -> list[dict[str, Any]]:
        with self.uow.reading() as session:
            now = self.uow.clock()
            return [_key_payload(r, now) for r in session.scalars(select(m.ApiKey).order_by(m.ApiKey.created_at))]

    def revoke(self, key_id_or_prefix: str, actor: Actor, reason: str | None = None) -> dict[str, Any]:
        """Revoke a key: refused at once by this process, within ``cache_seconds`` by every other."""
        with self.uow.session() as session:
            row = session.execute(select(m.ApiKey).where(
                (m.ApiKey.id == key_id_or_prefix) | (m.ApiKey.prefix == key_id_or_prefix)).with_for_update()
            ).scalar_one_or_none()
            if row is None:
                raise NotFound(f"unknown key {key_id_or_prefix!r}")
            now = self.uow.clock()
            before = _key_payload(row, now)
            if row.revoked_at is None:
                row.revoked_at = now
            payload = _key_payload(row, now)
            repository.add_admin_action(session, system_chain(session), actor, portfolio_id=None, action="key_revoke",
                                        at=now, reason=reason, before=before, after=payload)
            record = _KeyRecord.of(row)
        self._remember(record)
        return payload

    def authenticate(self, key: str, client: str | None = None) -> Principal:
        """The principal of a presented key. Unauthorized for a malformed, unknown, revoked or expired one
        (TooManyRequests instead once its client, a remote address, is over the limit of failures);
        Unavailable when the copy of the keys is too old and the database cannot be read. A valid key is
        admitted whatever its client's failures: a key rotation, or a new key not yet in every copy, must
        not lock a signal engine's host out. A caller that names no client is not throttled."""
        match = KEY_RE.fullmatch(key)
        prefix = match["prefix"] if match else None
        row = self._records().get(prefix) if prefix else None
        stored = row.key_hash if row is not None else _NO_HASH
        if not hmac.compare_digest(stored, hash_key(key)) or row is None:
            self._refuse(client, "malformed key" if match is None else "unknown key", prefix, "unknown API key")
        if row.revoked_at is not None:
            self._refuse(client, "revoked key", prefix, "this API key was revoked")
        if row.expires_at is not None and row.expires_at <= self.uow.clock():
            self._refuse(client, "expired key", prefix, "this API key has expired")
        return Principal(row.id, row.name, row.role, tuple(row.portfolios) if row.portfolios is not None else None)

    def _refuse(self, client: str | None, why: str, prefix: str | None, message: str) -> NoReturn:
        """Count a failure of ``client``: 401, or 429 once it is over the limit (those are neither counted
        nor logged one by one: a client failing in a loop must not flood the log)."""
        if client is not None and self._limit is not None:
            if not self._failures.test(self._limit, client):
                raise TooManyRequests("too many failed authentications: try again later",
                                      retry_after=FAILURE_WINDOW_SECONDS)
            self._failures.hit(self._limit, client)
            if not self._failures.test(self._limit, client):
                log.warning("authentication throttled: %d failures in a minute from %s", self._limit.amount, client)
        log.warning("authentication failed: %s", why, extra={"key_prefix": prefix})
        raise Unauthorized(message)

    def _records(self) -> dict[str, _KeyRecord]:
        """Every key by prefix, as read at most ``cache_seconds`` ago."""
        loaded_at, records = self._snapshot
        asked = time.monotonic()
        if asked - loaded_at < self.cache_seconds:
            return records
        with self._lock:
            loaded_at, records = self._snapshot
            if time.monotonic() - loaded_at < self.cache_seconds:
                return records  # read by another request while this one waited
            if self._failed_read is not None and self._failed_read[0] >= asked:
                # the read this request waited for failed: each waiter trying again in turn, each up to the
                # connect timeout, would hold the last one for all of them
                raise Unavailable(self._failed_read[1])
            # the start of the read, not its end, dates the copy: a revocation committed before the read
            # began is in it, and one committed after is in the next
            started = time.monotonic()
            try:
                with self.uow.reading() as session:
                    records = {row.prefix: _KeyRecord.of(row) for row in session.scalars(select(m.ApiKey))}
            except Unavailable as exc:
                # fail closed: the old copy may still hold a key revoked since, past the bound
                self._failed_read = (time.monotonic(), exc.message)
                raise
            self._snapshot = (started, records)
            return records

    def _remember(self, record: _KeyRecord) -> None:
        """A key this process created or revoked: in its copy at once, not at the next read."""
        with self._lock:
            loaded_at, records = self._snapshot
            self._snapshot = (loaded_at, {**records, record.prefix: record})
