"""`rpm serve` where gunicorn acts on its own: the requests it refuses before the app sees them, its
control socket, the folder of the workers' shared counters."""

from __future__ import annotations

import json
import os
import socket
from http import HTTPStatus

import pytest

from ..conftest import http


def raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of bytes sent as they are: what no HTTP client would send."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, body


@pytest.mark.slow
def test_requests_gunicorn_refuses_are_answered_in_the_json_error_shape(servers, database_url):
    server = servers({"DATABASE_URL": database_url}, workers=1, threads=2)
    refused = {
        "request line too long": (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: rpm\r\n\r\n", 414),
        "malformed request line": (b"NOT A REQUEST LINE\r\n\r\n", 400),
        "header too long": (b"GET /health HTTP/1.1\r\nHost: rpm\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n", 431),
        "too many headers": (b"GET /health HTTP/1.1\r\nHost: rpm\r\n"
                             + b"".join(b"X-H%d: a\r\n" % i for i in range(150)) + b"\r\n", 431),
    }
    for what, (request, status) in refused.items():
        code, headers, body = raw(server.port, request)
        assert code == status, what
        assert headers["content-type"] == "application/json", what
        assert int(headers["content-length"]) == len(body)
        answer = json.loads(body)
        assert answer == {"code": status, "status": HTTPStatus(status).phrase, "message": answer["message"],
                          "errors": {}}, what
        assert answer["message"], what
    assert http("GET", server.url + "/health/live") == (200, {"status": "alive"})  # served as before


@pytest.mark.slow
def test_gunicorn_logs_no_credential_it_refuses(servers, database_url, keys, tmp_path):
    """Observed: a key sent on a malformed line was quoted whole in gunicorn's warning ("Invalid HTTP Header:
    'Bearer rpm_…'"). An RPM key keeps its public prefix only; another bearer token or Authorization value none."""
    server = servers({"DATABASE_URL": database_url}, workers=1, threads=2)
    key = keys["admin"]
    secret = key.split("_", 2)[2]
    for request in (f"GET /whoami HTTP/1.1\r\nHost: x\r\nBearer {key}\r\n\r\n",
                    f"GET /whoami HTTP/1.1 Authorization: Bearer {key}\r\nHost: x\r\n\r\n",
                    "GET /whoami HTTP/1.1\r\nHost: x\r\nBearer ghp_0123456789abcdefSECRET\r\n\r\n"):
        assert raw(server.port, request.encode())[0] == 400
    log = (tmp_path / "server-0.log").read_text()
    assert "Invalid request" in log and key[:13] + "[redacted]" in log
    assert secret not in log and "ghp_0123456789abcdefSECRET" not in log


@pytest.mark.slow
def test_instances_neither_take_over_nor_remove_the_default_control_socket(servers, database_url, tmp_path):
    runtime = tmp_path / "run"  # gunicorn's default control socket lives in $XDG_RUNTIME_DIR when set
    runtime.mkdir(mode=0o700)
    default = runtime / "gunicorn.ctl"
    with socket.socket(socket.AF_UNIX) as other:  # another gunicorn's, on the same machine and user
        other.bind(str(default))
        other.listen()
        before = default.stat().st_ino
        env = {"DATABASE_URL": database_url, "XDG_RUNTIME_DIR": str(runtime)}
        first = servers(env, workers=1, threads=2)
        second = servers(env, workers=1, threads=2)
        first.stop()
        assert default.stat().st_ino == before  # neither instance replaced it, the stop did not remove it
        assert sorted(runtime.iterdir()) == [default]
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(default))
        assert http("GET", second.url + "/health/live")[0] == 200


@pytest.mark.slow
def test_an_instance_removes_the_counters_folder_it_made_and_keeps_one_it_was_given(servers, database_url, tmp_path):
    tmp = tmp_path / "tmp"  # where rpm serve makes its folder (tempfile honours TMPDIR)
    tmp.mkdir()
    given = tmp_path / "given"
    given.mkdir()
    made = servers({"DATABASE_URL": database_url, "TMPDIR": str(tmp)}, workers=2, threads=2)
    # the mark an instance passes to its workers' children does not make a given folder its own
    kept = servers({"DATABASE_URL": database_url, "TMPDIR": str(tmp), "PROMETHEUS_MULTIPROC_DIR": str(given),
                    "RPM_CREATED_PROMETHEUS_DIR": str(given)}, workers=2, threads=2)
    folders = [p for p in tmp.iterdir() if p.name.startswith("rpm-prometheus-")]
    assert len(folders) == 1
    assert os.listdir(folders[0]) and os.listdir(given)  # each in use by its workers
    made.stop()
    kept.stop()
    assert list(tmp.iterdir()) == []
    assert os.listdir(given)
