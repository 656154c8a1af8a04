"""Redis clients made from :class:`~conveyor.broker.settings.RedisSettings`, options pinned.

:func:`create_client` makes a ``redis.asyncio`` client, :func:`create_sync_client` its
blocking-I/O twin; both pin the bytes wire, RESP2, timeouts, a bounded pool and the retry
policy (which errors are retried, with what backoff; a blocking client never re-sends a BLOCK
whose read timed out), and bound each new connection's handshake by the connect timeout. The
redis-py subclasses doing the last two, and the hot-path shortcuts the async client uses, live
in :mod:`conveyor.broker.fastpath`. :func:`ping` checks a server; :func:`server_url` names a
client's server in errors. Failures surface as redis-py exceptions: wrap calls in
:class:`~conveyor.broker.errors.translate_errors`.

``redis.asyncio`` runs on asyncio only: :func:`create_client` and :func:`ping` need an asyncio
event loop, and a client must only be used on the loop that first used it.
"""

from __future__ import annotations

import time
from typing import Any, Literal, cast

import anyio
import redis
from redis import exceptions as rex
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.connection import Connection as AsyncConnection
from redis.asyncio.connection import SSLConnection as AsyncSSLConnection
from redis.asyncio.connection import UnixDomainSocketConnection as AsyncUnixConnection
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import RedisCluster as SyncRedisCluster

from conveyor.broker.errors import translate_errors
from conveyor.broker.fastpath import (
    FastConnection,
    FastPool,
    FastSSLConnection,
    FastUnixConnection,
    Retry,
    SyncRetry,
    bounded_handshake,
    fast_paths_enabled,
)
from conveyor.broker.settings import RedisSettings
from conveyor.errors import BrokerConnectionError

__all__ = (
    "DEFAULT_MAX_BLOCK_S",
    "PROTOCOL",
    "create_client",
    "create_sync_client",
    "ping",
    "server_url",
)

# RESP2: the reply shapes redis-py's stream and list parsers were written for, and what the
# broker's code reads (RESP3 turns XREAD replies into dicts). RESP3 would also switch on
# redis-py 8's maintenance-notification handling, which we do not use.
PROTOCOL = 2


def _retry_errors(blocking: bool) -> tuple[type[rex.RedisError], ...]:
    # A blocking connection retries only connection errors: re-sending a BLOCK whose read
    # timed out would silently wait again (DESIGN.md, redis-py pitfalls). READONLY: a failover
    # made this server a replica, and the command did not run. redis-py drops the connection
    # before each retry, so the next one finds the new primary where the name now points.
    if blocking:
        return (rex.ConnectionError, rex.ReadOnlyError)
    return (rex.ConnectionError, rex.TimeoutError, rex.ReadOnlyError)


# The longest BLOCK a blocking client sends unless its maker says otherwise (max_block).
DEFAULT_MAX_BLOCK_S = 5.0


def _pool_kwargs(
    settings: RedisSettings,
    *,
    blocking: bool,
    max_connections: int | None,
    max_block: float = DEFAULT_MAX_BLOCK_S,
) -> tuple[dict[str, Any], Literal["tcp", "tls", "unix"]]:
    """Keyword arguments of a redis-py connection pool, shared by the sync and async flavour."""
    blocking_timeout = settings.blocking_socket_timeout or settings.socket_timeout + max_block
    kwargs: dict[str, Any] = {
        "max_connections": max_connections or settings.max_connections,
        "timeout": settings.pool_timeout,
        "db": settings.db,
        "username": settings.username,
        "password": None if settings.password is None else settings.password.get_secret_value(),
        "socket_timeout": blocking_timeout if blocking else settings.socket_timeout,
        "socket_connect_timeout": settings.socket_connect_timeout,
        "decode_responses": False,
        "protocol": PROTOCOL,
        "health_check_interval": settings.health_check_interval,
        "client_name": settings.client_name,
    }
    if settings.scheme == "unix":
        kwargs["path"] = settings.path
        return kwargs, "unix"
    kwargs.update(host=settings.host, port=settings.port, socket_keepalive=True)
    if settings.scheme == "redis":
        return kwargs, "tcp"
    kwargs.update(
        ssl_ca_certs=settings.ssl_ca_certs,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
        ssl_cert_reqs=settings.ssl_cert_reqs,
        ssl_check_hostname=settings.ssl_check_hostname and settings.ssl_cert_reqs != "none",
    )
    return kwargs, "tls"


def create_client(
    settings: RedisSettings,
    *,
    blocking: bool = False,
    max_connections: int | None = None,
    retry: bool = True,
    max_block: float = DEFAULT_MAX_BLOCK_S,
) -> Redis:
    """A ``redis.asyncio.Redis`` client with its own pool, and the options we rely on pinned.

    Pinned: ``decode_responses=False`` (the wire is bytes), ``protocol=2`` (:data:`PROTOCOL`),
    a bounded retry with exponential backoff and jitter (redis-py's ``Retry``; a refused
    password or user is not retried), explicit timeouts, ``health_check_interval``, TCP
    keepalive, and a bounded pool that makes a command wait for a free connection
    (``BlockingConnectionPool``; ``max_connections`` overrides the settings' size).

    ``blocking=True`` makes a client for blocking commands (BLMPOP, XREADGROUP BLOCK) of at
    most ``max_block`` seconds: its read timeout is ``socket_timeout + max_block`` (or
    ``settings.blocking_socket_timeout``), and only connection errors are retried, so a
    timed-out BLOCK is never silently re-sent. Give blocking reads their own client: a
    connection inside BLOCK serves nobody else. ``retry=False``: no command is re-sent at all,
    for a reader that must know its connection broke (a BLMPOP whose answer was lost in
    transit popped it for good: the caller has to look for what it missed).

    Every new connection finishes its handshake (AUTH, SELECT, CLIENT SETNAME) within
    ``socket_connect_timeout``, or fails with redis-py's ``TimeoutError``: a server that
    accepts connections and never answers cannot hold a command forever.

    Nothing connects until the first command. Close the client with ``await client.aclose()``
    (it owns its pool). Failures surface as ``redis`` exceptions: wrap calls in
    :class:`~conveyor.broker.errors.translate_errors`. Needs asyncio (redis.asyncio does not
    run on trio).

    With ``settings.cluster``, the client is redis-py's ``RedisCluster`` (typed as ``Redis``:
    Conveyor uses only commands both have, and every multi-key command stays in one slot).
    """
    kwargs, kind = _pool_kwargs(
        settings, blocking=blocking, max_connections=max_connections, max_block=max_block
    )
    backoff = ExponentialWithJitterBackoff(
        base=settings.retry_backoff_base, cap=settings.retry_backoff_cap
    )
    retries = Retry(
        backoff, settings.retries if retry else 0, supported_errors=_retry_errors(blocking)
    )
    if settings.cluster:
        return cast(Redis, AsyncRedisCluster(retry=retries, **_cluster_kwargs(kwargs, kind)))
    kwargs["redis_connect_func"] = bounded_handshake
    connection_class: type[AsyncConnection | AsyncUnixConnection]
    if fast_paths_enabled():  # broker/fastpath.py: shortcuts checked against redis-py's path
        connection_class = {
            "tcp": FastConnection,
            "tls": FastSSLConnection,
            "unix": FastUnixConnection,
        }[kind]
        pool: BlockingConnectionPool = FastPool(
            connection_class=connection_class, retry=retries, **kwargs
        )
    else:
        connection_class = {
            "tcp": AsyncConnection,
            "tls": AsyncSSLConnection,
            "unix": AsyncUnixConnection,
        }[kind]
        pool = BlockingConnectionPool(connection_class=connection_class, retry=retries, **kwargs)
    return Redis.from_pool(pool)


def _cluster_kwargs(kwargs: dict[str, Any], kind: str) -> dict[str, Any]:
    """Pool options turned into RedisCluster options (it keeps one pool per node)."""
    if kind == "unix" or kwargs.get("db"):
        raise ValueError("Redis Cluster needs a TCP address and database 0")
    options = {k: v for k, v in kwargs.items() if k not in ("timeout", "db")}
    if kind == "tls":
        options["ssl"] = True
    return options


def create_sync_client(
    settings: RedisSettings, *, blocking: bool = False, max_connections: int | None = None
) -> redis.Redis:
    """The blocking-I/O twin of :func:`create_client` (``redis.Redis``), same pinned options.

    For threads (heartbeats) and command-line helpers. Close it with ``client.close()``.
    """
    kwargs, kind = _pool_kwargs(settings, blocking=blocking, max_connections=max_connections)
    backoff = ExponentialWithJitterBackoff(
        base=settings.retry_backoff_base, cap=settings.retry_backoff_cap
    )
    retry = SyncRetry(backoff, settings.retries, supported_errors=_retry_errors(blocking))
    if settings.cluster:
        return cast(redis.Redis, SyncRedisCluster(retry=retry, **_cluster_kwargs(kwargs, kind)))
    connection_class: type[redis.Connection | redis.UnixDomainSocketConnection] = {
        "tcp": redis.Connection,
        "tls": redis.SSLConnection,
        "unix": redis.UnixDomainSocketConnection,
    }[kind]
    pool = redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]  # untyped in redis-py
        connection_class=connection_class, retry=retry, **kwargs
    )
    return redis.Redis.from_pool(pool)


def server_url(client: Redis) -> str:
    """A client's server as a URL without credentials, for error messages."""
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    db = kwargs.get("db", 0)
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={db}"
    host = str(kwargs.get("host", "localhost"))
    host = f"[{host}]" if ":" in host else host
    scheme = "rediss" if issubclass(pool.connection_class, AsyncSSLConnection) else "redis"
    return f"{scheme}://{host}:{kwargs.get('port', 6379)}/{db}"


# A timeout parameter rather than the caller's cancel scope: its expiry becomes a
# BrokerConnectionError naming the server, which a caller's fail_after cannot say.
async def ping(settings: RedisSettings, *, timeout: float = 10.0) -> float:
    """Connect, PING and disconnect; return the round trip in seconds (connection included).

    Waits at most ``timeout`` seconds. Needs asyncio.

    Raises:
        BrokerConnectionError: Redis cannot be reached, refused our credentials, or did not
            answer within ``timeout``; the message shows the URL without its password.
    """
    client = create_client(settings, max_connections=1)
    try:
        with anyio.move_on_after(timeout), translate_errors(settings):
            started = time.perf_counter()
            await client.ping()
            return time.perf_counter() - started
        raise BrokerConnectionError(
            settings.redacted_url, f"no answer to PING within {timeout:.1f}s"
        )
    finally:
        with anyio.move_on_after(2, shield=True):  # runs even if the caller was cancelled
            await client.aclose()
