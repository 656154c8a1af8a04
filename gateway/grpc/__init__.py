"""The gateway's gRPC side: ``inference.GRPCInferenceService`` (the Open Inference Protocol)."""

from conveyor.gateway.grpc.server import start_grpc as start_grpc

__all__ = ("start_grpc",)
