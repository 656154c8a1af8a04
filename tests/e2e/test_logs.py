"""Logs: one line per event with its fields; `--log-format json` for collectors."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conveyor.cli.logs import JobFields, JsonFormatter, setup_logging
from conveyor.client import Client
from conveyor.errors import RemoteError
from conveyor.logging import JobContext, job_context
from conveyor.types import InferenceRequest, RequestInput
from tests.support.fleet import MODELS, Fleet, WorkerProcess
from tests.support.tracing import in_memory_sdk

JOB_LOGS = Path(__file__).parents[1] / "models" / "joblogs"


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
    assert entry["request_id"] == request_id  # the job's field, as every line of it has
    assert "trace_id" not in entry  # no SDK: no trace
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


def test_a_job_s_fields_follow_the_text_line_and_are_json_keys() -> None:
    record = _record("chatty.predicted inputs=%d", 1)
    context = JobContext("r1", 0xABC)
    token = job_context.set(context)
    try:
        assert JobFields().filter(record)
    finally:
        job_context.reset(token)
    assert context.logged
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("info", "text")
        line = root.handlers[0].format(record)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    trace_id = f"{0xABC:032x}"
    assert line.endswith(f" chatty.predicted inputs=1 [request_id=r1 trace_id={trace_id}]")
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["request_id"], entry["trace_id"]) == ("r1", trace_id)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """The SDK in this process for this test only (its spans in memory)."""
    with in_memory_sdk() as spans:
        yield spans


def _traced_worker(fleet: Fleet) -> WorkerProcess:
    """A JSON-logging worker under ``opentelemetry-instrument`` (its spans record)."""
    instrument = Path(sys.executable).parent / "opentelemetry-instrument"
    env = dict(os.environ)
    env.pop("CONVEYOR_REDIS_URL", None)
    env.update(
        OTEL_TRACES_EXPORTER="console",  # to its stdout: nobody reads it here
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )
    argv = [str(instrument), *fleet.argv(JOB_LOGS, extra=["--log-format", "json"])]
    worker = WorkerProcess(argv, env)
    fleet.workers.append(worker)
    worker.wait_for_log("worker.started")
    return worker


def _request() -> InferenceRequest:
    data = np.zeros(1, "f4")
    return InferenceRequest(inputs=[RequestInput(name="x", shape=[1], datatype="FP32", data=data)])


@pytest.mark.anyio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_model_s_lines_carry_the_request_id_and_trace_id(
    fleet: Fleet, redis_url: str, prefix: str, exporter: InMemorySpanExporter
) -> None:
    worker = _traced_worker(fleet)
    async with Client(redis_url, prefix=prefix, timeout=20) as client:
        await client.model("chatty").predict(_request())
    (span,) = exporter.get_finished_spans()
    assert span.context is not None
    assert span.attributes is not None
    request_id = span.attributes["messaging.message.conversation_id"]
    trace_id = f"{span.context.trace_id:032x}"
    for event in ("chatty.predicted", "chatty.own_logger"):
        line = await worker.wait_for_log_async(f'"event": "{event}"')
        entry = json.loads(line)
        assert (entry["request_id"], entry["trace_id"]) == (request_id, trace_id), entry


@pytest.mark.anyio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_batch_s_lines_carry_its_batch_id_and_say_its_requests(
    fleet: Fleet, redis_url: str, prefix: str
) -> None:
    worker = fleet.start(JOB_LOGS, extra=["--log-format", "json"])
    calls = 4
    async with Client(redis_url, prefix=prefix, timeout=20) as client:
        model = client.model("chatty_batched")
        async with anyio.create_task_group() as tg:
            for _ in range(calls):
                tg.start_soon(model.predict, _request())
    ids = await anyio.to_thread.run_sync(_batch_requests, worker, calls)
    assert len(ids) == calls
    predicted = [json.loads(line) for line in worker.lines if "chatty_batched.predicted" in line]
    said = {json.loads(line)["batch_id"] for line in worker.lines if "batch.requests" in line}
    assert predicted
    assert {entry["batch_id"] for entry in predicted} == said
    assert all("request_id" not in entry for entry in predicted)  # a batch's: all of them


def _batch_requests(worker: WorkerProcess, calls: int) -> set[str]:
    """The request ids the worker's ``batch.requests`` lines name, once they name ``calls``."""

    def named() -> set[str] | None:
        found = {
            request
            for line in worker.lines
            if '"event": "batch.requests"' in line
            for request in json.loads(line)["requests"].split(",")
        }
        return found if len(found) >= calls else None

    return worker.output.wait(lambda _lines: named(), "batch.requests lines", 20)
