"""conveyor.gateway: V2 / Open Inference Protocol (REST and gRPC) in front of the fleet.

A client of the fleet like any other: each gateway process holds one
:class:`~conveyor.client.Client`, turns each V2 request into a job and the worker's answer
into the V2 response. It never imports the worker. Start it with ``conveyor gateway``.
"""

from conveyor.gateway.service import FleetService as FleetService
from conveyor.gateway.settings import GatewaySettings as GatewaySettings

__all__ = ("FleetService", "GatewaySettings")
