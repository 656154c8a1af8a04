"""Log output of the ``conveyor`` command: one line per event, as text or as JSON.

Our events are logged as ``logger.info("event.name key=%s key=%s", value, value)``. The text
format prints the rendered line. The JSON format (python-json-logger) writes one object per
line — time, level, logger, event, message — with a key per field, read from the logging call's
template and its arguments, not from the rendered line: a value with spaces (an error's
message) stays whole. An argument that stands alone in the template (``"job.failed %s ..."``
with a pre-rendered ``request=... model=...``) gives the ``key=value`` pairs of its text.
Fields a call passes as ``extra=`` become keys too.

A line logged while a worker runs a job (its ``job.*`` events, the model's own lines) carries
the job's ``request_id``, and its ``trace_id`` when the job's span records (a batched run's
lines: its ``batch_id``): keys in JSON, ``[request_id=… trace_id=…]`` after the message in
text (see ``conveyor.logging.job_context``).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from pythonjsonlogger.core import merge_record_extra
from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

from conveyor.logging import job_context

__all__ = ("JobFields", "JsonFormatter", "TextFormatter", "event_fields", "setup_logging")

LogFormat = Literal["text", "json"]

# One printf conversion (as logging's %-style uses), optionally right after `key=`; a literal
# `key=value` of the template; a pre-rendered argument's pairs.
_CONVERSION = re.compile(
    r"(?:(?P<key>\w+)=)?%(?P<spec>(?:\((?P<name>[^)]*)\))?[#0 +-]*(?:\*|\d+)?(?:\.(?:\*|\d+))?"
    r"[hlL]?[diouxXeEfFgGcrsa%])(?P<suffix>\S*)"
)
_LITERAL = re.compile(r"(?:^|\s)(\w+)=([^\s%]+)(?=\s|$)")
_PAIR = re.compile(r"(\w+)=(\S+)")
_MISSING = object()


def event_fields(template: str, args: object) -> Iterator[tuple[str, str]]:
    """The ``key=value`` fields of a logging call: each ``key=%s`` of ``template`` with its
    argument rendered whole (plus the text right after it, a unit say), each literal
    ``key=value`` of the template, and the pairs of an argument that stands alone.
    Raises ``ValueError`` (``TypeError``) when the arguments do not fit the template."""
    named = args if isinstance(args, Mapping) else None
    positional = iter(args if isinstance(args, tuple) else () if args is None else (args,))
    for key, value in _LITERAL.findall(template):
        yield key, value
    for match in _CONVERSION.finditer(template):
        spec = match["spec"]
        if spec == "%":
            continue
        if "*" in spec:
            raise ValueError("a * width or precision is not read")
        if match["name"] is not None:
            if named is None:
                raise ValueError("a %(name)s conversion without a mapping")
            value = named[match["name"]]
            spec = spec.replace(f"({match['name']})", "", 1)
        else:
            value = next(positional, _MISSING)
            if value is _MISSING:
                raise ValueError("fewer arguments than conversions")
        text = ("%" + spec) % (value,)
        if match["key"] is not None:
            yield match["key"], text + match["suffix"]
        elif "\n" not in text:  # a traceback's text is no list of fields
            yield from _PAIR.findall(text)


class JsonFormatter(_LibraryJsonFormatter):
    """One JSON object per line: time, level, logger, event, message, and the event's fields."""

    def __init__(self) -> None:
        super().__init__(json_ensure_ascii=False)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        message = record.message  # rendered by format()
        log_data["time"] = (
            self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}"
        )
        log_data["level"] = record.levelname.lower()
        log_data["logger"] = record.name
        log_data["event"] = message.split(" ", 1)[0]
        log_data["message"] = message
        try:
            fields = list(event_fields(str(record.msg), record.args))
        except (ValueError, TypeError, KeyError):
            fields = _PAIR.findall(message)  # not a template we can read: the rendered pairs
        for key, value in fields:
            log_data.setdefault(key, value)
        for key, value in message_dict.items():  # logger.info({...}): its keys, as given
            if key not in ("exc_info", "stack_info"):
                log_data[key] = value
        extra: dict[str, Any] = {}
        merge_record_extra(record, extra, reserved=self._skip_fields)
        for key, value in extra.items():
            log_data.setdefault(key, value)
        for source, key in (("exc_info", "exception"), ("stack_info", "stack")):
            if message_dict.get(source):
                log_data[key] = message_dict[source]


class JobFields(logging.Filter):
    """Adds the running job's fields (``conveyor.logging.job_context``) to each record, as
    attributes (the JSON formatter's extra keys; the text formatter's suffix)."""

    def filter(self, record: logging.LogRecord) -> bool:
        job = job_context.get()
        if job is not None:
            job.logged = True
            for key, value in job.fields().items():
                setattr(record, key, value)
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger message``, then the job's fields in brackets when it has them: at
    the end, so the lines' format stays as it was for whoever reads them."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = [
            f"{key}={value}"
            for key in ("request_id", "trace_id", "batch_id")
            if (value := getattr(record, key, None))
        ]
        return f"{line} [{' '.join(fields)}]" if fields else line


def setup_logging(level: str, log_format: LogFormat = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(JobFields())  # on the handler: it sees every logger's records
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
