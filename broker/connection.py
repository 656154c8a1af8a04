"""Connect to Redis from one URL: settings parsed once, clients with pinned options, and errors.

``CONVEYOR_REDIS_URL`` names the server (:func:`default_redis_url`; nothing else reads it).
:meth:`RedisSettings.from_url` parses it once; :func:`create_client` makes a ``redis.asyncio``
client from it; :func:`translate_errors` turns connection failures into
:class:`conveyor.errors.BrokerConnectionError` that name the server without its password.

URL forms (``user:password@`` is optional everywhere; percent-encode special characters)::

    redis://[user[:password]@]host[:port][/db]
    rediss://[user[:password]@]host[:port][/db][?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required]
    unix://[user[:password]@]/path/to/redis.sock[?db=N]

Query options (any URL): ``db``, ``socket_timeout``, ``socket_connect_timeout``,
``max_connections``, ``pool_timeout``, ``retries``, ``health_check_interval``,
``client_name`` and ``cluster`` (reserved); TLS only (``rediss://``): ``ssl_ca_certs``,
``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs`` (``none``, ``optional`` or ``required``)
and ``ssl_check_hostname``. Unknown options are an error, not ignored.

``redis.asyncio`` runs on asyncio only: :func:`create_client` and :func:`ping` need an asyncio
event loop, and a client must only be used on the loop that first used it.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, cast
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import anyio
import redis
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from redis import exceptions as rex
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.connection import Connection as AsyncConnection
from redis.asyncio.connection import SSLConnection as AsyncSSLConnection
from redis.asyncio.connection import UnixDomainSocketConnection as AsyncUnixConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.retry import Retry as SyncRetry

from conveyor.broker.fastpath import (
    FastConnection,
    FastPool,
    FastSSLConnection,
    FastUnixConnection,
    fast_paths_enabled,
)
from conveyor.errors import BrokerConnectionError, ConveyorError, InvalidRedisURL

__all__ = (
    "DEFAULT_REDIS_URL",
    "PROTOCOL",
    "RedisSettings",
    "create_client",
    "create_sync_client",
    "default_redis_url",
    "ping",
    "redact_url",
    "translate_errors",
)

_T = TypeVar("_T")

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# RESP2: the reply shapes redis-py's stream and list parsers were written for, and what the
# broker's code reads (RESP3 turns XREAD replies into dicts). RESP3 would also switch on
# redis-py 8's maintenance-notification handling, which we do not use.
PROTOCOL = 2

_SCHEMES = ("redis", "rediss", "unix")
_QUERY_OPTIONS = frozenset(
    {
        "db",
        "socket_timeout",
        "socket_connect_timeout",
        "max_connections",
        "health_check_interval",
        "client_name",
        "retries",
        "pool_timeout",
        "cluster",
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_cert_reqs",
        "ssl_check_hostname",
    }
)
_TLS_OPTIONS = (
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)


def default_redis_url() -> str:
    """``CONVEYOR_REDIS_URL``, else ``redis://127.0.0.1:6379/0``. The only reader of that
    variable: processes call it once, at start-up, and pass the settings down."""
    return os.environ.get("CONVEYOR_REDIS_URL") or DEFAULT_REDIS_URL


_QUERY_SECRET = re.compile(r"((?:^|[?&;])[^=&;]*pass[^=&;]*=)[^&;#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``; safe on malformed URLs.

    For logs and errors about a URL that was not (or could not be) parsed; a parsed
    :class:`RedisSettings` has :attr:`RedisSettings.redacted_url`. The authority is found by
    ``urllib.parse.urlsplit``. When an ``@`` comes after it (a password holding an unencoded
    ``/``, ``?`` or ``#`` ends the authority early), everything up to the last ``@`` counts as
    the user part: it hides more, never less.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _QUERY_SECRET.sub(r"\1***", url)
    try:
        netloc: str | None = urlsplit(url).netloc
    except ValueError:  # e.g. an unbalanced "["
        netloc = None
    after = rest[len(netloc) :] if netloc is not None and rest.startswith(netloc) else None
    if netloc is not None and after is not None and "@" not in after:
        userinfo, at, host = netloc.rpartition("@")
    else:  # ambiguous, or no parse: the user part runs to the last "@" of the URL
        userinfo, at, after = rest.rpartition("@")
        host = ""
    if at:
        user, colon, _ = userinfo.partition(":")
        userinfo = f"{user}:***" if colon else user
    return f"{scheme}://{userinfo}{at}{host}" + _QUERY_SECRET.sub(r"\1***", after)


class RedisSettings(BaseModel):
    """Where Redis is and how we talk to it: parsed once from a URL, then passed down.

    The password is a ``SecretStr``: it shows in no ``repr``, ``str`` or :attr:`redacted_url`.
    Every default is documented beside its field.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    scheme: Literal["redis", "rediss", "unix"] = "redis"
    host: str = "127.0.0.1"
    port: int = Field(default=6379, ge=1, le=65535)
    path: str | None = None  # the socket of a unix:// URL
    db: int = Field(default=0, ge=0)
    username: str | None = None  # an ACL user; None is Redis's "default" user
    password: SecretStr | None = None

    # TLS (rediss:// only). ssl_ca_certs=None trusts the system's CAs.
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None  # a client certificate, for tls-auth-clients yes
    ssl_keyfile: str | None = None
    ssl_cert_reqs: Literal["none", "optional", "required"] = "required"
    ssl_check_hostname: bool = True  # ignored (off) when ssl_cert_reqs is "none"

    # Seconds to open a connection (TCP + TLS + AUTH); failures are retried, see `retries`.
    socket_connect_timeout: float = Field(default=5.0, gt=0)
    # Seconds to wait for a reply on a command connection: a 100 MiB payload over 100 Mbit/s
    # takes ~8.4 s. Never use a command client for BLOCK: see create_client(blocking=True).
    socket_timeout: float = Field(default=10.0, gt=0)
    # The same for blocking connections (BLMPOP, XREADGROUP BLOCK). None: socket_timeout plus
    # the longest BLOCK the client sends (create_client's max_block), so a BLOCK always ends
    # before its read times out (DESIGN.md), and a server that stops answering is noticed.
    # Blocking clients never retry a timeout, so a BLOCK is never silently re-sent.
    blocking_socket_timeout: float | None = Field(default=None, gt=0)
    # Retries of a command after a connection error (or a timeout, on command connections),
    # with exponential backoff and jitter from retry_backoff_base up to retry_backoff_cap s.
    # Worst case for one command: (retries + 1) * (connect or socket timeout) + backoffs.
    retries: int = Field(default=3, ge=0)
    retry_backoff_base: float = Field(default=0.05, gt=0)
    retry_backoff_cap: float = Field(default=1.0, gt=0)
    # PING a connection idle longer than this (s) before reusing it; 0 turns it off.
    health_check_interval: float = Field(default=30.0, ge=0)
    # Connections per client (pool). A command waits up to pool_timeout s for a free one,
    # then fails with BrokerConnectionError; redis-py's own default is 100 and fails at once.
    max_connections: int = Field(default=50, ge=1)
    pool_timeout: float = Field(default=10.0, gt=0)
    client_name: str | None = None  # CLIENT SETNAME on connect (needs that ACL permission)
    # Redis Cluster (`?cluster=true`): the URL names one node; redis-py's cluster client
    # discovers the others and routes each command to the node of its key's slot.
    cluster: bool = False

    @model_validator(mode="after")
    def _check_scheme(self) -> Self:
        if self.scheme == "unix" and not self.path:
            raise ValueError("a unix:// URL needs a socket path: unix:///path/to/redis.sock")
        if self.scheme != "rediss":
            given = [name for name in _TLS_OPTIONS if name in self.model_fields_set]
            if given:
                raise ValueError(f"TLS options {', '.join(given)} need a rediss:// URL")
        return self

    @classmethod
    def from_url(cls, url: str) -> RedisSettings:
        """Parse a ``redis://``, ``rediss://`` or ``unix://`` URL (forms in the module doc).

        Raises:
            InvalidRedisURL: (a ``ValueError``) the URL is malformed or has an unknown option;
                the message shows the URL without its password.
        """
        shown = redact_url(url)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            # urllib's message can quote a piece of the URL ("... as 'Pw-7'"): never show it
            reason = str(exc).partition(" as ")[0]
            raise InvalidRedisURL(
                f"invalid Redis URL {shown}: {reason} (percent-encode any /, ?, #, @ or : in "
                "the user name and password, e.g. ? as %3F)"
            ) from None
        rest = url.partition("://")[2]
        tail = rest[len(parts.netloc) :] if rest.startswith(parts.netloc) else rest
        if "@" not in parts.netloc and "@" in tail.partition("=")[0]:
            # "u:12/3@host": urllib ends the host part at the "/", so the password would be
            # read as a host and path: refuse rather than connect somewhere unexpected
            raise InvalidRedisURL(
                f"invalid Redis URL {shown}: an '@' after the host part; percent-encode any "
                "/, ?, # or @ in the user name and password (e.g. ? as %3F, @ as %40)"
            )
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise InvalidRedisURL(
                f"invalid Redis URL {shown}: scheme {scheme!r} is not one of "
                "redis://, rediss:// or unix:// (Conveyor talks to Redis, not HTTP)"
                if scheme in ("http", "https")
                else f"invalid Redis URL {shown}: scheme {scheme!r} is not one of "
                "redis://, rediss:// or unix://"
            )
        fields: dict[str, object] = {"scheme": scheme}
        if parts.username:
            fields["username"] = unquote(parts.username)
        if parts.password:
            fields["password"] = SecretStr(unquote(parts.password))
        if scheme == "unix":
            fields["path"] = unquote(parts.path)
        else:
            if parts.hostname:
                fields["host"] = parts.hostname
            if port is not None:
                fields["port"] = port
            db = parts.path.lstrip("/")
            if db:
                fields["db"] = db
        seen: set[str] = set()
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key not in _QUERY_OPTIONS:
                known = ", ".join(sorted(_QUERY_OPTIONS))
                raise InvalidRedisURL(
                    f"invalid Redis URL {shown}: unknown option {key!r}; known: {known}"
                )
            if key in seen:
                raise InvalidRedisURL(f"invalid Redis URL {shown}: option {key!r} is given twice")
            seen.add(key)
            fields[key] = value
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            # Only locations and messages: an input value could be secret.
            problems = "; ".join(
                ".".join(map(str, err["loc"])) + ": " + err["msg"].removeprefix("Value error, ")
                if err["loc"]
                else err["msg"].removeprefix("Value error, ")
                for err in exc.errors()
            )
            raise InvalidRedisURL(f"invalid Redis URL {shown}: {problems}") from None

    def _url(self, password: str) -> str:
        userinfo = quote(self.username or "", safe="")
        if self.password is not None:
            userinfo += f":{password}"
        if userinfo:
            userinfo += "@"
        query: dict[str, str] = {}
        for name in sorted(self.model_fields_set):
            if name in _QUERY_OPTIONS and name != "db":
                value = getattr(self, name)
                query[name] = str(value).lower() if isinstance(value, bool) else str(value)
        if self.scheme == "unix":
            query = {"db": str(self.db), **query}
            location = quote(self.path or "", safe="/")
        else:
            host = f"[{self.host}]" if ":" in self.host else self.host
            location = f"{host}:{self.port}/{self.db}"
        tail = f"?{urlencode(query, safe='/')}" if query else ""
        return f"{self.scheme}://{userinfo}{location}{tail}"

    @property
    def redacted_url(self) -> str:
        """The URL with the password as ``***``: what every log line and error shows."""
        return self._url("***")

    def to_url(self) -> str:
        """The URL *with* the password, for handing to a child process. Never log it."""
        secret = "" if self.password is None else self.password.get_secret_value()
        return self._url(quote(secret, safe=""))


class _HandshakeTimeout(rex.TimeoutError):
    """A server took the connection and did not answer its handshake (see _handshake)."""


def _retryable(error: Exception) -> bool:
    # AuthenticationError is a ConnectionError to redis-py, but a wrong password or a disabled
    # user fails the same way on every try: give up at once instead of hammering AUTH. So
    # does a server that accepted the connection and then said nothing for a connect timeout.
    return not isinstance(
        error, rex.AuthenticationError | rex.AuthorizationError | _HandshakeTimeout
    )


class _Retry(Retry):
    """redis-py's asyncio ``Retry``, except that it does not retry what cannot succeed."""

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[_T]],
        fail: Callable[[Exception], Any] | Callable[[Exception, int], Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> _T:
        return await super().call_with_retry(
            do, fail, is_retryable or _retryable, with_failure_count
        )


class _SyncRetry(SyncRetry):
    """redis-py's ``Retry``, except that it does not retry what cannot succeed."""

    def call_with_retry(
        self,
        do: Callable[[], _T],
        fail: Callable[[Exception], Any] | Callable[[Exception, int], Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> _T:
        return super().call_with_retry(do, fail, is_retryable or _retryable, with_failure_count)


def _retry_errors(blocking: bool) -> tuple[type[rex.RedisError], ...]:
    # A blocking connection retries only connection errors: re-sending a BLOCK whose read
    # timed out would silently wait again (DESIGN.md, redis-py pitfalls).
    return (rex.ConnectionError,) if blocking else (rex.ConnectionError, rex.TimeoutError)


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
    :func:`translate_errors`. Needs asyncio (redis.asyncio does not run on trio).

    With ``settings.cluster``, the client is redis-py's ``RedisCluster`` (typed as ``Redis``:
    Conveyor uses only commands both have, and every multi-key command stays in one slot).
    """
    kwargs, kind = _pool_kwargs(
        settings, blocking=blocking, max_connections=max_connections, max_block=max_block
    )
    backoff = ExponentialWithJitterBackoff(
        base=settings.retry_backoff_base, cap=settings.retry_backoff_cap
    )
    retries = _Retry(
        backoff, settings.retries if retry else 0, supported_errors=_retry_errors(blocking)
    )
    if settings.cluster:
        return cast(Redis, AsyncRedisCluster(retry=retries, **_cluster_kwargs(kwargs, kind)))
    kwargs["redis_connect_func"] = _handshake
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


async def _handshake(connection: AbstractConnection) -> None:
    """redis-py's handshake of a new connection (AUTH, SELECT, CLIENT SETNAME), within the
    connect timeout: its reads would otherwise wait a socket timeout each, or for ever on a
    blocking connection, against a server that accepts and never answers."""
    try:
        async with asyncio.timeout(connection.socket_connect_timeout):
            # check_health=False: a PING before the handshake's first command would, on a
            # timeout, reconnect from inside the handshake (and so call it again, nested)
            await connection.on_connect_check_health(check_health=False)
    except TimeoutError:
        raise _HandshakeTimeout(
            f"no answer to the connection's handshake within {connection.socket_connect_timeout:g}s"
            " (is a Redis server listening there?)"
        ) from None


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
    retry = _SyncRetry(backoff, settings.retries, supported_errors=_retry_errors(blocking))
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


def _reason(exc: BaseException) -> str:
    """What went wrong, in words, then redis-py's own message (which holds no password)."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, rex.AuthenticationError):
        return f"authentication failed (check the user name and password): {detail}"
    if isinstance(exc, rex.AuthorizationError | rex.NoPermissionError):
        return f"permission denied (check the user's ACL rules): {detail}"
    if isinstance(exc, rex.BusyLoadingError):
        return f"Redis is loading its data set; retry shortly: {detail}"
    if isinstance(exc, rex.MaxConnectionsError) or "No connection available" in detail:
        return f"connection pool exhausted (raise max_connections?): {detail}"
    if isinstance(exc, rex.InvalidResponse):
        return (
            "the server's reply is not Redis's protocol (is another service, such as an HTTP "
            f"server, listening on that port?): {detail}"
        )
    if isinstance(exc, rex.TimeoutError):
        return f"timed out: {detail}"
    if isinstance(exc, rex.ConnectionError):
        return f"connection failed: {detail}"
    return f"{type(exc).__name__}: {detail}"


class translate_errors:
    """Turn Redis connection failures raised inside into ``BrokerConnectionError``.

    Maps ``redis`` ``ConnectionError`` (and its ``AuthenticationError``, ``BusyLoadingError``,
    pool exhaustion ...), ``TimeoutError``, ``NoPermissionError`` (an ACL refusal),
    ``InvalidResponse`` (something other than Redis answered) and ``OSError`` (e.g. TLS
    failures) to :class:`~conveyor.errors.BrokerConnectionError` with the server's redacted URL
    and a readable reason, keeping the original as ``__cause__``.
    ``target`` is the settings, or a URL (redacted here).

    Left alone: Conveyor's own errors, the builtin ``TimeoutError`` (anyio's ``fail_after``:
    the caller's deadline, not the broker's failure), cancellation, and other Redis replies
    (``ResponseError`` such as ``BUSYGROUP`` or ``WRONGTYPE``), which the broker handles.

    A plain ``with`` block, usable around ``await`` in async code as well. A class, not a
    ``@contextmanager`` generator: it wraps every broker step, and a generator costs ~2 us more.
    """

    __slots__ = ("_target",)

    def __init__(self, target: RedisSettings | str) -> None:
        self._target = target

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, ConveyorError) or type(exc) is TimeoutError:
            return
        if isinstance(
            exc,
            rex.ConnectionError
            | rex.TimeoutError
            | rex.NoPermissionError
            | rex.InvalidResponse
            | OSError,
        ):
            target = self._target
            url = target.redacted_url if isinstance(target, RedisSettings) else redact_url(target)
            raise BrokerConnectionError(url, _reason(exc)) from exc


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
