"""How a gateway process is started: where Redis is, where it listens."""

from __future__ import annotations

from dataclasses import dataclass, field

from conveyor.broker.keys import DEFAULT_PREFIX
from conveyor.client.client import DEFAULT_MAX_PAYLOAD_BYTES

__all__ = ("DEFAULT_GRPC_PORT", "DEFAULT_HTTP_PORT", "DEFAULT_TIMEOUT_S", "GatewaySettings")

DEFAULT_HTTP_PORT = 8080  # MLServer's
DEFAULT_GRPC_PORT = 8081  # MLServer's
DEFAULT_TIMEOUT_S = 60.0  # a call's deadline when the client gives none


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    redis_url: str
    prefix: str = DEFAULT_PREFIX
    # loopback unless told: a gateway reachable from elsewhere is a choice (compose makes it)
    host: str = "127.0.0.1"
    http_port: int = DEFAULT_HTTP_PORT
    grpc_port: int | None = DEFAULT_GRPC_PORT  # None: no gRPC server
    timeout: float = DEFAULT_TIMEOUT_S
    # a REST body, a gRPC message and a job's payload: one limit, the client's by default
    max_request_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    metrics_port: int | None = None  # serve this process's metrics here
    # record metrics for a parent that serves them (--workers N: PROMETHEUS_MULTIPROC_DIR set)
    record_metrics: bool = False
    dashboard: bool = False  # serve conveyor.dashboard's page at /dashboard on the HTTP port
    dashboard_token: str | None = field(default=None, repr=False)  # its actions' token
    # a reverse proxy's address(es) the dashboard's Host and same-site checks accept
    dashboard_trusted_origins: tuple[str, ...] = ()
