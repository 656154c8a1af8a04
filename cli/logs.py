"""Log output of the ``conveyor`` command: one line per event, as text or as JSON."""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Literal

__all__ = ("JsonFormatter", "setup_logging")

LogFormat = Literal["text", "json"]

# Our events read `event.name key=value key=value ...`: the pairs become JSON fields.
_PAIR = re.compile(r"(\w+)=(\S+)")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, message, and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        event = message.split(" ", 1)[0]
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": event,
            "message": message,
        }
        for key, value in _PAIR.findall(message):
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str, log_format: LogFormat = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
