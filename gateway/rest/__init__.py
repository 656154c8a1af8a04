"""The gateway's REST side: V2 / Open Inference Protocol over HTTP (MLServer's paths and JSON)."""

from conveyor.gateway.rest.app import build_app as build_app

__all__ = ("build_app",)
