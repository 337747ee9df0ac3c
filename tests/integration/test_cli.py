"""The `rpm` command: an expected refusal is one line on stderr and a non-zero exit, never a traceback."""

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
])
def test_a_refused_command_says_why_in_one_line(database_url, args, message):
    done = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "DATABASE_URL": database_url}, timeout=60)
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("Error: ") and message in done.stderr and done.stderr.count("\n") == 1, done.stderr
