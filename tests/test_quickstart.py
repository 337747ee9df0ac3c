"""The zero-setup default: `rpm serve` on an embedded SQLite file, no database to install.

The only test that runs on SQLite: everything else runs on PostgreSQL.
"""

import pytest

from .conftest import SEED_INTENT, http

pytestmark = pytest.mark.slow


def test_rpm_serve_on_the_sqlite_default_approves_the_spec_request(servers, tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    server = servers({"RPM_INSTANCE_PATH": str(tmp_path / "instance")}, workers=1, threads=2)
    status, body = http("POST", server.url + "/process_trade", SEED_INTENT)
    assert status == 200
    assert body["decision"]["status"] == "APPROVED"
    assert body["decision"]["approved_trade"]["position_units"] == 27272.72
    assert (tmp_path / "instance" / "rpm.sqlite3").exists()
    status, health = http("GET", server.url + "/health")
    assert status == 200 and health["database"]["dialect"] == "sqlite"
    assert "sqlite" in (tmp_path / "server-0.log").read_text()  # the banner names the database
