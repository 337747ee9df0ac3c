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
    (["halt", "--reason", "x" * 1001], "Length must be between 1 and 1000"),  # (as the API: one rule)
    (["resume", "--force", "--reason", "x" * 1001], "Length must be between 1 and 1000"),
    (["audit", "archive", "--before", "2999-01"], "has not passed"),
    (["replay", "--portfolio", "nope"], "unknown portfolio 'nope'"),
    (["halt", "--reason", "drill", "--portfolio", "nope"], "unknown portfolio 'nope'"),
    (["resume", "--portfolio", "nope"], "unknown portfolio 'nope'"),
    (["resume", "--force", "--portfolio", "default"], "reason"),
    (["instruments", "list", "--portfolio", "nope"], "unknown portfolio 'nope'"),
    (["keys", "revoke", "rpm_00000000"], "unknown key"),
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


# -- a database that does not answer, or holds no RPM; no database at all ------------------------------------------

def one_line(done, starts: str):
    return (done.returncode == 1 and "Traceback" not in done.stderr and done.stderr.startswith(starts)
            and done.stderr.count("\n") == 1)


def test_a_database_away_is_one_line_naming_it_without_its_password(empty_database_url):
    from ..conftest import free_port

    closed = f"postgresql://rpm:s3cret@127.0.0.1:{free_port()}/rpm"
    for args in (["status"], ["halt", "--reason", "drill"], ["keys", "list"], ["serve"]):
        done = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=60, env={**os.environ, "DATABASE_URL": closed, "RPM_PORT": str(_free_port())})
        assert one_line(done, "Error: database unavailable: postgresql+psycopg://rpm:***@127.0.0.1:"), (args, done)
        assert "s3cret" not in done.stderr and "Connection refused" in done.stderr
    # (libpq's other way to give it: a query parameter)
    done = rpm(closed.replace(":s3cret@", "@") + "?password=s3cret&sslmode=disable", "status")
    assert one_line(done, "Error: database unavailable:"), done
    assert "s3cret" not in done.stderr and "password=***" in done.stderr
    unmigrated = rpm(empty_database_url, "status")
    assert one_line(unmigrated, "Error: no RPM schema in postgresql+psycopg://"), unmigrated
    assert "run `rpm db upgrade`" in unmigrated.stderr
    wrong_port = subprocess.run([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, capture_output=True, text=True,
                                timeout=60, env={**os.environ, "DATABASE_URL": closed, "RPM_PORT": "abc"})
    assert one_line(wrong_port, "Error: invalid environment: RPM_PORT='abc'"), wrong_port


def test_serve_on_a_database_that_never_answers_gives_up_after_the_connect_timeout():
    """A server that accepts the connection and then says nothing (a host gone behind a firewall, a proxy whose
    database is down): without a connect timeout, the migrations would wait for it for ever."""
    import socket
    import time

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"postgresql://rpm:s3cret@127.0.0.1:{silent.getsockname()[1]}/rpm"
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, capture_output=True, text=True,
                              timeout=90, env={**os.environ, "DATABASE_URL": url, "RPM_CONNECT_TIMEOUT_S": "1",
                                               "RPM_PORT": str(_free_port())})
    assert one_line(done, "Error: database unavailable: postgresql+psycopg://rpm:***@127.0.0.1:"), done
    assert "timeout" in done.stderr and "s3cret" not in done.stderr
    print(f"\n[cli] a silent database: {done.stderr.strip()} after {time.monotonic() - started:.1f}s")


def _free_port() -> int:
    from ..conftest import free_port

    return free_port()


def test_the_instance_folder_is_the_projects_and_a_command_never_makes_an_empty_database(tmp_path, monkeypatch):
    from app.settings import default_instance_path

    monkeypatch.delenv("RPM_INSTANCE_PATH", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_instance_path() == str(ROOT / "instance")  # wherever `rpm` runs from
    monkeypatch.setenv("RPM_INSTANCE_PATH", "elsewhere")
    assert default_instance_path() == str(tmp_path / "elsewhere")  # (relative: to where it runs, made absolute once)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "RPM_INSTANCE_PATH")}
    for args in (["status"], ["keys", "list"], ["audit", "verify"], ["db", "downgrade", "--revision", "base", "--yes"]):
        done = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60, env={**env, "RPM_INSTANCE_PATH": str(tmp_path / "none")})
        assert one_line(done, "Error: no RPM database here (no embedded PostgreSQL in "), (args, done)
        assert f"{tmp_path / 'none' / 'pgdata'}" in done.stderr and "rpm serve" in done.stderr
    # nothing made: neither the folder named nor one where the command ran
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # and without RPM_INSTANCE_PATH, from another folder: the project's instance folder, not ./instance (asked only
    # where the project has no database of its own: a command would start it)
    if not (ROOT / "instance" / "pgdata").exists():
        done = subprocess.run([sys.executable, "-m", "app.cli", "status"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, env=env)
        assert one_line(done, "Error: no RPM database here"), done
        assert f"{ROOT / 'instance' / 'pgdata'}" in done.stderr, done.stderr
    assert not (tmp_path / "instance").exists()


# -- the output: text and tables for a reader, --json for a program -------------------------------------------------

def cli(database_url, tmp_path, *args):
    from click.testing import CliRunner

    from app.cli import main

    result = CliRunner().invoke(main, list(args), env={"DATABASE_URL": database_url,
                                                       "RPM_INSTANCE_PATH": str(tmp_path / "instance")})
    return result


def table(text: str, header: str) -> list[list[str]]:
    """The rows of the table under the line starting with ``header``, split on runs of two spaces or more."""
    import re

    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start:]:
        if not line.strip() or re.match(r"^[A-Z]+:", line) or re.match(r"^\d+ decision", line):
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def test_halt_and_resume_say_what_was_done_or_answer_json(database_url, tmp_path):
    halted = cli(database_url, tmp_path, "halt", "--reason", "desk drill")
    assert halted.exit_code == 0, halted.output
    assert halted.stdout.startswith("halted portfolio default (reason: desk drill): trading state HALTED; switches "
                                    "tripped: manual_halt\n"), halted.stdout
    assert table(halted.stdout, "SWITCH")[:2] == [["SWITCH", "ACTION", "AT", "REASON"],
                                                   ["manual_halt", "TRIPPED", table(halted.stdout, "SWITCH")[1][2],
                                                    "desk drill"]]
    resumed = cli(database_url, tmp_path, "resume", "--json")
    assert resumed.exit_code == 0, resumed.output
    answer = json.loads(resumed.stdout)
    assert answer["trading_state"] == "ACTIVE" and answer["portfolio_id"] == "default"
    assert [e["action"] for e in answer["events"]][:1] == ["CLEARED"]
    again = cli(database_url, tmp_path, "halt", "--reason", "second", "--json")
    assert json.loads(again.stdout)["trading_state"] == "HALTED"
    text = cli(database_url, tmp_path, "resume").stdout
    assert text.startswith("resumed portfolio default: trading state ACTIVE\n"), text


@pytest.mark.parametrize("args, header, as_json", [
    (["groups"], ["ID", "KIND", "STATE", "LIMITS"], lambda j: j["id"] == "firm" and "default" in j["portfolios"]),
    (["instruments", "list"], ["SYMBOL", "CLASS", "CURRENCY", "MULTIPLIER", "OTHER"],
     lambda j: j["instruments"]["ES"]["multiplier"] == 50),
    (["db", "partitions"], ["PARTITION", "STATE", "ROWS", "ARCHIVED", "FILE"],
     lambda j: any(p["partition"] == "decisions_default" for p in j["partitions"])),
    (["audit", "verify"], ["CHAIN", "STATE", "RECORDS", "HEAD", "HEAD HASH", "PROBLEM"],
     lambda j: j["ok"] and [c["chain"] for c in j["chains"]] == ["default"]),
    (["audit", "checkpoint"], ["CHAIN", "SIZE", "ROOT", "AT"], lambda j: [c["statement"]["chain"] for c in j] == ["default"]),
])
def test_a_command_that_prints_data_prints_a_table_under_headers_or_json(database_url, tmp_path, args, header,
                                                                        as_json):
    text = cli(database_url, tmp_path, *args)
    assert text.exit_code == 0, text.output
    rows = table(text.stdout, header[0])
    assert rows[0] == header and len(rows) > 1, text.stdout
    assert all(len(row) <= len(header) for row in rows), text.stdout
    if args[:2] == ["audit", "checkpoint"]:
        cli(database_url, tmp_path, "halt", "--reason", "a record more")  # (a checkpoint only of a chain that grew)
    machine = cli(database_url, tmp_path, *args, "--json")
    assert machine.exit_code == 0, machine.output
    assert as_json(json.loads(machine.stdout)), machine.stdout


def test_replay_prints_its_differences_and_summaries_as_tables(database_url, tmp_path, client):
    from ..conftest import SEED_INTENT

    for i in range(3):
        assert client.post("/process_trade", json={**SEED_INTENT, "intent_id": f"r-{i}"}).status_code == 200
    text = cli(database_url, tmp_path, "replay", "--preset", "conservative")
    assert text.exit_code == 0, text.output
    summary = table(text.stdout, "PORTFOLIO  DECISIONS")
    assert summary[0] == ["PORTFOLIO", "DECISIONS", "DIFFERING", "APPROVAL RATE", "APPROVED EXPOSURE",
                          "REJECTIONS BY REASON"]
    assert summary[1][:2] == ["default", "3"] and "->" in summary[1][3], text.stdout
    assert "{" not in text.stdout  # (no Python dict)
    differing = int(summary[1][2])
    assert text.stdout.strip().endswith(f"{differing} decision(s) would differ")
    if differing:
        assert len(table(text.stdout, "PORTFOLIO  SEQ")) == differing + 1
    lines = [json.loads(line) for line in cli(database_url, tmp_path, "replay", "--json").stdout.splitlines()]
    assert lines == [{**lines[-1], "type": "summary"}] and lines[0]["differing"] == 0


def test_report_eod_json_is_the_format_json(database_url, tmp_path):
    from datetime import UTC, datetime

    today = datetime.now(UTC).date().isoformat()
    short = cli(database_url, tmp_path, "report", "eod", "--date", today, "--json")
    long = cli(database_url, tmp_path, "report", "eod", "--date", today, "--format", "json")
    assert short.exit_code == 0 and json.loads(short.stdout)["trading_day"] == today
    assert json.loads(short.stdout) == json.loads(long.stdout)


# -- progress: long work says how far it is, on a terminal only ------------------------------------------------------

def test_long_work_reports_its_progress_to_a_callback(app, client, clock, tmp_path):
    from datetime import UTC, datetime

    from app.archive import Archiver
    from app.compliance import replay
    from app.services import Actor
    from app.services import report as eod
    from app.store import partitions

    from ..conftest import SEED_INTENT

    uow, compliance = app.extensions["rpm"].uow, app.extensions["rpm_compliance"]
    uow.ensure_partitions()
    for i in range(4):
        assert client.post("/process_trade", json={**SEED_INTENT, "atr": 0.01, "intent_id": f"p-{i}"}).status_code == 200
    seen: list[tuple[str, int, int]] = []
    report = compliance.verify(progress=lambda *call: seen.append(call))
    assert report["ok"] and seen and seen[-1] == ("verifying", report["count"], report["count"]), seen
    seen.clear()
    list(replay(uow, "default", None, None, None, lambda *call: seen.append(call)))
    assert seen[0] == ("replaying default", 0, 4) and seen[-1] == ("replaying default", 4, 4), seen
    seen.clear()
    eod.eod(uow, datetime.now(UTC).date(), lambda *call: seen.append(call))  # (the portfolio was made today)
    assert seen == [("portfolios", 1, 1)]
    seen.clear()
    clock.advance(days=31)
    [archived] = Archiver(uow, compliance, compliance.anchor).archive(
        partitions.month_of(clock()), tmp_path, Actor("test", "admin"), progress=lambda *call: seen.append(call))
    month = partitions.month_text(archived.month)
    assert seen[-1] == (f"exporting {month}", 4, 4) and seen[0][0] == f"verifying {month}", seen


def test_a_progress_bar_is_drawn_on_a_terminal_only(database_url, tmp_path):
    import pty
    import threading

    env = {**os.environ, "DATABASE_URL": database_url, "RPM_INSTANCE_PATH": str(tmp_path / "instance")}
    ours, theirs = pty.openpty()
    drawn = bytearray()

    def read():
        while True:
            try:
                chunk = os.read(ours, 4096)
            except OSError:
                return
            if not chunk:
                return
            drawn.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        on_terminal = subprocess.run([sys.executable, "-m", "app.cli", "audit", "verify", "--json"], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=theirs, text=True, timeout=90, env=env)
    finally:
        os.close(theirs)
        reader.join(10)
        os.close(ours)
    assert on_terminal.returncode == 0 and json.loads(on_terminal.stdout)["ok"]  # stdout: the JSON alone
    assert b"verifying" in drawn and b"100%" in drawn, drawn
    piped = subprocess.run([sys.executable, "-m", "app.cli", "audit", "verify"], cwd=ROOT, capture_output=True,
                           text=True, timeout=90, env=env)
    assert piped.returncode == 0 and "verifying" not in piped.stderr and "%" not in piped.stderr, piped.stderr


# -- rpm serve: the port first, the banner once it listens ------------------------------------------------------------

def test_serve_takes_the_port_then_prints_one_banner_once_it_listens(database_url, tmp_path):
    import socket

    from sqlalchemy.engine import make_url

    from ..conftest import free_port

    port = free_port()
    with_password = make_url(database_url).set(password="s3cret").render_as_string(hide_password=False)
    env = {**os.environ, "DATABASE_URL": with_password, "RPM_PORT": str(port), "RPM_HOST": "127.0.0.1",
           "RPM_WORKERS": "1", "RPM_THREADS": "2", "RPM_INSTANCE_PATH": str(tmp_path / "instance")}
    with open(tmp_path / "stderr.log", "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=log, text=True, start_new_session=True)
    line = ""
    try:
        before = []
        for line in server.stdout:
            if line.startswith(" listening on"):
                break
            before.append(line)
        # printed only once listening: a connection is taken at once
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        banner = "".join(before) + line
        for line in server.stdout:
            banner += line
            if line.startswith("====="):
                break
    finally:
        import signal

        os.killpg(server.pid, signal.SIGTERM)
        rest = server.communicate(timeout=30)[0]
    assert line.startswith("=====") and "listening on" not in rest and "RPM - RISK" not in rest, rest
    assert f" listening on  http://127.0.0.1:{port}, 1 worker x 2 threads" in banner, banner
    assert "s3cret" not in banner and f" database      {make_url(with_password).render_as_string()}" in banner
    assert f" console       http://127.0.0.1:{port}/console" in banner
    assert f" API docs      http://127.0.0.1:{port}/docs" in banner
    assert "`rpm keys create --role admin --name you` with this DATABASE_URL" in banner  # (no key in this database)
    assert "endpoints" not in banner


def test_serve_on_a_port_in_use_says_so_in_one_line_at_once():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(8)
        port = taken.getsockname()[1]
        # (no database either: the port is taken first, before anything is asked of the database)
        done = subprocess.run([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, capture_output=True, text=True,
                              timeout=60, env={**os.environ, "RPM_PORT": str(port), "RPM_HOST": "127.0.0.1",
                                               "DATABASE_URL": f"postgresql://rpm@127.0.0.1:{_free_port()}/rpm"})
    assert one_line(done, f"Error: port {port} is in use (127.0.0.1:{port})"), done
    assert done.stdout == "" and "gunicorn" not in done.stderr
