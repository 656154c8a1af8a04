"""The gRPC server of one gateway process: ``inference.GRPCInferenceService``, gRPC health
checking (``grpc.health.v1.Health``) and server reflection."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from conveyor.errors import PortUnavailable
from conveyor.gateway.grpc import inference_pb2, inference_pb2_grpc
from conveyor.gateway.grpc.health import FleetHealth
from conveyor.gateway.grpc.servicer import InferenceServicer
from conveyor.gateway.metrics import GatewayMetrics
from conveyor.gateway.service import FleetService

__all__ = ("MAX_MESSAGE_BYTES", "SERVICE_NAME", "GrpcServer", "start_grpc")

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# gRPC's default is 4 MiB a message: too small for many tensors (answers; requests: the
# gateway's --max-request-bytes)
MAX_MESSAGE_BYTES = 100 * 1024 * 1024


def _reflection_pool() -> descriptor_pool.DescriptorPool:
    """What reflection describes: our service, health and reflection itself. A pool of its
    own: our messages live outside protobuf's default pool (see ``_codegen.py``)."""
    pool = descriptor_pool.DescriptorPool()
    for file in (inference_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
        pool.AddSerializedFile(file.serialized_pb)
    return pool


@dataclass(frozen=True, slots=True)
class GrpcServer:
    server: grpc.aio.Server
    port: int  # the port it listens on
    health: FleetHealth  # its health statuses: run its checks, tell it when stopping


async def start_grpc(
    service: FleetService,
    address: str,
    max_receive_bytes: int = MAX_MESSAGE_BYTES,
    metrics: GatewayMetrics | None = None,
) -> GrpcServer:
    """Starts the gRPC server on ``address`` (``host:port``; port 0 picks one). A message over
    ``max_receive_bytes`` is refused by grpc itself (RESOURCE_EXHAUSTED), unread."""
    server = grpc.aio.server(
        interceptors=[metrics.interceptor(SERVICE_NAME)] if metrics is not None else None,
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", max_receive_bytes),
            # several gateway processes on one host bind the same port (server.py's bind)
            ("grpc.so_reuseport", 1),
        ],
    )
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(service), server
    )
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
        server,
        pool=_reflection_pool(),
    )
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as error:  # grpc's word for any failed bind (a taken port, mostly)
        host, _, number = address.rpartition(":")
        raise PortUnavailable("--grpc-port", int(number), error, host=host) from error
    fleet_health = FleetHealth(checks, (SERVICE_NAME,), service.ready)
    await fleet_health.check()  # the first answer is the truth too
    await server.start()
    return GrpcServer(server, port, fleet_health)
