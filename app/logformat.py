"""The one shape of every log line, RPM's and gunicorn's: a JSON object.

A module of its own that imports nothing of RPM's: gunicorn's master formats its first lines ("Starting gunicorn",
"Listening at") before ``when_ready`` names the counters' folder, and importing app/observability.py there would
import prometheus-client, which chooses between in-memory and multiprocess counters once, at import: every worker
forked from the master would then count in memory, and the scrape would miss their counts.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the key's name and prefix when known, never the key: RPM's own logs and gunicorn's
    (app/gunicorn_conf.py)."""

    converter = time.gmtime  # UTC timestamps
    FIELDS = ("request_id", "method", "path", "status", "duration_ms", "portfolio", "key_name", "key_prefix",
              "decision_id", "decision_status", "level_id", "event_id", "event_type", "switch", "symbol", "value",
              "threshold", "actor", "reason", "forced")

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            "pid": record.process,  # the master's or a worker's (several write to the same stream)
        }
        for name in self.FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                event[name] = value
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)
