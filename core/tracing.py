"""Traces across the queue: one OpenTelemetry trace per call, from the client through the job
stream to the worker, with the messaging semantic conventions.

Conveyor depends on ``opentelemetry-api`` only: spans are recorded when the application
configures the SDK (in code, or under ``opentelemetry-instrument`` through ``OTEL_*``
variables). :func:`tracer` says whether it did; the client asks when it is opened and the worker
when it starts, and without a real tracer provider they do no span work at all (the job entry
then has no trace fields: the wire and its cost are as without tracing).

The spans of one call::

    <model> publish            PRODUCER  client: Client.call / Client.stream
    └─ <model> process         CONSUMER  worker: the job, continued from its traceparent
       ├─ decode                         the job entry decoded
       ├─ <method>                       the model's method (a predict_stream: an event a chunk)
       └─ reply                          its answer, until stored in Redis
    <model> predict batch      INTERNAL  a batched run: links every job's process span

The job carries the client span's W3C context as the readable fields ``traceparent`` and
``tracestate`` (``tracestate`` only when not empty). :func:`context_from_headers` continues
an HTTP or gRPC caller's context (the gateway's).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar

from opentelemetry import trace
from opentelemetry.context import Context, attach, detach
from opentelemetry.propagate import extract
from opentelemetry.trace import (
    Link,
    NoOpTracerProvider,
    ProxyTracerProvider,
    Span,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = (
    "JobTrace",
    "Span",
    "Tracer",
    "batch_ran",
    "carried",
    "context_from_headers",
    "continued",
    "current_failed",
    "publish_span",
    "timing_batches",
    "traced",
    "tracer",
)

SYSTEM = "redis"  # messaging.system
_W3C = TraceContextTextMapPropagator()
_NOTHING = nullcontext()  # what a block that is not traced runs in (reusable)
# When the running batch started (ns since the epoch), set in the batch's task (see batch_ran).
_BATCH_START: ContextVar[int] = ContextVar("conveyor_batch_start", default=0)


def tracer() -> Tracer | None:
    """Conveyor's tracer if the application set a tracer provider, else None (the API's
    default is a proxy that records nothing: Conveyor then skips all span work)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, ProxyTracerProvider | NoOpTracerProvider):
        return None
    return provider.get_tracer("conveyor")


def context_from_headers(headers: Mapping[str, str]) -> Context:
    """The trace context of an HTTP request's headers or a gRPC call's metadata (lowercase
    names), read by the application's propagators (W3C ``traceparent`` by default): start
    the call's spans in it (``Client`` does when it is the current context)."""
    return extract(headers)


def continued(headers: Mapping[str, str]) -> AbstractContextManager[object]:
    """Runs the block in the trace context of a request's ``headers`` (HTTP headers, or gRPC
    metadata as a dict; lowercase names): the calls a server in front of the fleet makes in
    it are children of its caller's span. Nothing at all when they carry no ``traceparent``
    (W3C; see :func:`context_from_headers` for other propagators)."""
    if "traceparent" not in headers:
        return _NOTHING
    return _attached(context_from_headers(headers))


@contextmanager
def _attached(context: Context) -> Iterator[Context]:
    token = attach(context)
    try:
        yield context
    finally:
        detach(token)


def publish_span(tracer: Tracer, model: str, method: str, stream: str) -> Span:
    """The PRODUCER span of one call, a child of the current span (not made current)."""
    return tracer.start_span(
        f"{model} publish",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.destination.name": stream,
            "conveyor.model": model,
            "conveyor.method": method,
        },
    )


def carried(span: Span, request_id: str) -> tuple[str, str]:
    """``traceparent`` and ``tracestate`` (W3C) of the call's ``span``, as its job carries them
    (the span gets the request id as its conversation id)."""
    span.set_attribute("messaging.message.conversation_id", request_id)
    context = span.get_span_context()
    if not context.is_valid:
        return "", ""
    parent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    return parent, context.trace_state.to_header()


def failed(span: Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def current_failed(error: BaseException) -> None:
    """The current span's work failed with ``error`` (recorded, status ERROR)."""
    failed(trace.get_current_span(), error)


def traced(span: Span | None, current: bool = True) -> AbstractContextManager[object]:
    """Ends ``span`` when the block ends, with the error that ended it; current while it runs
    unless not ``current`` (an async generator's span: its yields must not leak it). Nothing
    at all for None (no tracing)."""
    if span is None:
        return _NOTHING
    if current:
        return trace.use_span(span, end_on_exit=True)
    return _ended(span)


@contextmanager
def _ended(span: Span) -> Iterator[Span]:
    try:
        yield span
    except Exception as error:  # not GeneratorExit: a caller that stops reading did not fail
        failed(span, error)
        raise
    finally:
        span.end()


class JobTrace:
    """The spans of one job on a worker: its CONSUMER ``process`` span, continued from the
    context the job carries (a new trace when it carries none), and its steps. Closed once
    its answer is stored, or given up (:meth:`close`, idempotent)."""

    __slots__ = ("_reply", "_tracer", "context", "span")

    def __init__(
        self,
        tracer: Tracer,
        stream: str,
        group: str,
        entry_id: str,
        model: str,
        traceparent: str,
        tracestate: str,
        start_ns: int,
    ) -> None:
        carrier = {"traceparent": traceparent, "tracestate": tracestate} if traceparent else {}
        self._tracer = tracer
        self.span = tracer.start_span(
            f"{model} process",
            context=_W3C.extract(carrier),
            kind=SpanKind.CONSUMER,
            start_time=start_ns,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": stream,
                "messaging.consumer.group.name": group,
                "messaging.message.id": entry_id,
                "conveyor.model": model,
            },
        )
        self.context = trace.set_span_in_context(self.span)
        self._reply: Span | None = None

    def decoded(self, request_id: str, method: str, start_ns: int) -> None:
        """The job was decoded (since ``start_ns``): its request id and method are known."""
        self.span.set_attribute("messaging.message.conversation_id", request_id)
        self.span.set_attribute("conveyor.method", method)
        self._tracer.start_span("decode", self.context, start_time=start_ns).end()

    @contextmanager
    def current(self) -> Iterator[Span]:
        """The process span as the current span (what the job's task does is its child)."""
        with trace.use_span(self.span, end_on_exit=False):
            yield self.span

    @contextmanager
    def step(self, name: str) -> Iterator[Span]:
        """A child span, current while the block runs (the model's own spans nest in it)."""
        with self._tracer.start_as_current_span(name, self.context) as span:
            yield span

    def chunk(self, seq: int) -> None:
        """A predict_stream's chunk ``seq`` was written: an event of the current span (the
        method's)."""
        trace.get_current_span().add_event("chunk", {"seq": seq})

    def reply_started(self) -> None:
        self._reply = self._tracer.start_span("reply", self.context)

    def close(self, error: BaseException | None = None, outcome: str = "") -> None:
        """Ends the reply span (if any) and the process span; ``error``: why the answer was not
        stored; ``outcome``: the answer's (``ok``, or its error code)."""
        reply, self._reply = self._reply, None
        if reply is not None:
            if error is not None:
                failed(reply, error)
            reply.end()
        span = self.span
        if not span.is_recording():
            return  # ended already (or sampled out)
        if error is not None:
            failed(span, error)
        if outcome:
            span.set_attribute("conveyor.outcome", outcome)
            if outcome != "ok":
                span.set_status(Status(StatusCode.ERROR, outcome))
        span.end()


def timing_batches(on_batch: Callable[[int], None]) -> Callable[[int], None]:
    """``on_batch`` that also notes when each batch starts, for :func:`batch_ran` (called in
    the batch's task, as the batcher's ``on_batch`` is)."""

    def started(size: int) -> None:
        _BATCH_START.set(time.time_ns())
        on_batch(size)

    return started


def batch_ran(tracer: Tracer, model: str, jobs: list[JobTrace]) -> None:
    """Records a batched run that ended now (started as :func:`timing_batches` noted, in this
    task): one span that links every job's process span and says the batch size."""
    start = _BATCH_START.get()
    span = tracer.start_span(
        f"{model} predict batch",
        context=Context(),  # a root: the run belongs to every job's trace, to none alone
        links=[Link(job.span.get_span_context()) for job in jobs],
        start_time=start or None,
        attributes={
            "messaging.system": SYSTEM,
            "messaging.batch.message_count": len(jobs),
            "conveyor.model": model,
        },
    )
    span.end()
