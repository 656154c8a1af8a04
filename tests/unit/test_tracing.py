"""conveyor.tracing without a worker: the job's trace fields on the wire, and what is done
when no SDK is configured (nothing)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conveyor import tracing
from conveyor.broker.wire import Job, decode_job, encode_job, trace_fields
from tests.support.tracing import in_memory_sdk

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _job(traceparent: str = "", tracestate: str = "") -> Job:
    reply, bell = "p:reply:{c}:r-1", "p:bell:{c}"
    return Job(
        "r-1",
        "predict",
        "m",
        None,
        reply,
        bell,
        2.0,
        1.0,
        traceparent=traceparent,
        tracestate=tracestate,
    )


def _raw(job: Job) -> dict[bytes, bytes]:
    return {
        name.encode(): value.encode() if isinstance(value, str) else bytes(value)  # type: ignore[arg-type]
        for name, value in encode_job(job).items()
    }


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """The SDK in this process for this test only (its spans in memory)."""
    with in_memory_sdk() as spans:
        yield spans


def test_a_job_without_a_trace_has_no_trace_fields() -> None:
    fields = encode_job(_job())
    assert "traceparent" not in fields
    assert "tracestate" not in fields
    assert decode_job(_raw(_job())).traceparent == ""


def test_trace_fields_are_readable_and_round_trip() -> None:
    job = _job(traceparent=PARENT, tracestate="vendor=1")
    fields = encode_job(job)
    assert (fields["traceparent"], fields["tracestate"]) == (PARENT, "vendor=1")
    back = decode_job(_raw(job))
    assert (back.traceparent, back.tracestate) == (PARENT, "vendor=1")
    assert "tracestate" not in encode_job(_job(traceparent=PARENT))  # only when not empty


def test_an_unreadable_trace_context_is_ignored_not_refused() -> None:
    raw = _raw(_job(traceparent=PARENT))
    raw[b"traceparent"] = b"\xff\xfe"
    assert decode_job(raw).traceparent == ""
    assert trace_fields({b"tracestate": b"a=b"}) == ("", "a=b")


def test_without_an_sdk_there_is_no_tracer() -> None:
    assert tracing.tracer() is None


def test_a_publish_span_carries_its_w3c_context(exporter: InMemorySpanExporter) -> None:
    tracer = tracing.tracer()
    assert tracer is not None
    span = tracing.publish_span(tracer, "m", "predict", "p:{m}:jobs")
    parent, state = tracing.carried(span, "r-1")
    span.end()
    (done,) = exporter.get_finished_spans()
    assert done.context is not None
    ids = f"{done.context.trace_id:032x}-{done.context.span_id:016x}"
    assert parent == f"00-{ids}-{done.context.trace_flags:02x}"
    assert state == ""
    assert done.attributes is not None
    assert done.attributes["messaging.message.conversation_id"] == "r-1"


def test_a_job_trace_continues_the_carried_context(exporter: InMemorySpanExporter) -> None:
    tracer = tracing.tracer()
    assert tracer is not None
    job = tracing.JobTrace(tracer, "p:{m}:jobs", "workers", "1-0", "m", PARENT, "v=1", 1)
    job.decoded("r-1", "predict", 1)
    job.reply_started()
    job.close(None, "ok")
    job.close()  # idempotent
    spans = {span.name: span for span in exporter.get_finished_spans()}
    process = spans["m process"]
    assert process.parent is not None
    assert process.context is not None
    assert f"{process.context.trace_id:032x}" == PARENT.split("-")[1]
    assert f"{process.parent.span_id:016x}" == PARENT.split("-")[2]
    assert process.context.trace_state.to_header() == "v=1"
    assert {spans["decode"].parent.span_id, spans["reply"].parent.span_id} == {  # type: ignore[union-attr]
        process.context.span_id
    }


def test_context_from_headers_reads_traceparent() -> None:
    context = tracing.context_from_headers({"traceparent": PARENT})
    span_context = trace.get_current_span(context).get_span_context()
    assert f"{span_context.span_id:016x}" == PARENT.split("-")[2]


def test_continued_puts_a_call_in_its_callers_trace(exporter: InMemorySpanExporter) -> None:
    tracer = tracing.tracer()
    assert tracer is not None
    with tracing.continued({"traceparent": PARENT, "other": "x"}):
        tracing.publish_span(tracer, "m", "predict", "p:{m}:jobs").end()
    tracing.publish_span(tracer, "m", "predict", "p:{m}:jobs").end()  # after: a trace of its own
    inside, after = exporter.get_finished_spans()
    assert inside.parent is not None
    assert f"{inside.parent.span_id:016x}" == PARENT.split("-")[2]
    assert after.parent is None


def test_continued_does_nothing_without_a_traceparent() -> None:
    with tracing.continued({"user-agent": "curl"}) as context:
        assert context is None
