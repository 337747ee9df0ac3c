"""The zero-setup default: `rpm serve` on an embedded SQLite file, no database to install.

The only test that runs on SQLite: everything else runs on PostgreSQL.
"""

import os
import subprocess
import sys
import time

import pytest

from .conftest import ROOT, SEED_INTENT, http

pytestmark = pytest.mark.slow


def test_rpm_serve_on_the_sqlite_default_approves_the_spec_request(servers, tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    admin_key = "rpm_b0075ead_" + "x" * 43
    env = {"RPM_INSTANCE_PATH": str(tmp_path / "instance"), "RPM_BOOTSTRAP_ADMIN_KEY": admin_key}
    server = servers(env, workers=1, threads=2)
    # the README's first steps: the bootstrap admin key works, `rpm keys create` makes a trader key
    status, _ = http("POST", server.url + "/halt", {"reason": "smoke"}, key=admin_key)
    assert status == 200
    assert http("POST", server.url + "/resume", {}, key=admin_key)[0] == 200
    created = subprocess.run([sys.executable, "-m", "app.cli", "keys", "create", "--role", "trader",
                              "--name", "signal-engine"], env={**os.environ, **env}, cwd=ROOT,
                             capture_output=True, text=True, check=True)
    trader_key = created.stdout.strip()
    assert trader_key.startswith("rpm_")
    deadline = time.monotonic() + 2  # a key made by another process is seen by every worker within 1 s
    while (status := http("GET", server.url + "/whoami", key=trader_key)[0]) == 401 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 200
    status, body = http("POST", server.url + "/process_trade", SEED_INTENT, key=trader_key)
    assert status == 200
    assert body["decision"]["status"] == "APPROVED"
    assert body["decision"]["approved_trade"]["position_units"] == 27272.72
    assert (tmp_path / "instance" / "rpm.sqlite3").exists()
    status, health = http("GET", server.url + "/health", key=trader_key)
    assert status == 200 and health["database"]["dialect"] == "sqlite"
    assert "sqlite" in (tmp_path / "server-0.log").read_text()  # the banner names the database
