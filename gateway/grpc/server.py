"""The gRPC server of one gateway process."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from conveyor.gateway.service import FleetService

__all__ = ("start_grpc",)


async def start_grpc(service: FleetService, address: str) -> tuple[grpc.aio.Server, int]:
    """Starts the gRPC server on ``address`` (``host:port``; port 0 picks one); returns it
    and the port it listens on."""
    server = grpc.aio.server()
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    port = server.add_insecure_port(address)
    await server.start()
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port
