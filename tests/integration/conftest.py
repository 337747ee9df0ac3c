"""Real PostgreSQL: a migrated template database per test session, a fresh copy per test.

TEST_DATABASE_URL names the server to use (any database on it); without it, the local cluster
(127.0.0.1:5432) if one answers, else an embedded server started for the session (app/store/embedded.py),
so that the suite runs on a machine with no PostgreSQL installed.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app import create_app
from app.settings import Settings
from app.store.migrate import upgrade

LOCAL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
_counter = itertools.count()


def _server() -> str:
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        return given
    with socket.socket() as probe:
        probe.settimeout(1)
        if probe.connect_ex(("127.0.0.1", 5432)) == 0:
            return LOCAL
    from app.store.embedded import ensure_running

    # stopped when the session's process exits (atexit runs last-in first-out: stopped, then removed)
    folder = Path(tempfile.mkdtemp(prefix="rpm-test-pg-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return ensure_running(folder / "pgdata")


BASE_URL = _server()


def url_for(name: str) -> str:
    url = make_url(BASE_URL)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def admin_engine():
    engine = create_engine(url_for(make_url(BASE_URL).database or "postgres"), isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def template_db(admin_engine):
    name = f"rpm_test_tpl_{os.getpid()}"
    with admin_engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    upgrade(url_for(name))
    app = create_app(Settings(database_url=url_for(name)))
    app.extensions["rpm"].uow.ensure_default()  # as `rpm db upgrade` does
    app.extensions["rpm"].db.dispose()
    yield name
    with admin_engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def database_url(admin_engine, template_db):
    name = f"rpm_test_{os.getpid()}_{next(_counter)}"
    with admin_engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    yield url_for(name)
    with admin_engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def empty_database_url(admin_engine):
    name = f"rpm_test_{os.getpid()}_empty_{next(_counter)}"
    with admin_engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield url_for(name)
    with admin_engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def settings(database_url, tmp_path):
    return Settings(database_url=database_url, instance_path=str(tmp_path / "instance"), lock_timeout_ms=2000)


@pytest.fixture
def app(settings, clock):
    app = create_app(settings, clock=clock)
    app.config["TESTING"] = True
    yield app
    app.extensions["rpm"].db.dispose()


@pytest.fixture
def keys(app):
    """One key per role, plus a trader limited to another portfolio: {name: key in clear}."""
    from app.services import Actor

    store = app.extensions["rpm_keys"]
    setup = Actor("test-setup", "admin")
    made = {role: store.create(role, f"test-{role}", None, setup)[0] for role in ("trader", "compliance", "admin")}
    made["trader_elsewhere"] = store.create("trader", "test-trader-elsewhere", ["elsewhere"], setup)[0]
    return made


class AutoRoleClient(FlaskClient):
    """A test client that authenticates each request with a key of a role the route admits.

    Tests about what a route does use it; the access-control tests use explicit headers.
    """

    rpm_keys: dict[str, str] = {}

    def open(self, *args, **kwargs):
        request = args[0] if args and not isinstance(args[0], str) else None
        if request is None:
            path = args[0] if args else kwargs.get("path", "/")
            method = kwargs.get("method", "GET")
            headers = dict(kwargs.get("headers") or {})
            if "Authorization" not in headers:
                key = self._key_for(path.split("?")[0], method)
                if key:
                    headers["Authorization"] = f"Bearer {key}"
                    kwargs["headers"] = headers
        return super().open(*args, **kwargs)

    def _key_for(self, path: str, method: str) -> str | None:
        from werkzeug.exceptions import HTTPException

        from app.api.auth import declaration

        try:
            endpoint, _ = self.application.url_map.bind("localhost").match(path, method)
        except HTTPException:
            return None
        _public, admitted = declaration(self.application, endpoint, method)
        for role in ("trader", "admin", "compliance"):
            if admitted and role in admitted:
                return self.rpm_keys[role]
        return None


@pytest.fixture
def client(app, keys):
    app.test_client_class = AutoRoleClient
    client = app.test_client()
    client.rpm_keys = keys
    return client


@pytest.fixture
def raw_client(app):
    """A test client that sends exactly the headers a test gives it."""
    return app.test_client()


@pytest.fixture
def sql(database_url):
    """Run SQL against the test database directly (to check what was written)."""
    engine = create_engine(database_url)

    def run(statement: str, **params):
        with engine.begin() as conn:
            return conn.execute(text(statement), params).all()

    yield run
    engine.dispose()


@contextmanager
def throwaway_database(admin_engine, template_db, prefix: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A database of its own (from the template), dropped after: its URL, and a trader's and an admin's keys (for
    the races run again with a lock disabled, each on a fresh database)."""
    from app.services import Actor

    name = f"{prefix}_{time.monotonic_ns()}"
    with admin_engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    try:
        app = create_app(Settings(database_url=url_for(name)))
        store = app.extensions["rpm_keys"]
        keys = {r: store.create(r, f"t-{r}", None, Actor("t", "admin"))[0] for r in ("trader", "admin")}
        app.extensions["rpm"].db.dispose()
        yield url_for(name), keys
    finally:
        with admin_engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
