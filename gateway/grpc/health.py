"""gRPC health checking (``grpc.health.v1.Health``) that follows the truth.

SERVING while Redis answers; NOT_SERVING while it does not, and for good once the gateway
stops (SIGTERM: a load balancer stops sending before the servers close). Redis is pinged
periodically, not on demand: a ``Check`` then costs nothing, and ``Watch`` streams hear of a
change without being asked (at most ``CHECK_INTERVAL_S`` + ``PING_TIMEOUT_S`` late).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
from grpc_health.v1 import health, health_pb2

__all__ = ("CHECK_INTERVAL_S", "PING_TIMEOUT_S", "FleetHealth")

logger = logging.getLogger("conveyor.gateway")

CHECK_INTERVAL_S = 1.0
PING_TIMEOUT_S = 1.0  # a Redis that accepts but never answers is as down as one that refuses

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class FleetHealth:
    """Sets ``checks``' status of the server (``""``) and of ``services`` from ``ping``."""

    def __init__(
        self,
        checks: health.aio.HealthServicer,
        services: tuple[str, ...],
        ping: Callable[[], Awaitable[bool]],
    ) -> None:
        self.checks = checks
        self._names = ("", *services)
        self._ping = ping
        self._serving: bool | None = None

    async def check(self) -> bool:
        """Pings Redis once and sets the status from its answer; returns it."""
        serving = False
        with anyio.move_on_after(PING_TIMEOUT_S):
            try:
                serving = await self._ping()
            except Exception:  # a Redis loading its data, say: not serving, and no crash
                logger.debug("gateway.health_check_failed", exc_info=True)
        if serving != self._serving:
            if serving and self._serving is not None:
                logger.info("gateway.health status=SERVING (Redis answers again)")
            elif not serving:
                logger.warning("gateway.health status=NOT_SERVING (Redis does not answer)")
            self._serving = serving
            for name in self._names:
                await self.checks.set(name, _SERVING if serving else _NOT_SERVING)
        return serving

    async def run(self) -> None:
        """Checks every ``CHECK_INTERVAL_S`` until cancelled."""
        while True:
            await self.check()
            await anyio.sleep(CHECK_INTERVAL_S)

    async def stopping(self) -> None:
        """NOT_SERVING for good: the gateway is going away."""
        await self.checks.enter_graceful_shutdown()
