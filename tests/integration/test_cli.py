"""The `rpm` command: an expected refusal is one line on stderr and a non-zero exit, never a traceback."""

import json
import os
import subprocess
import sys

import pytest

from ..conftest import ROOT


@pytest.mark.parametrize("args, message", [
    (["keys", "create", "--role", "trader", "--portfolio", "bad id", "--name", "x"], "invalid portfolio"),
    (["keys", "create", "--role", "trader", "--portfolio", "_system"], "invalid portfolio"),
    (["keys", "create", "--role", "trader", "--name", "two words"], "invalid key name"),
    (["status", "--portfolio", "nope"], "unknown portfolio 'nope'"),
    (["halt", "--reason", " ", "--portfolio", "default"], "reason"),
    (["audit", "archive", "--before", "2999-01"], "has not passed"),
    (["replay", "--portfolio", "nope"], "unknown portfolio 'nope'"),
])
def test_a_refused_command_says_why_in_one_line(database_url, args, message):
    done = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "DATABASE_URL": database_url}, timeout=60)
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("Error: ") and message in done.stderr and done.stderr.count("\n") == 1, done.stderr


def rpm(database_url, *args):
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "DATABASE_URL": database_url}, timeout=120)


def test_partitions_listed_archive_with_nothing_to_archive_and_a_file_that_is_no_archive(database_url, tmp_path):
    from datetime import UTC, datetime

    this_month = datetime.now(UTC).strftime("%Y_%m")
    listed = rpm(database_url, "db", "partitions")
    assert listed.returncode == 0 and f"decisions_{this_month}" in listed.stdout, listed
    done = rpm(database_url, "audit", "archive", "--before", datetime.now(UTC).strftime("%Y-%m"), "--to",
               str(tmp_path))
    assert done.returncode == 0 and done.stdout.startswith("nothing to archive before"), done
    bad = tmp_path / "not-an-archive.jsonl.gz"
    bad.write_bytes(b"plain text")
    refused = rpm(database_url, "audit", "verify-archive", str(bad))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("Error: ") and "not an RPM archive" in refused.stderr, refused.stderr
    wrong = rpm(database_url, "audit", "archive", "--before", "2026-13")
    assert wrong.returncode == 2 and "not a month" in wrong.stderr and "Traceback" not in wrong.stderr


def test_version_short_help_and_a_downgrade_that_asks_first(database_url, sql):
    version = rpm(database_url, "--version")
    assert version.returncode == 0 and version.stdout.startswith("rpm, version ")
    short = rpm(database_url, "-h")
    assert short.returncode == 0 and short.stdout.startswith("Usage: ")
    bare = rpm(database_url, "db", "downgrade")  # no revision: nothing assumed (it was `base`: every table dropped)
    assert bare.returncode == 2 and "--revision" in bare.stderr
    asked = subprocess.run([sys.executable, "-m", "app.cli", "db", "downgrade", "--revision", "base"], cwd=ROOT,
                           capture_output=True, text=True, input="n\n", timeout=60,
                           env={**os.environ, "DATABASE_URL": database_url})
    assert asked.returncode == 1 and "audit trail included" in asked.stderr and "Aborted" in asked.stderr
    assert sql("SELECT count(*) FROM portfolios")[0][0] >= 1  # nothing dropped


def test_a_wrong_setting_is_one_line_naming_it(database_url):
    done = subprocess.run([sys.executable, "-m", "app.cli", "status"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "DATABASE_URL": database_url, "RPM_GROUP_COMMIT": "maybe"})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("Error: invalid environment: RPM_GROUP_COMMIT='maybe'"), done.stderr


def test_keys_are_listed_under_a_header_or_as_json(database_url, keys):
    listed = rpm(database_url, "keys", "list")
    assert listed.returncode == 0, listed
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:4] == ["PREFIX", "ID", "ROLE", "STATE"] and len(rows) == len(keys)
    as_json = json.loads(rpm(database_url, "keys", "list", "--json").stdout)
    assert sorted(k["role"] for k in as_json) == sorted(["trader", "compliance", "admin", "trader"])
    assert all("key" not in k and "hash" not in k for k in as_json)
