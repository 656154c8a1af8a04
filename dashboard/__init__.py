"""conveyor.dashboard: the fleet as a live web page (``conveyor dashboard``).

A view over what the workers already publish (heartbeats) and Redis itself (job streams,
dead letters), read with the operator reports of :mod:`conveyor.broker.ops`: opening the page
adds no work per job. It imports the broker's face and its ops, never the worker's or the
client's internals.
"""

from conveyor.dashboard.app import DashboardSettings, build_app

__all__ = ("DashboardSettings", "build_app")
