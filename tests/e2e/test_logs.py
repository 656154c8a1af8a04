"""Logs: one line per event with its fields; `--log-format json` for collectors."""

from __future__ import annotations

import json
import logging

import anyio
import numpy as np
import pytest

from conveyor.cli.logs import JsonFormatter, setup_logging
from conveyor.client import Client
from conveyor.errors import RemoteError
from conveyor.types import InferenceRequest, RequestInput
from tests.support.fleet import MODELS, Fleet


def test_json_formatter_turns_event_fields_into_keys() -> None:
    record = logging.LogRecord(
        "conveyor.worker",
        logging.INFO,
        __file__,
        1,
        "job.failed request=%s model=%s",
        ("r1", "m"),
        None,
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["event"] == "job.failed"
    assert entry["request"] == "r1"
    assert entry["model"] == "m"
    assert entry["level"] == "info"
    assert entry["logger"] == "conveyor.worker"


@pytest.mark.anyio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_worker_logs_json_lines_with_request_model_and_worker(
    fleet: Fleet, redis_url: str, prefix: str
) -> None:
    worker = fleet.start(MODELS, extra=["--log-format", "json"])
    async with Client(redis_url, prefix=prefix, timeout=20) as client:
        data = np.zeros(1, "f4")
        request = InferenceRequest(
            inputs=[RequestInput(name="x", shape=[1], datatype="FP32", data=data)]
        )
        with pytest.raises(RemoteError) as caught:
            await client.model("fails").predict(request)
    request_id = caught.value.request_id
    line = await anyio.to_thread.run_sync(worker.wait_for_log, '"event": "job.failed"')
    started = json.loads(worker.wait_for_log('"event": "worker.started"'))
    assert started["level"] == "info"
    entry = json.loads(line)
    assert entry["request"] == request_id
    assert entry["model"] == "fails"
    assert entry["worker"] == started["worker"]
    assert entry["error"] == "ValueError: cannot handle 1 inputs"  # whole, spaces and all
    assert all(json.loads(text) for text in worker.lines if text.startswith("{"))


def _record(template: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("conveyor.cli", logging.ERROR, __file__, 1, template, args, None)


def test_json_fields_come_from_the_template_and_values_with_spaces_stay_whole() -> None:
    record = _record(
        "model.load_failed model=%s version=%s error=%s\n%s",
        "m",
        None,
        "load() raised ValueError: no weights in /models/m (is the volume mounted?)",
        'Traceback (most recent call last):\n  File "x.py", line 1, in f(a=1)',
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["event"] == "model.load_failed"
    assert (
        entry["error"]
        == "load() raised ValueError: no weights in /models/m (is the volume mounted?)"
    )
    assert entry["version"] == "None"
    assert "a" not in entry  # a traceback's text gives no fields
    assert entry["message"] == record.getMessage()


def test_json_fields_of_units_literals_extras_and_unreadable_templates() -> None:
    record = _record(
        "supervisor.child_exited child=%d code=%s restart_in=%.1fs why=crash", 1, -9, 0.5
    )
    record.host = "h1"  # as logging's extra= sets it
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["child"], entry["code"], entry["restart_in"]) == ("1", "-9", "0.5s")
    assert entry["why"] == "crash"
    assert entry["host"] == "h1"
    odd = json.loads(JsonFormatter().format(_record("job.odd %*d value=x", 3, 4)))
    assert odd["value"] == "x"  # read off the rendered line instead
    mapping = logging.LogRecord("x", logging.INFO, __file__, 1, {"event": "e", "n": 1}, None, None)
    entry = json.loads(JsonFormatter().format(mapping))
    assert (entry["event"], entry["n"]) == ("e", 1)  # a dict logged: its keys


def test_the_text_format_keeps_its_lines() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("info", "text")
        formatter = root.handlers[0].formatter
        assert formatter is not None
        line = formatter.format(_record("job.failed %s error=%s", "request=r1 model=m", "E: a b"))
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert line.endswith(" ERROR conveyor.cli job.failed request=r1 model=m error=E: a b")
