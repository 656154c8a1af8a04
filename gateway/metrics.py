"""The gateway's Prometheus metrics (``conveyor gateway --metrics-port``): calls by protocol,
model and status, and their latency, seen from the gateway (request in -> last byte out).

REST is measured by an ASGI wrapper around the app, gRPC by a server interceptor (the
inference service only: health checks and reflection are not calls). ``model`` is the V2
path's or message's model name, empty when a call names none, and for a 404 / NOT_FOUND:
a name nobody serves is the client's to choose, and each one would be a series. ``status`` is
the HTTP status, or the gRPC code's name. Under ``--workers N`` every process records in
prometheus-client's files and the parent serves them summed (``conveyor.multiprocess_metrics``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.multiprocess_metrics import LATENCY_BUCKETS

__all__ = ("GatewayMetrics",)

_NOT_FOUND = ("404", "NOT_FOUND")


class GatewayMetrics:
    """One gateway process's metrics, in a registry of its own (never the global one)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "conveyor_gateway_requests",
            "V2 calls the gateway answered, by protocol (rest, grpc), model and status",
            ("protocol", "model", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "conveyor_gateway_request_seconds",
            "Time from a V2 call's arrival to its answer's end (a stream: its whole life)",
            ("protocol", "model"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        processes = Gauge(
            "conveyor_gateway_processes",
            "Gateway processes alive (--workers N: summed over them)",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        processes.set(1)

    def observe(self, protocol: str, model: str, status: str, seconds: float) -> None:
        model = "" if status in _NOT_FOUND else model
        self.requests.labels(protocol, model, status).inc()
        self.latency.labels(protocol, model).observe(seconds)

    def asgi(self, app: ASGIApp) -> ASGIApp:
        """``app``, each HTTP request measured."""

        async def measured(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500  # the app raised before it answered: uvicorn answers 500

            async def sending(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, sending)
            finally:
                # Starlette's router puts the route's parameters in this very scope
                model = scope.get("path_params", {}).get("name", "")
                self.observe("rest", str(model), str(status), time.perf_counter() - started)

        return measured

    def interceptor(self, service: str) -> grpc.aio.ServerInterceptor:
        """A gRPC interceptor measuring the calls of ``service`` (its full name)."""
        return _Interceptor(self, f"/{service}/")


def _model_of(message: Any) -> str:
    for field in ("model_name", "name"):  # ModelInferRequest's; ModelReady/Metadata's
        value = getattr(message, field, "")
        if value:
            return str(value)
    return ""


def _code_of(context: grpc.aio.ServicerContext[Any, Any], failed: bool) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return "UNKNOWN" if failed else "OK"


class _Interceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: GatewayMetrics, prefix: str) -> None:
        self._metrics = metrics
        self._prefix = prefix

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        # Any: grpc's stubs type handlers' behaviours as sync ones; grpc.aio's are async
        handler: Any = await continuation(handler_call_details)
        method: str = getattr(handler_call_details, "method", "")
        if handler is None or not method.startswith(self._prefix):
            return handler  # type: ignore[no-any-return]
        observe = self._metrics.observe
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                started, failed = time.perf_counter(), True
                try:
                    answer = await inner(request, context)
                    failed = False
                    return answer
                finally:
                    seconds = time.perf_counter() - started
                    observe("grpc", _model_of(request), _code_of(context, failed), seconds)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            streamed = handler.stream_stream

            async def stream(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                started, failed, model = time.perf_counter(), True, ""

                async def peeked() -> AsyncIterator[Any]:
                    nonlocal model
                    async for request in requests:
                        model = model or _model_of(request)
                        yield request

                try:
                    async for answer in streamed(peeked(), context):
                        yield answer
                    failed = False
                finally:
                    seconds = time.perf_counter() - started
                    observe("grpc", model, _code_of(context, failed), seconds)

            return grpc.stream_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # type: ignore[no-any-return]  # the service has no other kind
