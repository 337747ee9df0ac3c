"""API keys: generated with a public prefix, stored only as a sha256, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from .errors import Invalid, NotFound, Unauthorized
from .risk.model import PORTFOLIO_ID_RE
from .services import Actor, RPMService
from .store import models as m
from .store import repository
from .store.audit import system_chain

ROLES = ("trader", "compliance", "admin")
PREFIX_LENGTH = 12  # "rpm_" + 8 hex characters: public, used to find the key and in logs
log = logging.getLogger("rpm.auth")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return f"rpm_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"


def key_prefix(key: str) -> str:
    return key[:PREFIX_LENGTH]


@dataclass(frozen=True)
class _KeyRecord:
    id: str
    key_hash: str
    name: str
    role: str
    portfolios: list[str] | None
    expires_at: datetime | None
    revoked_at: datetime | None


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

    def may_use(self, portfolio_id: str) -> bool:
        return self.portfolios is None or portfolio_id in self.portfolios


def _key_payload(row: m.ApiKey, now: datetime) -> dict[str, Any]:
    state = "revoked" if row.revoked_at else ("expired" if row.expires_at and row.expires_at <= now else "active")
    return {
        "id": row.id, "prefix": row.prefix, "name": row.name, "role": row.role, "portfolios": row.portfolios,
        "created_at": row.created_at.isoformat(), "created_by": row.created_by,
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None, "state": state,
    }


class KeyStore:
    def __init__(self, service: RPMService, cache_seconds: float = 2.0):
        self.service = service
        # authenticated keys are remembered briefly (a lookup per request costs a transaction);
        # a revocation takes effect at once in this process and within cache_seconds in the others
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, _KeyRecord]] = {}

    def create(self, role: str, name: str | None, portfolios: list[str] | None, actor: Actor,
               expires_in: timedelta | None = None, key: str | None = None) -> tuple[str, dict[str, Any]]:
        """Create a key; returns it in clear (shown once) and its stored record."""
        if role not in ROLES:
            raise Invalid("invalid role", {"role": [f"one of {', '.join(ROLES)}"]})
        for pid in portfolios or ():
            if not PORTFOLIO_ID_RE.match(pid):
                raise Invalid("invalid portfolio", {"portfolios": [f"invalid portfolio id {pid!r}"]})
        if key is not None and len(key) < 32:
            raise Invalid("a key needs at least 32 characters", {"key": ["too short"]})
        key = key or generate_key()

        def run(session):
            now = self.service.clock()
            row = m.ApiKey(id=str(uuid.uuid4()), prefix=key_prefix(key), key_hash=hash_key(key),
                           name=name or f"{role}-{key_prefix(key)}", role=role,
                           portfolios=sorted(set(portfolios)) if portfolios else None, created_at=now,
                           created_by=actor.name, expires_at=now + expires_in if expires_in else None)
            session.add(row)
            session.flush()
            repository.add_admin_action(session, system_chain(session), actor, portfolio_id=None, action="key_create",
                                        at=now, reason=None, before=None, after=_key_payload(row, now))
            return _key_payload(row, now)

        return key, self.service._write(run)

    def ensure_bootstrap(self, key: str) -> dict[str, Any]:
        """RPM_BOOTSTRAP_ADMIN_KEY: create that admin key, or keep it if it exists."""
        def find(session):
            row = session.execute(select(m.ApiKey).where(m.ApiKey.prefix == key_prefix(key))).scalar_one_or_none()
            return None if row is None else (row.key_hash, row.revoked_at)

        existing = self.service._read(find)
        if existing is not None:
            if not hmac.compare_digest(existing[0], hash_key(key)):
                raise Invalid("RPM_BOOTSTRAP_ADMIN_KEY clashes with another key's prefix", {})
            return {"created": False, "revoked": existing[1] is not None}
        self.create("admin", "bootstrap-admin", None, Actor("bootstrap", "admin"), key=key)
        return {"created": True, "revoked": False}

    def list(self) -> list[dict[str, Any]]:
        def run(session):
            now = self.service.clock()
            return [_key_payload(r, now) for r in session.scalars(select(m.ApiKey).order_by(m.ApiKey.created_at))]
        return self.service._read(run)

    def revoke(self, key_id_or_prefix: str, actor: Actor, reason: str | None = None) -> dict[str, Any]:
        def run(session):
            row = session.execute(select(m.ApiKey).where(
                (m.ApiKey.id == key_id_or_prefix) | (m.ApiKey.prefix == key_id_or_prefix)).with_for_update()
            ).scalar_one_or_none()
            if row is None:
                raise NotFound(f"unknown key {key_id_or_prefix!r}")
            now = self.service.clock()
            before = _key_payload(row, now)
            if row.revoked_at is None:
                row.revoked_at = now
            self._cache.pop(row.prefix, None)
            repository.add_admin_action(session, system_chain(session), actor, portfolio_id=None, action="key_revoke",
                                        at=now, reason=reason, before=before, after=_key_payload(row, now))
            return _key_payload(row, now)
        return self.service._write(run)

    def authenticate(self, key: str) -> Principal:
        """The principal of a presented key; Unauthorized for a missing, unknown, revoked or expired one."""
        prefix = key_prefix(key)
        cached = self._cache.get(prefix)
        if cached is not None and time.monotonic() - cached[0] < self.cache_seconds:
            row = cached[1]
        else:
            row = None

        def run(session):
            row = session.execute(select(m.ApiKey).where(m.ApiKey.prefix == prefix)).scalar_one_or_none()
            if row is None:
                return None
            return _KeyRecord(row.id, row.key_hash, row.name, row.role, row.portfolios, row.expires_at,
                              row.revoked_at)

        if row is None:
            row = self.service._read(run)
            if row is not None:
                self._cache[prefix] = (time.monotonic(), row)
        digest = hash_key(key)
        # compare even when the prefix is unknown, so that timing does not tell which prefixes exist
        stored = row.key_hash if row is not None else "0" * 64
        if not hmac.compare_digest(stored, digest) or row is None:
            log.warning("authentication failed: unknown key", extra={"key_prefix": prefix})
            raise Unauthorized("unknown API key")
        now = self.service.clock()
        if row.revoked_at is not None:
            log.warning("authentication failed: revoked key", extra={"key_prefix": prefix})
            raise Unauthorized("this API key was revoked")
        if row.expires_at is not None and row.expires_at <= now:
            log.warning("authentication failed: expired key", extra={"key_prefix": prefix})
            raise Unauthorized("this API key has expired")
        return Principal(row.id, row.name, row.role, tuple(row.portfolios) if row.portfolios is not None else None)
