"""Every reach past redis-py's public API, in one place: hot-path shortcuts and two corrections.

**Shortcuts.** Every command checks a connection out of the pool and back in, packs itself and
writes to the socket; redis-py's own path for those costs more than the rest of a broker step.
Each shortcut here takes only the case it is sure of and hands everything else to redis-py's
own code, so a dead connection, a Redis restart, a server that closed an idle connection, a
reset or a timeout are handled by redis-py exactly as without the shortcut
(tests/integration/test_fastpath.py runs each of those failures through both paths and
compares). :func:`fast_paths_enabled` turns them all off for a redis-py version they were not
checked on (:data:`CHECKED_REDIS`).

**Corrections** (always on; :mod:`conveyor.broker.clients` wires them into every client):
:class:`Retry` and :class:`SyncRetry` do not retry what fails the same way every time (a
refused password, a server that took the connection and never answered), and
:func:`bounded_handshake` gives a new connection's handshake the connect timeout, where
redis-py would wait a socket timeout per read, or for ever on a blocking connection.

redis-py internals the project touches (checked on the versions in :data:`CHECKED_REDIS`;
re-check each when the pin in pyproject.toml moves). Nothing outside this module and its
sibling :mod:`conveyor.broker.fastpipe` reads or overrides redis-py's internals, except where
marked below:

``redis.asyncio.BlockingConnectionPool`` (:class:`FastPool`)
    ``get_connection()`` and ``release()`` overridden; reads ``_available_connections`` (a
    list, LIFO: redis-py pops its last item), ``_in_use_connections`` (a set),
    ``_in_maintenance``, ``_lock`` (an ``asyncio.Lock``: held while redis-py rewrites the
    pool) and ``_condition`` (an ``asyncio.Condition``; its private ``_waiters`` tells whether
    a task waits for a connection).
``redis.asyncio.Connection`` and its SSL and unix flavours (:class:`FastConnectionMixin`)
    ``pack_command()``, ``send_packed_command()`` and ``read_response()`` overridden; reads
    ``_writer`` (the ``asyncio.StreamWriter``), ``is_connected``, ``socket_timeout``,
    ``protocol``, ``health_check_interval`` and ``_parser``; sets ``next_health_check``;
    calls ``can_read()``, ``check_health()``, ``should_reconnect()`` and
    ``disconnect(nowait=True)``.
``redis._parsers.hiredis`` (:meth:`FastConnectionMixin.read_response`)
    ``_AsyncHiredisParser`` (the asyncio hiredis parser): its ``_reader`` (a
    ``hiredis.Reader``, whose ``gets()`` answers ``NOT_ENOUGH_DATA`` until a reply is whole)
    and ``_connected`` (False once redis-py disconnected it).
``redis.asyncio.client.Pipeline`` (:func:`lone_command`; :mod:`conveyor.broker.fastpipe`)
    reads ``command_stack`` (a list of ``(args, options)`` tuples); the caller
    (:mod:`conveyor.broker.pipelining`) passes ``options`` back to ``execute_command``.
    fastpipe also reads ``connection_pool``, ``connection``, ``is_transaction``,
    ``explicit_transaction``, ``watching``, ``scripts``, ``response_callbacks`` and
    ``UNWATCH_COMMANDS``, sets ``connection``, and calls ``parse_response``,
    ``raise_first_error`` and ``reset``; of the connection it reads ``retry``,
    ``himport_registry`` (its ``revision``: 0 while no HIMPORT fieldset was ever
    registered) and ``_resp2_fallback`` (not in 8.1: all replies go to ``parse_response``),
    calls ``pack_commands`` and ``disconnect(error=, failure_count=)``; of ``redis.client``,
    the reply options ``EMPTY_RESPONSE`` and ``NEVER_DECODE``.
``redis.asyncio.retry.Retry`` and ``redis.retry.Retry`` (:class:`Retry`, :class:`SyncRetry`)
    ``call_with_retry(do, fail, is_retryable, with_failure_count)`` overridden: redis-py's
    connections and clients call it for every connect and command; ``is_retryable`` is the
    per-call predicate (None from redis-py's own callers).
``redis.asyncio.connection.AbstractConnection`` (:func:`bounded_handshake`)
    the ``redis_connect_func`` option: ``connect_check_health()`` awaits it in place of
    ``on_connect_check_health()`` and disconnects on any ``RedisError`` it raises (so
    :class:`HandshakeTimeout` is one); calls ``on_connect_check_health(check_health=False)``
    and reads ``socket_connect_timeout``.
``ConnectionPool.connection_kwargs`` and ``.connection_class`` (undocumented attributes)
    read by :func:`conveyor.broker.clients.server_url` to name a client's server.
Tests only: tests/integration/test_fastpath.py also reads ``_available_connections``,
``_in_use_connections`` and a connection's ``_reader`` to stage and check its failures, and
checks that every name listed here exists.

What the shortcuts skip, and why that is safe here: redis-py's observability hooks
(``record_*``: no-ops unless OpenTelemetry metrics are set up through redis-py, which Conveyor
does not do); the ``AfterConnectionReleasedEvent`` (it re-authenticates streaming credential
providers; Conveyor passes a static password); maintenance notifications (RESP3 only; Conveyor
speaks RESP2). A pool in maintenance mode, or whose lock is held, always takes redis-py's path.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, cast

import hiredis
import redis
from redis import exceptions as rex
from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
from redis._parsers.hiredis import _AsyncHiredisParser
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.connection import Connection as AsyncConnection
from redis.asyncio.connection import SSLConnection as AsyncSSLConnection
from redis.asyncio.connection import UnixDomainSocketConnection as AsyncUnixConnection
from redis.asyncio.retry import Retry as AsyncRetry
from redis.retry import Retry as SyncRetryBase

__all__ = (
    "CHECKED_REDIS",
    "FastConnection",
    "FastPool",
    "FastSSLConnection",
    "FastUnixConnection",
    "HandshakeTimeout",
    "Retry",
    "SyncRetry",
    "bounded_handshake",
    "fast_paths_enabled",
    "lone_command",
)

_T = TypeVar("_T")

# redis-py versions whose internals above were read and whose failure behaviour
# tests/integration/test_fastpath.py compared; pyproject.toml pins `redis` to this range.
CHECKED_REDIS = ("8.1.0", "8.2.0")


def fast_paths_enabled() -> bool:
    """Whether the shortcuts are used: on a checked redis-py, unless
    ``CONVEYOR_REDIS_FAST_PATHS=0`` turns them off (redis-py's own path, for comparison)."""
    if os.environ.get("CONVEYOR_REDIS_FAST_PATHS", "1") == "0":
        return False
    return redis.__version__ in CHECKED_REDIS


# How a connection that speaks RESP2 gives its protocol (the project pins RESP2: clients.py).
_RESP2 = (None, 2, "2")

# Arguments this long (or memoryviews: tensors) go out as chunks of their own, uncopied.
_PACK_INLINE_MAX = 6000


class FastConnectionMixin:
    """Packs with hiredis, and writes without ``asyncio.wait_for`` when the socket takes the
    command at once. Mixed in before a ``redis.asyncio`` connection class."""

    def pack_command(self, *args: Any) -> list[bytes]:
        """hiredis (C) packs a job's XADD ~8x faster than redis-py's Python packer. A command
        carrying a large value or a memoryview keeps redis-py's packer, which hands a tensor
        to the socket without copying it; so does anything hiredis refuses (redis-py then
        raises its own ``DataError``). The bytes are the same
        (tests/integration/test_fastpath.py)."""
        try:
            # C-speed checks over every argument (a job's XADD has ~25): no memoryview, and
            # none longer than the limit; len() of a number raises: look at each then
            small = memoryview not in map(type, args) and max(map(len, args)) <= _PACK_INLINE_MAX
        except TypeError:
            small = not any(
                isinstance(arg, memoryview)
                or (isinstance(arg, bytes | str) and len(arg) > _PACK_INLINE_MAX)
                for arg in args
            )
        if not small:
            return super().pack_command(*args)  # type: ignore[misc, no-any-return]
        head = args[0]
        # a command of two words ("XINFO GROUPS") goes out as two arguments, as redis-py does
        if (isinstance(head, str) and " " in head) or (isinstance(head, bytes) and b" " in head):
            args = (*head.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            return super().pack_command(*args)  # type: ignore[misc, no-any-return]

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        """redis-py bounds every send with ``asyncio.wait_for``, which on Python 3.11 wraps the
        write in a task of its own (~20 us a round trip). A loopback or LAN socket with an
        empty send buffer takes a command whole: write it directly, and only if bytes stay
        buffered wait for them within the timeout, as redis-py would. A connection that is
        not connected, closing or backlogged goes through redis-py's own send."""
        conn = cast(AsyncConnection, self)
        writer = conn._writer
        if (
            not conn.is_connected
            or writer is None
            or writer.transport.is_closing()  # redis-py raises its ConnectionError for it
            or writer.transport.get_write_buffer_size()
        ):
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
            return
        if check_health:
            await conn.check_health()  # type: ignore[no-untyped-call]
            if not conn.is_connected:  # the health check's PING failed and reconnected
                await super().send_packed_command(command, False)  # type: ignore[misc]
                return
            writer = cast(asyncio.StreamWriter, conn._writer)
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        try:
            writer.writelines(command)
            if writer.transport.is_closing():
                # The send failed (a reset): asyncio closed the transport without raising;
                # redis-py's drain() would raise here, so do we.
                raise ConnectionResetError("Connection lost")
            if writer.transport.get_write_buffer_size():
                await asyncio.wait_for(writer.drain(), conn.socket_timeout)
        except TimeoutError:
            await conn.disconnect(nowait=True)
            raise rex.TimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await conn.disconnect(nowait=True)
            raise rex.ConnectionError(f"Error while writing to socket: {exc}") from exc
        except BaseException:
            await conn.disconnect(nowait=True)  # a half-sent command: the connection is spoilt
            raise

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,
        *,
        disconnect_on_error: bool = True,
        push_request: bool | None = False,
    ) -> Any:
        """A reply the parser holds whole already (a pipeline's second reply and on: they
        arrive together) is taken without redis-py's ``asyncio.timeout`` around the read,
        which costs a loop timer per reply (~4 us) and cannot fire when nothing is awaited.
        What follows is redis-py's own handling of a reply: an error reply is raised, one
        that says the connection is unusable (``LOADING``, say) drops the connection first,
        a malformed one always does. Anything else, or a reply not whole yet, takes redis-py's
        own read."""
        parser = self._parser  # type: ignore[attr-defined]
        if (
            type(parser) is not _AsyncHiredisParser
            or timeout is not None
            or disable_decoding
            or push_request
            or not parser._connected
            or self.protocol not in _RESP2  # type: ignore[attr-defined]
        ):
            return await super().read_response(  # type: ignore[misc]
                disable_decoding,
                timeout,
                disconnect_on_error=disconnect_on_error,
                push_request=push_request,
            )
        try:
            response = parser._reader.gets()  # type: ignore[attr-defined]  # set on connect
        except BaseException:  # a protocol error: what is left on the socket is unusable
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise
        if response is _NOT_ENOUGH_DATA:
            return await super().read_response(  # type: ignore[misc]
                disable_decoding,
                timeout,
                disconnect_on_error=disconnect_on_error,
                push_request=push_request,
            )
        if isinstance(response, rex.ConnectionError) or (
            type(response) is list and response and isinstance(response[0], rex.ConnectionError)
        ):
            error = response if isinstance(response, rex.ConnectionError) else response[0]
            if disconnect_on_error:
                await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise error
        if self.health_check_interval:  # type: ignore[attr-defined]
            loop_time = asyncio.get_running_loop().time()
            self.next_health_check = loop_time + self.health_check_interval  # type: ignore[attr-defined]
        if isinstance(response, rex.ResponseError):
            raise response
        return response


class FastConnection(FastConnectionMixin, AsyncConnection):
    pass


class FastSSLConnection(FastConnectionMixin, AsyncSSLConnection):
    pass


class FastUnixConnection(FastConnectionMixin, AsyncUnixConnection):
    pass


class FastPool(BlockingConnectionPool):
    """redis-py's ``BlockingConnectionPool``, with a shortcut for the common checkout.

    redis-py's blocking pool checks a connection out and in under an asyncio Condition and a
    timeout, with observability hooks: ~8 us a command, more than hiredis spends packing it.
    When the connection redis-py would hand out next (the last idle one) is connected and
    clean (``can_read()`` is False: nothing unread, no EOF or reset seen) and nobody waits,
    take it or give it back directly. Anything else takes redis-py's own path, which
    reconnects a connection the server closed (a restart, ``timeout``, ``CLIENT KILL``),
    retrying the connect, before handing it out.
    """

    async def get_connection(self, *args: Any, **kwargs: Any) -> AsyncConnection:
        available = self._available_connections
        if (
            available
            and not args
            and not kwargs
            and not self._in_maintenance
            and not self._lock.locked()
        ):
            connection = available[-1]
            if connection.is_connected:
                try:
                    dirty = await connection.can_read()
                except (rex.ConnectionError, rex.TimeoutError, OSError):
                    dirty = True  # closed by the server: redis-py's path reconnects it
                if not dirty and available and available[-1] is connection:
                    available.pop()
                    self._in_use_connections.add(connection)
                    return cast(AsyncConnection, connection)
        connection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        return cast(AsyncConnection, connection)

    async def release(self, connection: AbstractConnection) -> None:
        waiting = getattr(self._condition, "_waiters", True)  # unknown: assume someone waits
        if (
            not waiting
            and not self._in_maintenance
            and not self._lock.locked()
            and connection in self._in_use_connections
            and not connection.should_reconnect()  # type: ignore[no-untyped-call]
        ):
            self._in_use_connections.remove(connection)
            self._available_connections.append(connection)
            return
        await super().release(connection)


def lone_command(pipe: Pipeline) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """The one command a pipeline holds, as ``(args, options)`` for ``execute_command``, or
    None (several commands, or a cluster pipeline). Sent as a plain command it costs ~25 us
    less than a pipeline, and redis-py retries it the same way (both re-send on a connection
    error within the client's retry policy)."""
    stack = getattr(pipe, "command_stack", None)  # a cluster pipeline has none
    if stack is not None and len(stack) == 1 and type(stack[0]) is tuple:
        args, options = stack[0]
        return args, options
    return None


# -- corrections: always on ----------------------------------------------------------------------


class HandshakeTimeout(rex.TimeoutError):
    """A server took the connection and did not answer its handshake (:func:`bounded_handshake`).

    A redis-py ``TimeoutError``, not a Conveyor error: redis-py's connect path must see it as
    its own (it disconnects on any ``RedisError``), and ``translate_errors`` then reports it
    as a timeout naming the server. It lives here, not in ``conveyor.errors``, because the
    core does not import redis-py.
    """


def _retryable(error: Exception) -> bool:
    # AuthenticationError is a ConnectionError to redis-py, but a wrong password or a disabled
    # user fails the same way on every try: give up at once instead of hammering AUTH. So does
    # a server that accepted the connection and then said nothing for a connect timeout.
    return not isinstance(
        error, rex.AuthenticationError | rex.AuthorizationError | HandshakeTimeout
    )


class Retry(AsyncRetry):
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


class SyncRetry(SyncRetryBase):
    """redis-py's ``Retry``, except that it does not retry what cannot succeed."""

    def call_with_retry(
        self,
        do: Callable[[], _T],
        fail: Callable[[Exception], Any] | Callable[[Exception, int], Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> _T:
        return super().call_with_retry(do, fail, is_retryable or _retryable, with_failure_count)


async def bounded_handshake(connection: AbstractConnection) -> None:
    """redis-py's handshake of a new connection (AUTH, SELECT, CLIENT SETNAME), within the
    connect timeout: its reads would otherwise wait a socket timeout each, or for ever on a
    blocking connection, against a server that accepts and never answers. Given to redis-py
    as ``redis_connect_func``."""
    try:
        async with asyncio.timeout(connection.socket_connect_timeout):
            # check_health=False: a PING before the handshake's first command would, on a
            # timeout, reconnect from inside the handshake (and so call it again, nested)
            await connection.on_connect_check_health(check_health=False)
    except TimeoutError:
        raise HandshakeTimeout(
            f"no answer to the connection's handshake within {connection.socket_connect_timeout:g}s"
            " (is a Redis server listening there?)"
        ) from None
