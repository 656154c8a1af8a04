"""conveyor.broker: the face the client, the worker and the CLI use (nothing deeper)."""

from typing import TYPE_CHECKING, Any

# Imported on first use (PEP 562), as the `conveyor` package does: `conveyor --help` imports
# conveyor.broker.keys, and must not pay for redis-py and pydantic (~0.4 s) to print a help
# text. Add a name here, to the TYPE_CHECKING block and to __all__.
_LAZY = {
    # -- connecting to Redis: settings, clients, the error boundary (broker/settings.py,
    # clients.py, errors.py).
    "DEFAULT_REDIS_URL": "conveyor.broker.settings",
    "RedisSettings": "conveyor.broker.settings",
    "default_redis_url": "conveyor.broker.settings",
    "redact_url": "conveyor.broker.settings",
    "create_client": "conveyor.broker.clients",
    "create_sync_client": "conveyor.broker.clients",
    "ping": "conveyor.broker.clients",
    "translate_errors": "conveyor.broker.errors",
    # -- the client's face (broker/client_broker.py): every Redis operation of a client, and
    # what they hand back (the doorbell's Rung is conveyor.broker.wire's).
    "ClientBroker": "conveyor.broker.client_broker",
    "Replies": "conveyor.broker.client_broker",
    "FleetView": "conveyor.broker.fleet",
    "RestRoute": "conveyor.broker.fleet",  # a model's custom REST path (gateways route it)
    "read_fleet_sync": "conveyor.broker.fleet",  # `conveyor up` waits for its workers
    # -- the worker's face (broker/worker_broker.py): all that worker/ asks of Redis, what its
    # steps hand back, and the heartbeat thread's connection (broker/heartbeats.py).
    "WorkerBroker": "conveyor.broker.worker_broker",
    "Delivery": "conveyor.broker.entries",
    "HeartbeatLink": "conveyor.broker.heartbeats",
    "Beat": "conveyor.broker.heartbeats",
    "looks_secret": "conveyor.broker.fleet",  # settings never published (heartbeat `settings`)
    "REDACTED": "conveyor.broker.fleet",
}

if TYPE_CHECKING:
    # -- every name of _LAZY
    from conveyor.broker.client_broker import ClientBroker as ClientBroker
    from conveyor.broker.client_broker import Replies as Replies
    from conveyor.broker.clients import create_client as create_client
    from conveyor.broker.clients import create_sync_client as create_sync_client
    from conveyor.broker.clients import ping as ping
    from conveyor.broker.entries import Delivery as Delivery
    from conveyor.broker.errors import translate_errors as translate_errors
    from conveyor.broker.fleet import REDACTED as REDACTED
    from conveyor.broker.fleet import FleetView as FleetView
    from conveyor.broker.fleet import RestRoute as RestRoute
    from conveyor.broker.fleet import looks_secret as looks_secret
    from conveyor.broker.fleet import read_fleet_sync as read_fleet_sync
    from conveyor.broker.heartbeats import Beat as Beat
    from conveyor.broker.heartbeats import HeartbeatLink as HeartbeatLink
    from conveyor.broker.settings import DEFAULT_REDIS_URL as DEFAULT_REDIS_URL
    from conveyor.broker.settings import RedisSettings as RedisSettings
    from conveyor.broker.settings import default_redis_url as default_redis_url
    from conveyor.broker.settings import redact_url as redact_url
    from conveyor.broker.worker_broker import WorkerBroker as WorkerBroker

__all__ = (
    "DEFAULT_REDIS_URL",
    "REDACTED",
    "Beat",
    "ClientBroker",
    "Delivery",
    "FleetView",
    "HeartbeatLink",
    "RedisSettings",
    "Replies",
    "RestRoute",
    "WorkerBroker",
    "create_client",
    "create_sync_client",
    "default_redis_url",
    "looks_secret",
    "ping",
    "read_fleet_sync",
    "redact_url",
    "translate_errors",
)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'conveyor.broker' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
