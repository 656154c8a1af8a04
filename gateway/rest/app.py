"""The REST app: MLServer's V2 paths, answered through the fleet."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from conveyor.gateway.service import FleetService
from conveyor.gateway.settings import GatewaySettings

__all__ = ("build_app",)


def build_app(service: FleetService, settings: GatewaySettings) -> Starlette:
    """The ASGI app of one gateway process."""

    async def live(request: Request) -> Response:
        return Response(status_code=200 if await service.live() else 400)

    async def ready(request: Request) -> Response:
        return Response(status_code=200 if await service.ready() else 400)

    routes = [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
    ]
    return Starlette(routes=routes)
