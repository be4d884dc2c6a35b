"""Structured log lines for the serving loop: ``python serve.py ... hydra/job_logging=json``.

Every record becomes one JSON object on one line: ``time`` (UTC, ISO 8601 with ms), ``level``,
``logger``, ``message`` (the human sentence), and the fields the loop attaches to its events with
``extra={"event": ..., ...}`` (a decision's bar, close, equity, position, target and state; an
order's client id, side and quantity; a halt's check and reason), so that a log shipper can index
them without parsing sentences.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)
