"""One gateway process: a :class:`~conveyor.client.Client`, the REST app under uvicorn and the
gRPC server, on one asyncio loop, until SIGTERM or Ctrl-C.

Several gateway processes on one host (``conveyor gateway --workers N``) share nothing but
Redis: each binds the same ports with ``SO_REUSEPORT`` and the kernel spreads connections.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Iterator

import anyio
import uvicorn

from conveyor.client import Client
from conveyor.client.metrics import ClientMetrics
from conveyor.dashboard import DashboardSettings
from conveyor.dashboard import build_app as build_dashboard
from conveyor.errors import PortUnavailable
from conveyor.gateway.grpc import start_grpc
from conveyor.gateway.metrics import GatewayMetrics
from conveyor.gateway.rest import build_app
from conveyor.gateway.service import FleetService
from conveyor.gateway.settings import GatewaySettings
from conveyor.multiprocess_metrics import serving

__all__ = ("bind", "claim", "reserve", "serve")

logger = logging.getLogger("conveyor.gateway")
FREE_PORT_HINT = " (0 picks a free one)"
_GRACE_S = 5.0  # calls in flight get this long to finish on SIGTERM


class _Uvicorn(uvicorn.Server):
    """uvicorn's server without its signal handling: :func:`serve` stops both servers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def reserve(host: str, port: int) -> socket.socket:
    """A bound, not listening, ``SO_REUSEPORT`` socket: holds ``port`` (0: a free one, read
    with ``getsockname()``) for gateway processes that bind it too. Not listening, it is
    never handed a connection."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it a keep-alive connection waits ~40 ms per answer (Nagle + delayed ACK)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def claim(host: str, port: int, option: str) -> socket.socket:
    """:func:`reserve`, a taken port raised as :class:`PortUnavailable` (one line, not a
    traceback). A port held by another gateway's ``SO_REUSEPORT`` socket is shared, not taken:
    ``conveyor up`` checks for that itself."""
    try:
        return reserve(host, port)
    except OSError as error:
        raise PortUnavailable(option, port, error, host=host, hint=FREE_PORT_HINT) from error


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket that other gateway processes may bind too (``SO_REUSEPORT``)."""
    sock = reserve(host, port)
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def serve(
    settings: GatewaySettings,
    *,
    on_ready: Callable[[int, int | None], None] | None = None,
    handle_signals: bool = True,
) -> None:
    """Serves until SIGTERM / SIGINT (with ``handle_signals``) or until cancelled.

    ``on_ready(http_port, grpc_port)`` is called once both listen (the ports actually bound:
    port 0 picks a free one)."""
    metrics = None
    if settings.metrics_port is not None or settings.record_metrics:
        metrics = GatewayMetrics()
    with contextlib.ExitStack() as stack:
        if settings.metrics_port is not None and metrics is not None:
            stack.enter_context(
                serving(settings.metrics_port, settings.host, registry=metrics.registry)
            )
        await _serve(settings, metrics, on_ready, handle_signals)


async def _serve(
    settings: GatewaySettings,
    metrics: GatewayMetrics | None,
    on_ready: Callable[[int, int | None], None] | None,
    handle_signals: bool,
) -> None:
    if settings.grpc_port:
        # grpc says only "Failed to bind" (a RuntimeError): a bind of our own says why
        claim(settings.host, settings.grpc_port, "--grpc-port").close()
    sock = claim(settings.host, settings.http_port, "--http-port")
    sock.listen(2048)
    sock.setblocking(False)
    http_port = sock.getsockname()[1]
    async with (
        contextlib.AsyncExitStack() as stack,
        Client(
            settings.redis_url,
            prefix=settings.prefix,
            timeout=settings.timeout,
            client_id="gateway",
            max_payload_bytes=settings.max_request_bytes,
            # the fleet's side of each call (conveyor_client_*), beside the gateway's
            metrics=ClientMetrics(metrics.registry) if metrics is not None else None,
        ) as client,
    ):
        service = FleetService(client)
        board = None
        stopping = anyio.Event()  # the dashboard's event streams end when set
        if settings.dashboard:
            board = build_dashboard(
                DashboardSettings(
                    redis_url=settings.redis_url,
                    prefix=settings.prefix,
                    host=settings.host,  # bound to loopback: its Host check is on
                    token=settings.dashboard_token,
                    trusted_origins=settings.dashboard_trusted_origins,
                ),
                stopping=stopping,
            )
            # a mounted app's lifespan is not run by its parent (nor uvicorn's, here off):
            # it opens and closes the dashboard's Redis client
            await stack.enter_async_context(board.router.lifespan_context(board))
        app = build_app(service, settings, board)
        config = uvicorn.Config(
            metrics.asgi(app) if metrics is not None else app,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=int(_GRACE_S),
        )
        http = _Uvicorn(config)
        grpc_server = None
        if settings.grpc_port is not None:
            address = f"{settings.host}:{settings.grpc_port}"
            grpc_server = await start_grpc(service, address, settings.max_request_bytes, metrics)
        grpc_port = grpc_server.port if grpc_server is not None else None
        try:
            async with anyio.create_task_group() as tg:

                async def run_http() -> None:
                    await http.serve(sockets=[sock])
                    tg.cancel_scope.cancel()  # uvicorn stopped (told to, or failed): stop all

                # The socket listens already: connections wait in its backlog until uvicorn
                # accepts them, so the gateway is ready now.
                tg.start_soon(run_http)
                if grpc_server is not None:
                    tg.start_soon(grpc_server.health.run)
                logger.info(
                    "gateway.started http=%s:%d grpc=%s", settings.host, http_port, grpc_port
                )
                if on_ready is not None:
                    on_ready(http_port, grpc_port)
                if handle_signals:
                    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                        async for signum in signals:
                            logger.info("gateway.stopping signal=%s", signal.Signals(signum).name)
                            break
                    if grpc_server is not None:
                        await grpc_server.health.stopping()
                    stopping.set()
                    http.should_exit = True
        finally:
            if grpc_server is not None:
                await grpc_server.server.stop(_GRACE_S)
            sock.close()
