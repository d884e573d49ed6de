"""Structured logs: one JSON object per line, one line per event (SPEC §7).

Events carry the branch and the client address. Nothing is logged per message or per
statement on the data path; connection-level events only.
"""

from __future__ import annotations

import json
import logging
import sys
import time

log = logging.getLogger("cowproxy")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        event.update(getattr(record, "fields", {}))
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


def configure(level: str = "info", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False


def event(name: str, level: int = logging.INFO, **fields: object) -> None:
    """Log one event with its fields (`branch=`, `client=`, ...)."""
    if log.isEnabledFor(level):
        log.log(level, name, extra={"fields": fields})
