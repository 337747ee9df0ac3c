"""Every environment variable RPM reads, in one place, typed, with defaults, validated when read.

Read with environs (on marshmallow, which RPM's API already uses): every variable is parsed and checked, and the
ones that are wrong are named together in one error (SettingsError), at start. An empty variable is an unset one.
Booleans are marshmallow's: 1/0, true/false, yes/no, on/off (any case).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from environs import Env, EnvValidationError
from marshmallow import ValidationError
from marshmallow.validate import Range

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(ValueError):
    """Environment variables RPM cannot use: each named, with why."""


class _Reader:
    """environs, with an empty variable taken as unset, and every error kept for the end (``seal``)."""

    def __init__(self) -> None:
        self.env = Env(eager=False)

    def __call__(self, kind: str, name: str, default: Any, **checks: Any) -> Any:
        if os.environ.get(name) == "":
            return default
        return getattr(self.env, kind)(name, default, **checks)

    def seal(self) -> None:
        try:
            self.env.seal()
        except EnvValidationError as exc:
            named = "; ".join(f"{name}{'' if name in _SECRET else '=' + repr(os.environ.get(name, ''))}: "
                              f"{' '.join(map(str, why))}" for name, why in sorted(exc.error_messages.items()))
            raise SettingsError(f"invalid environment: {named}") from None


# variables whose value is not repeated in an error (a password in a URL, a key)
_SECRET = frozenset({"DATABASE_URL", "DATABASE_READ_URL", "RPM_BOOTSTRAP_ADMIN_KEY"})


def _database_url(value: str) -> None:
    """A PostgreSQL URL, as psycopg 3 will be given it (several hosts as libpq lists them)."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(psycopg_url(value))
    except Exception:  # noqa: BLE001 (whatever SQLAlchemy makes of it: not a URL it can read)
        url = None
    if url is None or url.drivername != "postgresql+psycopg":
        raise ValidationError("not a PostgreSQL URL: postgresql://user:password@host:port/database")


def _log_level(value: str) -> None:
    if value.upper() not in LOG_LEVELS:
        raise ValidationError(f"one of {', '.join(LOG_LEVELS)}")


_POSITIVE = Range(min=1)
_NOT_NEGATIVE = Range(min=0)


@dataclass(frozen=True)
class Settings:
    # SQLAlchemy URL; unset: an embedded PostgreSQL server with its data in the instance folder (pgdata)
    database_url: str | None = None
    # a streaming replica for the compliance reads (decisions, their export, audit events, reports, replay): the
    # trading path never reads it; unset, those read the primary
    database_read_url: str | None = None
    # compliance reads (on the replica or the primary) at once per process, so that trading always has threads
    # left (a replica that stops answering holds each such read up to the silence bound); 0: half the threads
    history_reads: int = 0
    port: int = 8005
    host: str = "0.0.0.0"
    # gunicorn gthread processes: one per core (each groups its concurrent intents: app/group_commit.py)
    workers: int = max(2, os.cpu_count() or 2)
    # threads per worker: the requests a process can hold at once, so the most group commit can share
    threads: int = 8
    # a decision waiting longer than this for its portfolio's lock answers 503
    lock_timeout_ms: int = 2000
    statement_timeout_ms: int = 5000
    connect_timeout_s: int = 3
    # a database call that waits for the server this long is cut: its request answers 503
    # (a silent database, which no server-side timeout sees). Above statement_timeout_ms and lock_timeout_ms,
    # so that a slow statement or lock wait is ended by the server first, its connection kept.
    db_silence_timeout_ms: int = 6000
    pool_size: int = 5
    bootstrap_admin_key: str | None = None
    default_preset: str = "balanced"
    default_capital: float = 100_000.0
    instance_path: str | None = None
    log_level: str = "INFO"
    # the access lines of successful health probes (/health/live, /health/ready): off, as they come every
    # few seconds from each load balancer and orchestrator (a failed probe's line is always written)
    log_health: bool = False
    # each process re-reads the api_keys table when its copy is older than this: the bound within which a
    # key revoked (or created) by another process is refused (or accepted) by every worker
    auth_cache_seconds: float = 1.0
    # failed authentications a client (remote address) may make per minute, per worker process, before
    # its requests are refused with 429 unread; 0: no limit. A good key never fails, so never counts
    auth_failures_per_minute: int = 30
    # concurrent single intents of one process decided in one transaction (PostgreSQL)
    group_commit: bool = True
    # POST /process_trade answered without Flask's per-request machinery when plainly valid (app/api/fast.py)
    fast_path: bool = True
    # the largest request body read (413 beyond): a batch of 1,000 intents with long intent ids is ~400 KB
    max_body_bytes: int = 2 * 1024 * 1024
    # the Ed25519 private key (PEM, PKCS8) checkpoints are signed with; unset: the instance folder's
    # audit-signing-key.pem, made at first start (its public key beside it, .pub)
    audit_signing_key: str | None = None
    # earlier public keys (PEM files, separated by ":") whose checkpoints verify still accepts: a key rotated
    audit_trusted_keys: tuple[str, ...] = ()
    # where signed checkpoints are appended (a directory; put it on WORM storage); unset: the instance folder's
    # checkpoints/
    audit_sink: str | None = None
    # a checkpoint of a chain once it has grown by this many records, or at all and this many seconds after
    # its last; 0 seconds: none in the background (`rpm audit checkpoint` still makes them)
    checkpoint_every_records: int = 1000
    checkpoint_every_seconds: float = 60.0
    # the risk-event stream (GET /events): streams open at once per process (each holds a worker thread), how often
    # each looks for new events, a comment line when quiet this long, the reconnection delay it tells clients
    events_max_streams: int = 4
    events_poll_s: float = 0.25
    events_heartbeat_s: float = 5.0
    events_retry_ms: int = 2000
    # webhooks: deliver from this process (one process of the deployment delivers at a time: an advisory lock),
    # how often the deliverer looks for new events, a request's timeout, attempts before a delivery is `failed`
    webhooks_deliver: bool = True
    webhook_poll_s: float = 0.5
    webhook_timeout_s: float = 5.0
    webhook_max_attempts: int = 20
    # TEST ONLY: decide without the portfolio lock, to show that the race tests can fail
    unsafe_disable_portfolio_lock: bool = False
    # TEST ONLY: decide without the groups' locks, to show that the group race test can fail
    unsafe_disable_group_lock: bool = False

    @classmethod
    def from_env(cls) -> Settings:
        """The settings of the environment (SettingsError naming every variable that is wrong)."""
        d = cls()  # each default is written once, on its field
        read = _Reader()
        text = os.environ.get
        settings = cls(
            database_url=read("str", "DATABASE_URL", None, validate=_database_url),
            database_read_url=read("str", "DATABASE_READ_URL", None, validate=_database_url),
            history_reads=read("int", "RPM_HISTORY_READS", d.history_reads, validate=_NOT_NEGATIVE),
            port=read("int", "RPM_PORT", d.port, validate=Range(min=1, max=65535)),
            host=text("RPM_HOST") or d.host,
            workers=read("int", "RPM_WORKERS", d.workers, validate=_POSITIVE),
            threads=read("int", "RPM_THREADS", d.threads, validate=_POSITIVE),
            lock_timeout_ms=read("int", "RPM_LOCK_TIMEOUT_MS", d.lock_timeout_ms, validate=_POSITIVE),
            statement_timeout_ms=read("int", "RPM_STATEMENT_TIMEOUT_MS", d.statement_timeout_ms, validate=_POSITIVE),
            connect_timeout_s=read("int", "RPM_CONNECT_TIMEOUT_S", d.connect_timeout_s, validate=_POSITIVE),
            db_silence_timeout_ms=read("int", "RPM_DB_SILENCE_TIMEOUT_MS", d.db_silence_timeout_ms,
                                       validate=_POSITIVE),
            pool_size=read("int", "RPM_POOL_SIZE", d.pool_size, validate=_POSITIVE),
            bootstrap_admin_key=text("RPM_BOOTSTRAP_ADMIN_KEY") or None,
            default_preset=text("RPM_DEFAULT_PRESET") or d.default_preset,
            default_capital=read("float", "RPM_DEFAULT_CAPITAL", d.default_capital,
                                 validate=Range(min=0, min_inclusive=False)),
            instance_path=text("RPM_INSTANCE_PATH") or None,
            # (a wrong value reads as None until ``seal`` names it)
            log_level=(read("str", "RPM_LOG_LEVEL", d.log_level, validate=_log_level) or d.log_level).upper(),
            log_health=read("bool", "RPM_LOG_HEALTH", d.log_health),
            auth_cache_seconds=read("float", "RPM_AUTH_CACHE_SECONDS", d.auth_cache_seconds, validate=_NOT_NEGATIVE),
            auth_failures_per_minute=read("int", "RPM_AUTH_FAILURES_PER_MINUTE", d.auth_failures_per_minute,
                                          validate=_NOT_NEGATIVE),
            group_commit=read("bool", "RPM_GROUP_COMMIT", d.group_commit),
            fast_path=read("bool", "RPM_FAST_PATH", d.fast_path),
            max_body_bytes=read("int", "RPM_MAX_BODY_BYTES", d.max_body_bytes, validate=_POSITIVE),
            audit_signing_key=text("RPM_AUDIT_SIGNING_KEY") or None,
            audit_sink=text("RPM_AUDIT_SINK") or None,
            audit_trusted_keys=tuple(p for p in (text("RPM_AUDIT_TRUSTED_KEYS") or "").split(os.pathsep) if p),
            checkpoint_every_records=read("int", "RPM_CHECKPOINT_EVERY_RECORDS", d.checkpoint_every_records,
                                          validate=_NOT_NEGATIVE),
            checkpoint_every_seconds=read("float", "RPM_CHECKPOINT_EVERY_SECONDS", d.checkpoint_every_seconds,
                                          validate=_NOT_NEGATIVE),
            events_max_streams=read("int", "RPM_EVENTS_MAX_STREAMS", d.events_max_streams, validate=_NOT_NEGATIVE),
            events_poll_s=read("float", "RPM_EVENTS_POLL_S", d.events_poll_s,
                               validate=Range(min=0, min_inclusive=False)),
            events_heartbeat_s=read("float", "RPM_EVENTS_HEARTBEAT_S", d.events_heartbeat_s,
                                    validate=Range(min=0, min_inclusive=False)),
            events_retry_ms=read("int", "RPM_EVENTS_RETRY_MS", d.events_retry_ms, validate=_NOT_NEGATIVE),
            webhooks_deliver=read("bool", "RPM_WEBHOOKS_DELIVER", d.webhooks_deliver),
            webhook_poll_s=read("float", "RPM_WEBHOOK_POLL_S", d.webhook_poll_s,
                                validate=Range(min=0, min_inclusive=False)),
            webhook_timeout_s=read("float", "RPM_WEBHOOK_TIMEOUT_S", d.webhook_timeout_s,
                                   validate=Range(min=0, min_inclusive=False)),
            webhook_max_attempts=read("int", "RPM_WEBHOOK_MAX_ATTEMPTS", d.webhook_max_attempts, validate=_POSITIVE),
            unsafe_disable_portfolio_lock=read("bool", "RPM_TEST_UNSAFE_DISABLE_PORTFOLIO_LOCK", False),
            unsafe_disable_group_lock=read("bool", "RPM_TEST_UNSAFE_DISABLE_GROUP_LOCK", False),
        )
        read.seal()
        return settings

    def resolved_database_url(self, instance_path: str) -> str:
        """``database_url`` as psycopg 3's; unset, the embedded server of the instance folder (started if it is
        not running, and then stopped when this process exits: app/store/embedded.py)."""
        if self.database_url:
            return psycopg_url(self.database_url)
        from .store.embedded import ensure_running

        return ensure_running(embedded_data(instance_path))

    def resolved_read_url(self) -> str | None:
        """``database_read_url`` as psycopg 3's, or None."""
        return psycopg_url(self.database_read_url) if self.database_read_url else None


def psycopg_url(url: str) -> str:
    """A database URL as SQLAlchemy's for psycopg 3 (plain postgresql:// URLs mean it here), several hosts as
    :func:`multi_host` gives them."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return multi_host(url)


def multi_host(url: str) -> str:
    """A URL listing several hosts as libpq writes them (``postgresql://u@h1:5432,h2:5433/db?target_session_attrs=
    read-write``: the first that answers, and is what is asked, is used) in SQLAlchemy's form (one ``host`` query
    parameter per host, ``host:port``), which it hands to libpq as such; any other URL as it is."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    if not sep or "," not in hosts:
        return url
    path, question, query = tail.partition("?")
    extra = "&".join(f"host={h}" for h in hosts.split(",") if h)
    return f"{scheme}://{credentials}{at}/{path}?{extra}" + (f"&{query}" if query else "")


def embedded_data(instance_path: str) -> Path:
    """Where the embedded PostgreSQL keeps its data: the instance folder's ``pgdata``."""
    return Path(instance_path) / "pgdata"


# the project's folder (where alembic.ini and migrations/ are, beside app/)
PROJECT = Path(__file__).resolve().parents[1]


def default_instance_path() -> str:
    """The instance folder (the embedded database, the signing key, the checkpoints): RPM_INSTANCE_PATH, else the
    project's ``instance/``, as Flask's instance folder is; never the folder `rpm` happens to run from (a command
    run elsewhere finds the same database as `rpm serve`)."""
    given = os.environ.get("RPM_INSTANCE_PATH")
    if given:
        return str(Path(given).absolute())
    # (a checkout, where the migrations are; a package installed elsewhere keeps it where it is run, not inside
    # site-packages)
    return str((PROJECT if (PROJECT / "alembic.ini").exists() else Path.cwd()) / "instance")
