"""conveyor.broker"""

# Connecting to Redis: settings, clients, the error boundary (broker/settings.py, clients.py,
# errors.py): what a user, the CLI and the faces' callers need from above.
# The client's face (broker/client_broker.py): every Redis operation of a client, and what
# they hand back (Replies, FleetView; the doorbell's Rung is conveyor.broker.wire's).
from conveyor.broker.client_broker import ClientBroker, Replies
from conveyor.broker.clients import create_client, create_sync_client, ping
from conveyor.broker.errors import translate_errors
from conveyor.broker.fleet import FleetView
from conveyor.broker.settings import DEFAULT_REDIS_URL, RedisSettings, default_redis_url, redact_url

__all__ = [
    "DEFAULT_REDIS_URL",
    "ClientBroker",
    "FleetView",
    "RedisSettings",
    "Replies",
    "create_client",
    "create_sync_client",
    "default_redis_url",
    "ping",
    "redact_url",
    "translate_errors",
]
