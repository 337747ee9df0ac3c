"""The database: engine, sessions, and a unit of work that rolls back unless committed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker


class DatabaseUnavailable(Exception):
    """The database cannot be reached or the transaction failed: fail closed (503)."""


DB_ERRORS = (OperationalError, DBAPIError, PoolTimeout)


def make_engine(url: str, *, lock_timeout_ms: int = 2000, statement_timeout_ms: int = 5000,
                connect_timeout_s: int = 3, pool_size: int = 5) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": lock_timeout_ms / 1000})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below be the only one
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # take the write lock at the start: transactions on one file are serialized
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    options = f"-c lock_timeout={lock_timeout_ms} -c statement_timeout={statement_timeout_ms}"
    # no pool_pre_ping (a round trip per transaction): a connection found dead fails its request with
    # a 503, and SQLAlchemy then invalidates the whole pool, so the next request gets a fresh one
    return create_engine(
        url,
        pool_pre_ping=False,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=max(1, lock_timeout_ms // 1000 + 1),
        connect_args={"connect_timeout": connect_timeout_s, "options": options,
                      "application_name": "rpm"},
    )


class Database:
    def __init__(self, url: str, **engine_options: Any):
        self.url = url
        self.engine = make_engine(url, **engine_options)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False, autoflush=False)
        self.is_sqlite = url.startswith("sqlite")
        # decisions go through psycopg's pipeline mode on PostgreSQL (app/store/pipeline.py)
        self.pipelined = self.engine.dialect.name == "postgresql" and self.engine.dialect.driver == "psycopg"
        self.cache_key = self.engine.url.render_as_string(hide_password=True)
        # SQLite serializes writers on the file; one process-wide lock avoids busy waits
        self._local_lock = threading.Lock() if self.is_sqlite else None

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: commits when the block succeeds, rolls back otherwise.

        Any database error becomes DatabaseUnavailable, so callers fail closed.
        """
        if self._local_lock is not None:
            self._local_lock.acquire()
        session = self.sessions()
        try:
            try:
                with session.begin():
                    yield session
            except DB_ERRORS as exc:
                raise DatabaseUnavailable(_describe(exc)) from exc
        finally:
            session.close()
            if self._local_lock is not None:
                self._local_lock.release()

    @contextmanager
    def reader(self) -> Iterator[Session]:
        """A read-only session (rolled back at the end)."""
        session = self.sessions()
        try:
            try:
                yield session
            except DB_ERRORS as exc:
                raise DatabaseUnavailable(_describe(exc)) from exc
        finally:
            session.rollback()
            session.close()

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """PostgreSQL: the psycopg connection itself, from the pool, for a transaction run by hand.

        Rolled back unless the caller committed; a connection the server dropped is discarded.
        Any database error becomes DatabaseUnavailable.
        """
        import psycopg

        try:
            pooled = self.engine.raw_connection()
        except (*DB_ERRORS, psycopg.Error) as exc:  # the pool's raw connect raises the driver's own
            raise DatabaseUnavailable(_describe(exc)) from exc
        conn = pooled.driver_connection
        try:
            try:
                yield conn
            except psycopg.Error as exc:
                raise DatabaseUnavailable(_describe(exc)) from exc
            finally:
                if conn.broken or conn.closed:
                    pooled.invalidate()
                else:
                    try:
                        conn.rollback()
                    except psycopg.Error:
                        pooled.invalidate()
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


def _describe(exc: Exception) -> str:
    orig = getattr(exc, "orig", None) or exc.__cause__
    name = type(orig or exc).__name__
    if "lock timeout" in str(exc) or "LockNotAvailable" in name:
        return "timed out waiting for the portfolio lock"
    if "statement timeout" in str(exc) or "QueryCanceled" in name:
        return "database statement timed out"
    return f"database unavailable ({name})"
