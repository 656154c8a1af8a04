"""conveyor.broker"""

# -- connecting to Redis: settings, clients, the error boundary (broker/settings.py,
# clients.py, errors.py). What a user, the CLI and the faces' callers need from above.
from conveyor.broker.clients import create_client, create_sync_client, ping
from conveyor.broker.errors import translate_errors
from conveyor.broker.settings import DEFAULT_REDIS_URL, RedisSettings, default_redis_url, redact_url

__all__ = [
    "DEFAULT_REDIS_URL",
    "RedisSettings",
    "create_client",
    "create_sync_client",
    "default_redis_url",
    "ping",
    "redact_url",
    "translate_errors",
]
