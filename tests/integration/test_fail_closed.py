"""A stuck wait for the portfolio lock answers 503 and approves nothing."""

import threading
import time

from sqlalchemy import create_engine, text

from app import create_app
from app.services import Actor
from app.settings import Settings

from ..conftest import SEED_INTENT


def test_a_held_portfolio_lock_times_out_to_503_without_approval(database_url, tmp_path, clock, sql):
    app = create_app(Settings(database_url=database_url, instance_path=str(tmp_path), lock_timeout_ms=300),
                     clock=clock)
    client = app.test_client()
    key, _ = app.extensions["rpm_keys"].create("trader", "t", None, Actor("setup", "admin"))
    auth = {"Authorization": f"Bearer {key}"}
    blocker = create_engine(database_url)
    held = threading.Event()
    release = threading.Event()

    def hold_lock():
        with blocker.begin() as conn:
            conn.execute(text("SELECT id FROM portfolios WHERE id='default' FOR UPDATE"))
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold_lock)
    thread.start()
    try:
        held.wait(5)
        started = time.monotonic()
        r = client.post("/process_trade", json=SEED_INTENT, headers=auth)
        waited = time.monotonic() - started
    finally:
        release.set()
        thread.join()
        blocker.dispose()
    assert r.status_code == 503
    assert r.json["code"] == 503 and "lock" in r.json["message"]
    assert waited < 3
    assert sql("SELECT count(*) FROM decisions")[0][0] == 0
    # and the service carries on once the lock is free
    assert client.post("/process_trade", json=SEED_INTENT, headers=auth).json["decision"]["status"] == "APPROVED"
    app.extensions["rpm"].db.dispose()


def test_a_read_whose_server_went_away_after_its_last_statement_is_not_a_failure(database_url):
    """The key store's read (every request's first) rolled back on a connection the server had dropped: that raised
    past the translation, a 500 during a failover. A read needs no rollback: its result stands, the pool renews."""
    from sqlalchemy.engine import make_url

    from app.store.database import Database

    from ..conftest import TcpProxy

    url = make_url(database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    try:
        db = Database(url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
                      connect_timeout_s=2)
        generation = db._generation
        with db.reader() as session:
            assert session.execute(text("SELECT 1")).scalar() == 1
            proxy.cut()  # the server gone before the rollback
        assert db._generation == generation + 1  # and the pool's other connections renewed
        db.dispose()
    finally:
        proxy.close()
