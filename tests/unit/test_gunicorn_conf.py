"""The gunicorn settings and hooks `rpm serve` installs, and its worker's error answers."""

import gc
import json
import os
import signal
import socket
import tempfile
from types import SimpleNamespace

import pytest
from gunicorn.app.base import Application

from app import gunicorn_conf
from app.gunicorn_conf import CREATED_PROMETHEUS_DIR, PROMETHEUS_DIR
from app.gunicorn_worker import JsonErrorThreadWorker, write_json_error


@pytest.mark.parametrize("deliver", [True, False])
def test_a_worker_starts_its_threads_ends_streams_on_stop_and_freezes_what_it_loaded(deliver):
    from app.api.events import CLOSING
    from app.settings import Settings

    before = gc.get_freeze_count()
    started = []
    anchor = SimpleNamespace(start=lambda: started.append("checkpoints"))
    deliverer = SimpleNamespace(start=lambda: started.append("webhooks"))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)}
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append("gunicorn's own handler"))
    worker = SimpleNamespace(wsgi=SimpleNamespace(extensions={"rpm_anchor": anchor, "rpm_deliverer": deliverer},
                                                  config={"RPM_SETTINGS": Settings(webhooks_deliver=deliver)}))
    try:
        gunicorn_conf.post_worker_init(worker)
        # the checkpointer in every worker; the deliverer unless told not to (one delivers at a time anyway)
        assert started == (["checkpoints", "webhooks"] if deliver else ["checkpoints"])
        assert gc.get_freeze_count() > before
        assert gc.get_count()[2] == 0  # collected first: the garbage of the start is not kept frozen
        assert not CLOSING.is_set()
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        assert CLOSING.is_set() and stopped == ["gunicorn's own handler"]
    finally:
        gc.unfreeze()
        CLOSING.clear()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


class _ConfigOnly(Application):
    """gunicorn reading `--config python:app.gunicorn_conf`, and nothing else (no argv)."""

    def load_config(self):
        self.load_config_from_module_name_or_filename("python:app.gunicorn_conf")


def test_gunicorn_reads_the_json_error_worker_and_no_control_socket_from_the_settings():
    cfg = _ConfigOnly().cfg
    assert cfg.worker_class is JsonErrorThreadWorker
    assert cfg.control_socket_disable is True


def test_the_worker_writes_gunicorns_status_and_message_in_the_json_error_shape():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        write_json_error(ours, 414, "URI Too Long", "Request Line is too large (5014 > 4094)")
        write_json_error(ours, 500, "Internal Server Error", "")
        ours.shutdown(socket.SHUT_WR)
        replies = theirs.makefile("rb").read().split(b"HTTP/1.1 ")[1:]
    answers = []
    for reply in replies:
        head, body = reply.split(b"\r\n\r\n")
        status_line, *headers = head.decode().split("\r\n")
        assert "Content-Type: application/json" in headers
        assert f"Content-Length: {len(body)}" in headers
        answers.append((status_line, json.loads(body)))
    assert answers == [
        ("414 URI Too Long", {"code": 414, "status": "Request-URI Too Long",
                              "message": "Request Line is too large (5014 > 4094)", "errors": {}}),
        ("500 Internal Server Error", {"code": 500, "status": "Internal Server Error",
                                       "message": "Internal Server Error", "errors": {}}),
    ]


def master(reexec_pid=0, master_pid=0):
    """The arbiter as the hooks see it: a USR2 re-exec sets `reexec_pid` in the old master and
    `master_pid` in the new one until it is promoted."""
    return SimpleNamespace(reexec_pid=reexec_pid, master_pid=master_pid)


@pytest.fixture
def environ(monkeypatch, tmp_path):
    """The hooks' environment, with no counters' folder, and their folders made under tmp_path.

    A copy: the test process's own environment must never name a folder the hooks remove, or every
    app created afterwards in the session would write its counters into a folder that is gone."""
    env = {k: v for k, v in os.environ.items() if k not in (PROMETHEUS_DIR, CREATED_PROMETHEUS_DIR)}
    monkeypatch.setattr(os, "environ", env)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return env


def test_an_instance_makes_a_fresh_counters_folder_and_removes_it_when_it_stops(environ, tmp_path):
    gunicorn_conf.when_ready(master())
    folder = environ[PROMETHEUS_DIR]
    assert environ[CREATED_PROMETHEUS_DIR] == folder
    assert os.path.dirname(folder) == str(tmp_path) and os.path.isdir(folder)
    gunicorn_conf.on_exit(master())
    assert not os.path.exists(folder)


def test_a_given_counters_folder_is_kept_even_with_a_mark_inherited_from_another_instance(environ, tmp_path):
    given = tmp_path / "given"
    given.mkdir()
    environ[PROMETHEUS_DIR] = environ[CREATED_PROMETHEUS_DIR] = str(given)
    gunicorn_conf.when_ready(master())
    assert CREATED_PROMETHEUS_DIR not in environ
    gunicorn_conf.on_exit(master())
    assert given.is_dir()


def test_across_a_usr2_re_exec_the_folder_is_removed_by_the_master_that_stays(environ):
    gunicorn_conf.when_ready(master())
    folder = environ[PROMETHEUS_DIR]
    gunicorn_conf.when_ready(master(master_pid=41))  # the new master, same environment: same folder, same mark
    assert (environ[PROMETHEUS_DIR], environ[CREATED_PROMETHEUS_DIR]) == (folder, folder)
    gunicorn_conf.on_exit(master(master_pid=41))  # the new one stopped before its promotion (a rollback)
    gunicorn_conf.on_exit(master(reexec_pid=42))  # the old one stopped while the new one runs
    assert os.path.isdir(folder)
    gunicorn_conf.on_exit(master())  # the one left, alone
    assert not os.path.exists(folder)
