"""Traces across the queue: a client under a real SDK (configured in code, in this process,
spans kept by an ``InMemorySpanExporter``) and a worker under ``opentelemetry-instrument``
(configured by ``OTEL_*`` variables, the console exporter writing its spans as JSON to a file
this test reads): one trace, the client's PRODUCER span the parent of the worker's CONSUMER
``process`` span, for a predict, a batched predict and a predict_stream; and no trace fields
on the wire when no SDK is configured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from conveyor.client import Client
from conveyor.codecs import NumpyCodec
from conveyor.errors import RemoteError
from conveyor.types import InferenceRequest
from tests.support.fleet import Fleet, GatewayProcess, WorkerProcess
from tests.support.probe import Probe, entries
from tests.support.process import Watcher, lines_of
from tests.support.tracing import in_memory_sdk
from tests.support.waiting import wait_until_async

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
# The worker is the same whatever the client runs on: the client's trio path is checked once.
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])

MODELS = Path(__file__).parents[1] / "models"
Span = dict[str, Any]  # one span as the console exporter writes it (ReadableSpan.to_json)


class TracedWorker(WorkerProcess):
    """``opentelemetry-instrument conveyor worker ...``: its spans, as JSON, go to ``spans``."""

    allowed: tuple[str, ...] = ()  # log lines at WARNING or above that the test expects

    def __init__(self, argv: list[str], env: dict[str, str], spans: Path) -> None:
        self.spans_path = spans
        with spans.open("w") as out:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.PIPE, env=env, text=True
            )
        assert self.process.stderr is not None
        self.output = Watcher(lines_of(self.process.stderr), describe=self.log)

    def spans(self) -> list[Span]:
        text, found, at = self.spans_path.read_text(), [], 0
        decoder = json.JSONDecoder()
        while (at := _skip_space(text, at)) < len(text):
            try:
                span, at = decoder.raw_decode(text, at)
            except json.JSONDecodeError:  # the exporter is still writing this one
                break
            found.append(span)
        return found

    async def wait_spans(self, check: Any, what: str) -> list[Span]:
        """The spans once ``check(spans)`` holds (the exporter writes every 20 ms)."""
        await wait_until_async(lambda: check(self.spans()), what, timeout=20)
        return self.spans()


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


@pytest.fixture
def worker(fleet: Fleet, tmp_path: Path) -> Iterator[TracedWorker]:
    instrument = Path(sys.executable).parent / "opentelemetry-instrument"
    dirs = (MODELS / "common", MODELS / "batching")
    env = dict(os.environ)
    env.pop("CONVEYOR_REDIS_URL", None)
    env.update(
        OTEL_SERVICE_NAME="conveyor-worker",
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_BSP_SCHEDULE_DELAY="20",
    )
    process = TracedWorker([str(instrument), *fleet.argv(*dirs)], env, tmp_path / "spans.json")
    fleet.workers.append(process)
    process.wait_for_log("worker.started")
    yield process
    # e.g. OpenTelemetry's warning for a span ended twice
    assert not process.problems(process.allowed)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """The SDK in this process for this test only (its spans in memory)."""
    with in_memory_sdk() as spans:
        yield spans


def _request(*values: float) -> InferenceRequest:
    return InferenceRequest(inputs=[NumpyCodec.encode_input("x", np.array(values)[:, None])])


def _hex(number: int) -> str:
    return f"0x{number:016x}"


def _children(spans: list[Span], parent: Span) -> dict[str, Span]:
    return {s["name"]: s for s in spans if s["parent_id"] == parent["context"]["span_id"]}


def _process_of(client_span: ReadableSpan, steps: int = 3) -> Any:
    """A check: the worker's process span whose parent is ``client_span`` (with its
    ``steps``: all exported), or None."""
    context = client_span.context
    assert context is not None

    def found(spans: list[Span]) -> Span | None:
        for span in spans:
            if (
                span["parent_id"] == _hex(context.span_id)
                and span["name"].endswith(" process")
                and len(_children(spans, span)) == steps
            ):
                return span
        return None

    return found


def _check_one_trace(
    client_span: ReadableSpan, spans: list[Span], model: str, method: str | None
) -> tuple[Span, dict[str, Span]]:
    """The client span is the parent of one process span, in its trace, with its attributes
    and its steps (the model call's named ``method``; none in a batch: the batch's span has
    it); returns them."""
    process = _process_of(client_span, 2 if method is None else 3)(spans)
    assert process is not None
    context = client_span.context
    assert context is not None
    stream = client_span.attributes["messaging.destination.name"]  # type: ignore[index]
    request_id = client_span.attributes["messaging.message.conversation_id"]  # type: ignore[index]
    assert client_span.name == f"{model} publish"
    assert client_span.kind is SpanKind.PRODUCER
    assert process["context"]["trace_id"] == f"0x{context.trace_id:032x}"
    assert process["kind"] == "SpanKind.CONSUMER"
    assert process["name"] == f"{model} process"
    attributes = process["attributes"]
    assert attributes["messaging.system"] == "redis"
    assert attributes["messaging.destination.name"] == stream
    assert attributes["messaging.consumer.group.name"] == "workers"
    assert "-" in attributes["messaging.message.id"]  # the job entry's stream id
    assert attributes["messaging.message.conversation_id"] == request_id
    assert attributes["conveyor.outcome"] == "ok"
    steps = _children(spans, process)
    assert set(steps) == {"decode", "reply"} | ({method} if method else set())
    return process, steps


async def test_a_predict_is_one_trace_from_client_to_worker(
    exporter: InMemorySpanExporter, worker: TracedWorker, redis_url: str, prefix: str
) -> None:
    async with Client(redis_url, prefix=prefix) as client:
        await client.model("echo").predict(_request(1.0))
    (client_span,) = exporter.get_finished_spans()
    spans = await worker.wait_spans(_process_of(client_span), "the worker's process span")
    _check_one_trace(client_span, spans, "echo", "predict")


@asyncio_only
async def test_a_batched_run_links_every_request_and_says_its_size(
    exporter: InMemorySpanExporter, worker: TracedWorker, redis_url: str, prefix: str
) -> None:
    calls = 6
    async with Client(redis_url, prefix=prefix) as client, anyio.create_task_group() as tg:
        model = client.model("batched")
        for i in range(calls):
            tg.start_soon(model.predict, _request(float(i)))
    client_spans = exporter.get_finished_spans()
    assert len(client_spans) == calls

    def all_there(spans: list[Span]) -> bool:
        ran = [s for s in spans if s["name"] == "batched predict batch"]
        found = sum(s["attributes"]["messaging.batch.message_count"] for s in ran)
        return found == calls and all(_process_of(s, 2)(spans) for s in client_spans)

    spans = await worker.wait_spans(all_there, "every job's spans and their batches'")
    processes = {}
    for client_span in client_spans:
        process, _ = _check_one_trace(client_span, spans, "batched", None)
        processes[process["context"]["span_id"]] = process
    batches = [s for s in spans if s["name"] == "batched predict batch"]
    linked = [link["context"] for batch in batches for link in batch["links"]]
    assert sorted(c["span_id"] for c in linked) == sorted(processes)
    for batch in batches:
        assert batch["attributes"]["messaging.batch.message_count"] == len(batch["links"])
        assert batch["parent_id"] is None
    assert any(len(batch["links"]) > 1 for batch in batches)  # 6 calls at once: batched


@asyncio_only
async def test_a_predict_stream_is_one_trace_with_an_event_a_chunk(
    exporter: InMemorySpanExporter,
    worker: TracedWorker,
    redis_url: str,
    prefix: str,
    probe: Probe,
) -> None:
    more = anyio.Event()

    async def requests() -> AsyncIterator[InferenceRequest]:
        yield _request(1.0)
        await more.wait()  # the job stays in its stream (unacked) until the stream ends
        yield _request(2.0)
        yield _request(3.0)

    async with Client(redis_url, prefix=prefix) as client:
        chunks = 0
        async for _ in client.model("echo").predict_stream(requests()):
            chunks += 1
            if chunks == 1:
                ((_, fields),) = entries(probe, client.keys.jobs("echo"))
                assert fields[b"traceparent"].startswith(b"00-")  # readable in redis-cli
                more.set()
    assert chunks == 3
    (client_span,) = exporter.get_finished_spans()
    assert [event.name for event in client_span.events] == ["chunk"] * 3
    spans = await worker.wait_spans(_process_of(client_span), "the worker's process span")
    _, steps = _check_one_trace(client_span, spans, "echo", "predict_stream")
    events = steps["predict_stream"]["events"]
    assert [(e["name"], e["attributes"]["seq"]) for e in events] == [("chunk", i) for i in range(3)]


@asyncio_only
async def test_a_model_error_fails_the_spans_on_both_sides(
    exporter: InMemorySpanExporter, worker: TracedWorker, redis_url: str, prefix: str
) -> None:
    worker.allowed = ("job.failed", "Traceback")  # the model's error, logged with its traceback
    async with Client(redis_url, prefix=prefix) as client:
        with pytest.raises(RemoteError, match="cannot handle 1 inputs"):
            await client.model("fails").predict(_request(1.0))
    (client_span,) = exporter.get_finished_spans()
    assert client_span.status.status_code is StatusCode.ERROR
    spans = await worker.wait_spans(_process_of(client_span), "the worker's process span")
    process = _process_of(client_span)(spans)
    assert process["status"]["status_code"] == "ERROR"
    assert process["attributes"]["conveyor.outcome"] == "error"
    call = _children(spans, process)["predict"]
    assert call["status"]["status_code"] == "ERROR"
    (event,) = call["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "ValueError"


@asyncio_only
async def test_no_sdk_no_trace_fields_on_the_wire(
    worker: TracedWorker, redis_url: str, prefix: str, probe: Probe
) -> None:
    more = anyio.Event()

    async def requests() -> AsyncIterator[InferenceRequest]:
        yield _request(1.0)
        await more.wait()

    async with Client(redis_url, prefix=prefix) as client:
        async for _ in client.model("echo").predict_stream(requests()):
            ((_, fields),) = entries(probe, client.keys.jobs("echo"))
            assert b"traceparent" not in fields
            assert b"tracestate" not in fields
            more.set()


@pytest.fixture
def traced_gateway(fleet: Fleet, worker: TracedWorker, tmp_path: Path) -> Iterator[GatewayProcess]:
    """``opentelemetry-instrument conveyor gateway ...`` in front of the traced worker."""
    instrument = Path(sys.executable).parent / "opentelemetry-instrument"
    env = dict(os.environ)
    env.pop("CONVEYOR_REDIS_URL", None)
    env.update(
        OTEL_SERVICE_NAME="conveyor-gateway",
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )
    argv = [str(instrument), sys.executable, "-m", "conveyor.cli", "gateway"]
    argv += ["--redis", fleet.redis_url, "--prefix", fleet.prefix]
    argv += ["--http-port", "0", "--grpc-port", "0"]
    gateway = GatewayProcess(argv, env)
    fleet.workers.append(gateway)
    gateway.wait_started()
    yield gateway
    assert not gateway.problems()


def _in_trace(trace_id: int) -> Any:
    """A check: the worker's process span in trace ``trace_id``, or None."""

    def found(spans: list[Span]) -> Span | None:
        return next(
            (
                span
                for span in spans
                if span["name"].endswith(" process")
                and span["context"]["trace_id"] == f"0x{trace_id:032x}"
            ),
            None,
        )

    return found


@asyncio_only
async def test_the_gateway_continues_its_callers_trace(
    worker: TracedWorker, traced_gateway: GatewayProcess
) -> None:
    """A V2 caller's ``traceparent`` (REST header, gRPC metadata) is the parent of the job's
    trace: the worker's process span is in the caller's trace."""
    rest_trace, grpc_trace = 0x5EED0000000000000000000000000001, 0x5EED0000000000000000000000000002
    body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [1.0]}]}
    async with httpx.AsyncClient(base_url=traced_gateway.http_url, timeout=20) as http:
        answer = await http.post(
            "/v2/models/echo/infer",
            json=body,
            headers={"traceparent": f"00-{rest_trace:032x}-00000000000000a1-01"},
        )
    assert answer.status_code == 200, answer.text

    def grpc_call() -> None:
        with grpcclient.InferenceServerClient(traced_gateway.grpc_address) as client:
            tensor = grpcclient.InferInput("x", [1, 1], "FP64")
            tensor.set_data_from_numpy(np.array([[2.0]]))
            client.infer(
                "echo",
                [tensor],
                headers={"traceparent": f"00-{grpc_trace:032x}-00000000000000b2-01"},
                client_timeout=20,
            )

    await anyio.to_thread.run_sync(grpc_call)
    for trace_id in (rest_trace, grpc_trace):
        spans = await worker.wait_spans(_in_trace(trace_id), "a process span in the trace")
        process = _in_trace(trace_id)(spans)
        assert process["attributes"]["conveyor.outcome"] == "ok"
        assert process["parent_id"] not in ("0x00000000000000a1", "0x00000000000000b2", None)
