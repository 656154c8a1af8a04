"""conveyor.broker: how jobs move. What the layers above may import of it (its face):

- connecting to Redis: settings, clients, the error boundary (``settings``, ``clients``,
  ``errors``): what a user, the CLI and the faces' callers need;
- the worker's face, :class:`WorkerBroker` (``worker_broker``): all that ``worker/`` asks of
  Redis, with what its steps hand back (:class:`Delivery`) and the heartbeat thread's
  connection (:class:`HeartbeatLink`, :class:`Beat`).
"""

from conveyor.broker.clients import create_client, create_sync_client, ping
from conveyor.broker.entries import Delivery
from conveyor.broker.errors import translate_errors
from conveyor.broker.heartbeats import Beat, HeartbeatLink
from conveyor.broker.settings import DEFAULT_REDIS_URL, RedisSettings, default_redis_url, redact_url
from conveyor.broker.worker_broker import WorkerBroker

__all__ = [
    "DEFAULT_REDIS_URL",
    "Beat",
    "Delivery",
    "HeartbeatLink",
    "RedisSettings",
    "WorkerBroker",
    "create_client",
    "create_sync_client",
    "default_redis_url",
    "ping",
    "redact_url",
    "translate_errors",
]
