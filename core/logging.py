"""MLServer's ``mlserver.logging``: the logger a runtime logs to (``from conveyor.logging
import logger``). It is the package's logger, ``conveyor``: a worker prints its lines with its
own, under the worker's log level and format."""

from __future__ import annotations

import logging

__all__ = ("LoggerName", "get_logger", "logger")

LoggerName = "conveyor"

logger = logging.getLogger(LoggerName)


def get_logger() -> logging.Logger:
    """The logger runtimes log to."""
    return logger
