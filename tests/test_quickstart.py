"""The zero-setup default: `rpm serve` on an embedded PostgreSQL, nothing to install."""

import os
import subprocess
import sys
import time

import pytest

from app.store.embedded import EmbeddedPostgres

from .conftest import ROOT, SEED_INTENT, http

pytestmark = pytest.mark.slow


def test_rpm_serve_on_the_embedded_default_approves_the_spec_request(servers, tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    admin_key = "rpm_b0075ead_" + "x" * 43
    instance = tmp_path / "instance"
    env = {"RPM_INSTANCE_PATH": str(instance), "RPM_BOOTSTRAP_ADMIN_KEY": admin_key}
    server = servers(env, workers=2, threads=2)
    embedded = EmbeddedPostgres(instance / "pgdata")
    assert embedded.running()
    # the README's first steps: the bootstrap admin key works, `rpm keys create` makes a trader key (a command
    # run meanwhile shares the running server, and leaves it running)
    status, _ = http("POST", server.url + "/halt", {"reason": "smoke"}, key=admin_key)
    assert status == 200
    assert http("POST", server.url + "/resume", {}, key=admin_key)[0] == 200
    created = subprocess.run([sys.executable, "-m", "app.cli", "keys", "create", "--role", "trader",
                              "--name", "signal-engine"], env={**os.environ, **env}, cwd=ROOT,
                             capture_output=True, text=True, check=True)
    trader_key = created.stdout.strip()
    assert trader_key.startswith("rpm_") and embedded.running()
    # a key made by another process is seen by every worker within RPM_AUTH_CACHE_SECONDS (1 s): after that
    # bound, whichever worker answers knows it
    time.sleep(1.2)
    assert http("GET", server.url + "/whoami", key=trader_key)[0] == 200
    status, body = http("POST", server.url + "/process_trade", SEED_INTENT, key=trader_key)
    assert status == 200
    assert body["decision"]["status"] == "APPROVED"
    assert body["decision"]["approved_trade"]["position_units"] == 27272.72
    status, health = http("GET", server.url + "/health", key=trader_key)
    assert status == 200 and health["database"]["dialect"] == "postgresql"
    assert f"embedded PostgreSQL, data in {instance / 'pgdata'}" in (tmp_path / "server-0.log").read_text()
    # stopping the instance stops the server it started; its data stays for the next start
    server.stop()
    assert not embedded.running() and (instance / "pgdata" / "PG_VERSION").exists()


def test_an_rpm_command_alone_starts_the_embedded_server_and_stops_it(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    env = {**os.environ, "RPM_INSTANCE_PATH": str(tmp_path / "instance")}
    upgraded = subprocess.run([sys.executable, "-m", "app.cli", "db", "upgrade"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "database at head" in upgraded.stdout
    status = subprocess.run([sys.executable, "-m", "app.cli", "status"], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert status.returncode == 0 and "portfolio default: ACTIVE" in status.stdout, status.stderr
    assert not EmbeddedPostgres(tmp_path / "instance" / "pgdata").running()


def asks_for_its_password(server: EmbeddedPostgres) -> None:
    """The running server refuses its superuser without the password, and admits it with the URL RPM is given."""
    import psycopg

    port = server._postmaster()[3]
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=5).close()
    with psycopg.connect(server.url().replace("+psycopg", ""), connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


def test_the_embedded_server_asks_its_superuser_for_a_password_kept_for_its_owner_alone(tmp_path):
    """Loopback keeps other machines out, not other accounts of this one: without a password any local user could
    connect as the superuser. A folder made before passwords were asked for is given one at its next start."""
    import stat

    server = EmbeddedPostgres(tmp_path / "pgdata")
    server.start()
    try:
        asks_for_its_password(server)
        assert stat.S_IMODE(server.password_file.stat().st_mode) == 0o600
        assert server.password_file.read_text().strip() not in (tmp_path / "pgdata" / "pg_hba.conf").read_text()
    finally:
        server.stop()

    # a folder of trust authentication (as made before): secured at its next start
    class Trusting(EmbeddedPostgres):
        SECURED = False

    old = Trusting(tmp_path / "old")
    old.start()
    old.stop()
    again = EmbeddedPostgres(tmp_path / "old")
    assert not again.password_file.exists()
    again.start()
    try:
        asks_for_its_password(again)
    finally:
        again.stop()
