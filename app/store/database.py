"""The database: engine, sessions, and a unit of work that rolls back unless committed."""

from __future__ import annotations

import contextvars
import logging
import math
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from ..settings import Settings

log = logging.getLogger("rpm.database")


class DatabaseUnavailable(Exception):
    """The database cannot be reached or the transaction failed: fail closed (503)."""


class DataRejected(Exception):
    """The database refused a value of the request (SQLSTATE class 22: a number beyond NUMERIC(28, 10),
    text that is not a number...): the request is at fault, not the database (422). Nothing was written."""


DB_ERRORS = (OperationalError, DBAPIError, PoolTimeout)


class _Watchdog:
    """Cuts the socket of a database call that has waited for the server for too long.

    psycopg 3 has no client-side query timeout, and the server's statement_timeout cannot fire for a
    query the server never got (a proxy or network that stops forwarding, a stopped backend whose
    kernel still acks, so that keepalives and tcp_user_timeout see nothing wrong): such a call would
    wait for ever, with its request and maybe a portfolio's requests behind it. Shutting the socket down
    makes the blocked call fail at once with an OperationalError, which every path already turns into
    a 503; the connection is then broken, and discarded.

    What is watched is each call (`_WatchedConnection.wait`), not the time a connection is checked
    out: a long export streams thousands of rows over one connection, a batch per call, and between
    two calls it waits for its client, as slow as that may be. Its deadline starts again with each batch,
    so it is never cut while it makes progress, and is cut when a batch does not come.

    One per process. A forked child has none of the parent's threads: `_reset` runs in it, and its
    first call starts its own thread (gunicorn forks its workers before they open any connection, but
    a parent that has used the database must not leave the child a dead thread or a held lock).
    """

    TICK = 0.05  # seconds: how late after its deadline a call may be cut

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[int, tuple[float, _WatchedConnection]] = {}
        self._thread: threading.Thread | None = None

    def watch(self, conn: _WatchedConnection, bound_s: float) -> None:
        with self._lock:
            self._calls[id(conn)] = (time.monotonic() + bound_s, conn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rpm-db-watchdog", daemon=True)
                self._thread.start()

    def unwatch(self, conn: _WatchedConnection) -> None:
        with self._lock:
            self._calls.pop(id(conn), None)

    def _run(self) -> None:
        # a daemon for the life of the process: it holds no resource, and a wake-up per tick costs nothing
        while True:
            time.sleep(self.TICK)
            now = time.monotonic()
            # under the lock that `unwatch` takes: a call that has unregistered is never cut (its connection may
            # be back in the pool, another request's by now); one cut just after its answer came loses only
            # its connection, which the next checkout finds dead
            with self._lock:
                late = [conn for deadline, conn in self._calls.values() if deadline <= now]
                for conn in late:
                    del self._calls[id(conn)]
                    _shut_down(conn)
            for conn in late:
                log.warning("no answer from the database for %.1f s: connection cut, the call fails", conn.silence_s)


def _shut_down(conn: psycopg.Connection) -> None:
    """Both directions of the connection's socket shut down: the call blocked on it sees the end of the
    stream at once. On a duplicate of the descriptor, which is closed again: the connection's own stays
    valid (psycopg closes it), so no other file can be given its number meanwhile."""
    # already closed, or disconnected by the other end: nothing to cut
    with suppress(psycopg.Error, OSError), socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def _readable(conn: psycopg.Connection) -> bool:
    """Whether an idle connection has something to read: the server has nothing to say to a connection that
    asked nothing, unless it closed it (a restart, a terminated backend, a cut network that sent a reset).
    A poll, no round trip."""
    poller = select.poll()  # not select.select: a busy process may have descriptors above 1024
    poller.register(conn.pgconn.socket, select.POLLIN)
    return bool(poller.poll(0))


class _WatchedConnection(psycopg.Connection):
    """A psycopg connection whose every blocking call (query, fetch, pipeline sync, commit, rollback)
    goes through `Connection.wait`, here under the watchdog."""

    silence_s: float = math.inf  # set right after connecting (`Database`)
    generation = 0  # the pool generation the connection was made in (`Database.renew_pool`)

    def wait(self, *args: Any, **kwargs: Any) -> Any:
        _WATCHDOG.watch(self, self.silence_s)
        try:
            return super().wait(*args, **kwargs)
        finally:
            _WATCHDOG.unwatch(self)


_WATCHDOG = _Watchdog()


IDLE_IN_TRANSACTION_FACTOR = 5  # an open transaction idle that many silence bounds is ended by the server
# in the transaction of a streamed export: idle between batches for as long as its client reads slowly
NO_IDLE_LIMIT = "SET LOCAL idle_in_transaction_session_timeout = 0"


def make_engine(url: str, *, lock_timeout_ms: int = 2000, statement_timeout_ms: int = 5000,
                connect_timeout_s: int = 3, pool_size: int = 5, silence_timeout_ms: int = 6000,
                pool_recycle: int = -1, application_name: str = "rpm") -> Engine:
    silence_s = silence_timeout_ms / 1000
    # the server's side of a connection the watchdog cut, or lost to a one-way partition: a transaction left
    # idle gives its locks (a portfolio's row) back, and a connection gone quiet is probed, within seconds
    # rather than hours (streamed exports, idle between batches by design, lift the first for themselves)
    options = (f"-c lock_timeout={lock_timeout_ms} -c statement_timeout={statement_timeout_ms} "
               f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_FACTOR * silence_timeout_ms} "
               f"-c tcp_keepalives_idle={max(1, math.ceil(silence_s))} "
               f"-c tcp_keepalives_interval={max(1, math.ceil(silence_s / 3))} -c tcp_keepalives_count=3")
    # no pool_pre_ping (a round trip per checkout, on every decision): a checked-out connection is
    # instead tested without one (`Database._checkout`), and a connection lost in use renews the pool
    return create_engine(
        url,
        pool_pre_ping=False,
        pool_recycle=pool_recycle,
        pool_size=pool_size,
        max_overflow=pool_size,
        # waiting for a pooled connection is part of the request's bound too
        pool_timeout=min(max(1, lock_timeout_ms // 1000 + 1), silence_s),
        connect_args={
            # psycopg applies it to the whole attempt (TCP, TLS, authentication), 2 s at least
            "connect_timeout": connect_timeout_s,
            "options": options,
            # (`rpm` for the primary's sessions, `rpm-history` for compliance reads: pg_stat_activity tells them apart)
            "application_name": application_name,
            # a peer gone without a word (a partition, a host down): the kernel gives the connection up
            # once data sent stays unacknowledged for the bound, or an idle one after about two bounds of
            # unanswered probes, so that the checkout finds it dead (the watchdog covers the calls in flight)
            "keepalives": 1,
            "keepalives_idle": max(1, math.ceil(silence_s)),
            "keepalives_interval": max(1, math.ceil(silence_s / 3)),
            "keepalives_count": 3,
            "tcp_user_timeout": silence_timeout_ms,
        },
    )


# Where a compliance read was served from, for the answer's headers (app/api/__init__.py): whether the server is
# a standby, and how far its replay is behind the primary in seconds: 0 when it streams from the primary and has
# replayed all it received; else the age of the last transaction it replayed (a standby cut off from its primary
# has replayed all it received, and is as old as that); NULL, unknown, when it has replayed none. Set per request.
LAG_SQL = ("SELECT pg_is_in_recovery(), CASE WHEN NOT pg_is_in_recovery() THEN 0 "
           "WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver "
           "WHERE status = 'streaming') THEN 0 ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END")
READ_FROM: contextvars.ContextVar[tuple[bool, float | None] | None] = contextvars.ContextVar("rpm_read_from",
                                                                                            default=None)


def note_read(standby: bool, lag_seconds: Any) -> None:
    READ_FROM.set((bool(standby), None if lag_seconds is None else max(0.0, float(lag_seconds))))


class Database:
    def __init__(self, url: str, *, silence_timeout_ms: int = Settings.db_silence_timeout_ms, **engine_options: Any):
        self.url = url
        self.silence_timeout_ms = silence_timeout_ms
        self.engine = make_engine(url, silence_timeout_ms=self.silence_timeout_ms, **engine_options)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False, autoflush=False)
        self.cache_key = self.engine.url.render_as_string(hide_password=True)
        self._generation = 0
        event.listen(self.engine, "do_connect", self._connect)
        event.listen(self.engine, "checkout", self._checkout)

    def _connect(self, _dialect: Any, _record: Any, cargs: tuple[Any, ...], cparams: dict[str, Any]) -> Any:
        conn = _WatchedConnection.connect(*cargs, **cparams)
        conn.silence_s = self.silence_timeout_ms / 1000
        conn.generation = self._generation
        return conn

    def _checkout(self, conn: _WatchedConnection, _record: Any, _proxy: Any) -> None:
        """A pooled connection made before the pool was renewed, or that the server has closed, is
        replaced by a new one before it is handed out (the pool retries on DisconnectionError): the first
        request after an outage does not meet a dead connection."""
        if conn.generation != self._generation or conn.closed or conn.broken or _readable(conn):
            raise DisconnectionError("pooled connection closed by the server, or older than the pool")

    def renew_pool(self) -> None:
        """Every pooled connection is replaced at its next checkout: one was lost in use, so the others,
        idle on the same server or network, probably are too (each would otherwise fail a request first).
        Not `Engine.dispose()`: connections checked out meanwhile would go back to the old pool and be
        dropped open; here they are all replaced too, only lazily, and closed by the pool. (SQLAlchemy
        does as much by itself for a connection it sees lost through the ORM.)"""
        self._generation += 1

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: commits when the block succeeds, rolls back otherwise.

        A value the database refuses becomes DataRejected; any other database error DatabaseUnavailable,
        so callers fail closed.
        """
        session = self.sessions()
        try:
            with _translated(), session.begin():
                yield session
        finally:
            session.close()

    @contextmanager
    def reader(self) -> Iterator[Session]:
        """A read-only session (rolled back at the end)."""
        session = self.sessions()
        try:
            with _translated():
                yield session
        finally:
            # a read needs no rollback to be right: one that fails (the server gone since the last statement) means
            # the connection is dead, and likely its pool's others (as `connection` does) — not the request's
            # failure (it was a 500)
            try:
                session.rollback()
            except DB_ERRORS:
                self.renew_pool()
            with suppress(*DB_ERRORS):
                session.close()

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """PostgreSQL: the psycopg connection itself, from the pool, for a transaction run by hand.

        Rolled back unless the caller committed; a connection the server dropped is discarded, and the
        pool renewed. A value the database refuses becomes DataRejected; any other database error
        DatabaseUnavailable.
        """
        try:
            pooled = self.engine.raw_connection()
        except (*DB_ERRORS, psycopg.Error) as exc:  # the pool's raw connect raises the driver's own
            raise DatabaseUnavailable(_describe(exc)) from exc
        conn = pooled.driver_connection
        try:
            try:
                yield conn
            except psycopg.DataError as exc:
                raise DataRejected(_rejected(exc)) from exc
            except psycopg.Error as exc:
                raise DatabaseUnavailable(_describe(exc)) from exc
            finally:
                if conn.broken or conn.closed:
                    pooled.invalidate()
                    self.renew_pool()
                else:
                    try:
                        conn.rollback()
                    except psycopg.Error:
                        pooled.invalidate()
                        self.renew_pool()
        finally:
            pooled.close()

    def ping(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except DB_ERRORS as exc:
            raise DatabaseUnavailable(_describe(exc)) from exc

    def dispose(self) -> None:
        self.engine.dispose()


@contextmanager
def _translated() -> Iterator[None]:
    """The ORM's database errors as RPM's: a value refused (DataRejected), anything else (DatabaseUnavailable)."""
    try:
        yield
    except DataError as exc:
        raise DataRejected(_rejected(exc.orig)) from exc
    except DB_ERRORS as exc:
        raise DatabaseUnavailable(_describe(exc)) from exc


def _rejected(orig: BaseException | None) -> str:
    diag = getattr(orig, "diag", None)
    what = (diag.message_primary if diag is not None else None) or str(orig).splitlines()[0]
    return f"the database refused a value of this request ({type(orig).__name__}: {what})"


def _describe(exc: Exception) -> str:
    orig = getattr(exc, "orig", None) or exc.__cause__
    name = type(orig or exc).__name__
    if "lock timeout" in str(exc) or "LockNotAvailable" in name:
        return "timed out waiting for the portfolio lock"
    if "statement timeout" in str(exc) or "QueryCanceled" in name:
        return "database statement timed out"
    return f"database unavailable ({name})"
