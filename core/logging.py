"""MLServer's ``mlserver.logging``: the logger a runtime logs to (``from conveyor.logging
import logger``). It is the package's logger, ``conveyor``: a worker prints its lines with its
own, under the worker's log level and format.

It also holds what a worker knows of the job it runs now (:data:`job_context`): the worker
sets it where a job (or a batch) starts running, in that job's own context, and the filter the
``conveyor`` command installs (``conveyor.cli.logs``) adds its fields to every line logged
meanwhile — the worker's ``job.*`` events and the model's own lines alike.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

__all__ = ("JobContext", "LoggerName", "get_logger", "job_context", "logger")

LoggerName = "conveyor"

logger = logging.getLogger(LoggerName)


def get_logger() -> logging.Logger:
    """The logger runtimes log to."""
    return logger


class JobContext:
    """The job (or batch) that the current task or thread runs: its log lines' fields."""

    __slots__ = ("batch_id", "logged", "request_id", "trace_id")

    def __init__(self, request_id: str = "", trace_id: int = 0, batch_id: str = "") -> None:
        self.request_id = request_id
        self.trace_id = trace_id  # its recording span's (0: none); hex only if a line is logged
        self.batch_id = batch_id  # a batched run's: its lines belong to all its requests
        self.logged = False  # a line was logged in it (a batch then says which requests it ran)

    def fields(self) -> dict[str, str]:
        """``request_id``, ``trace_id`` (32 hex digits) and ``batch_id``, those it has."""
        found = {}
        if self.request_id:
            found["request_id"] = self.request_id
        if self.trace_id:
            found["trace_id"] = f"{self.trace_id:032x}"
        if self.batch_id:
            found["batch_id"] = self.batch_id
        return found


# Set per job task (a copy of the context each): never reset, it dies with its task.
job_context: ContextVar[JobContext | None] = ContextVar("conveyor_job", default=None)
