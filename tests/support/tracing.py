"""OpenTelemetry's SDK in the test process, for one test: its spans kept in memory."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@contextmanager
def in_memory_sdk() -> Iterator[InMemorySpanExporter]:
    """The SDK configured in code while the block runs. The API lets a process set its tracer
    provider once, so the API's globals are put back as they were afterwards (as
    OpenTelemetry's own tests do): later tests run without an SDK."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(provider)
    try:
        yield spans
    finally:
        trace._TRACER_PROVIDER = None
        trace._TRACER_PROVIDER_SET_ONCE._done = False
        provider.shutdown()
