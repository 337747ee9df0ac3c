"""The gunicorn worker of `rpm serve`: gthread, with the errors gunicorn answers itself in RPM's JSON shape.

A request gunicorn refuses before the app sees it (request line too long, malformed request line,
too many or too large headers, ...) is answered by `Worker.handle_error`, which picks the status
and the message, then hands them to `gunicorn.util.write_error`, its only caller, to write an HTML
page. Replacing that writer, rather than `handle_error`, keeps gunicorn's choice of status for
every error it raises, including those a later gunicorn adds, without a copy of its table.

gunicorn's own log lines quote what it refused ("Invalid HTTP Header: 'Bearer rpm_…'"): credentials
in them are redacted, an RPM key down to its public prefix.
"""

from __future__ import annotations

import json
import logging
import re

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """`gunicorn.util.write_error`, with RPM's error body (SPEC §5) instead of an HTML page."""
    # imported here: the master loads this module for the worker class and does not load the app;
    # a worker has loaded it before it serves, so this import is a lookup
    from app.api.common import error_body

    body = json.dumps(error_body(status_int, mesg or reason)).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


# an RPM key (its public prefix kept), a bearer token, an Authorization header's whole value
_RPM_KEY = re.compile(r"(rpm_[0-9a-f]{8}_)[A-Za-z0-9_-]+")
_BEARER = re.compile(r"(?i)(bearer\s+)(?!rpm_[0-9a-f]{8}_\[redacted\])[^\s'\"]+")
_AUTHORIZATION = re.compile(r"(?i)(authorization\s*:\s*+)(?!bearer\s+rpm_[0-9a-f]{8}_\[redacted\])[^\r\n'\"]+")


def redacted(text: str) -> str:
    text = _RPM_KEY.sub(r"\1[redacted]", text)
    text = _BEARER.sub(r"\1[redacted]", text)
    return _AUTHORIZATION.sub(r"\1[redacted]", text)


class RedactCredentials(logging.Filter):
    """Rewrites a record's message with its credentials redacted (see the module's docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redacted(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class JsonErrorThreadWorker(ThreadWorker):
    def init_process(self):
        # in the worker process only, before it serves: the master never writes an error page
        util.write_error = write_json_error
        for logger in (self.log.error_log, self.log.access_log):
            logger.addFilter(RedactCredentials())
        super().init_process()
