"""Fixtures shared by every test: a movable clock, HTTP helpers, real servers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs the same examples every time (a red build must be reproducible); locally they vary
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday, mid-day UTC

SEED_INTENT = dict(symbol="EURUSD", direction=1, confidence_score=0.75, regime="TRENDING",
                   atr=0.0010, vol_percentile=0.50, current_price=1.1000)


class Clock:
    """A clock the tests move by hand."""

    def __init__(self, start: datetime = T0):
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs) -> datetime:
        self.now += timedelta(**kwargs)
        return self.now


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body=None, headers=None, timeout: float = 10.0, key: str | None = None):
    """(status, json) of a real HTTP request, authenticated with ``key`` when given."""
    data = None if body is None else json.dumps(body).encode()
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", **auth, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


class Server:
    """A real `rpm serve` process (gunicorn), in its own process group."""

    def __init__(self, env: dict[str, str], workers: int = 2, threads: int = 4, log: Path | None = None,
                 port: int | None = None, host: str = "127.0.0.1", prefix: tuple[str, ...] = ()):
        self.port = port or free_port()
        self.url = f"http://{host}:{self.port}"
        self.env = {**os.environ, **env, "RPM_PORT": str(self.port), "RPM_HOST": host,
                    "RPM_WORKERS": str(workers), "RPM_THREADS": str(threads)}
        self.prefix = prefix  # what runs it (`ip netns exec NAME`: on a host of its own)
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.banner = ""

    def start(self, timeout: float = 30.0) -> Server:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen([*self.prefix, sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # the child has its own copy
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rpm serve exited with {self.proc.returncode}")
            try:
                status, _ = http("GET", self.url + "/health/ready", timeout=1)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError("rpm serve did not become ready")

    def kill9(self) -> None:
        """kill -9 the whole server: master and workers, no shutdown of any kind."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def servers(tmp_path):
    started: list[Server] = []

    def start(env: dict[str, str], **kwargs) -> Server:
        env = {"RPM_INSTANCE_PATH": str(tmp_path / "instance"), **env}  # (its signing key and checkpoints)
        server = Server(env, log=tmp_path / f"server-{len(started)}.log", **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


class TcpProxy:
    """A TCP forwarder to the database that a test can cut and restore: a controllable outage."""

    def __init__(self, target_host: str, target_port: int, bind: str = "127.0.0.1"):
        import threading

        self.target = (target_host, target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((bind, 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.up = True
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        self.closed = False
        self.forwarding = threading.Event()  # cleared: stalled (see stall())
        self.forwarding.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self.forwarding.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self.forwarding.wait()  # nor is an end of stream passed on while stalled
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def cut(self) -> None:
        """The database is unreachable: every open connection dies, new ones are refused."""
        self.up = False
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass

    def restore(self) -> None:
        self.up = True

    def stall(self) -> None:
        """The database is silent: connections stay open and new ones are accepted, but nothing is
        forwarded either way (a stopped backend, a network that drops everything): no error, no answer."""
        self.forwarding.clear()

    def resume(self) -> None:
        """Forwarding goes on, what was held first."""
        self.forwarding.set()

    def close(self) -> None:
        self.closed = True
        self.resume()
        self.cut()
        self.listener.close()
