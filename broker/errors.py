"""The one place Redis errors become Conveyor errors: :class:`translate_errors`.

Every broker step runs inside ``with translate_errors(where):``, so what leaves the broker is a
:class:`~conveyor.errors.ConveyorError` (or a Redis reply the broker handles itself):

- a connection failure (refused, reset, timed out, wrong password, ACL refusal, TLS failure,
  something other than Redis answering, an exhausted pool) becomes
  :class:`~conveyor.errors.BrokerConnectionError`, naming the server without its password;
- Redis refusing a write for want of memory (``OOM``) becomes
  :class:`~conveyor.errors.BrokerOutOfMemory`, which says what to do.

Why OOM is worth its own error: with ``maxmemory`` reached and the ``noeviction`` policy,
Redis refuses every command that may add memory (XADD, LPUSH, SET, HSET, a script that
writes, ...) with an ``OOM`` error and still runs the others (XACK, XDEL, EXPIRE, BLMPOP,
XREADGROUP). That is what Conveyor needs: nothing is dropped, and what could not be written is
written later. An ``allkeys-*`` policy would instead evict job streams, reply streams and
doorbells: jobs and answers vanish silently.

The faces (``ClientBroker``, ``WorkerBroker``) wrap each operation in the stricter
:class:`translate_every_error`: there, any other Redis error reply (``WRONGTYPE`` on a key
someone else wrote, ...) becomes :class:`~conveyor.errors.BrokerCommandError`, so no redis-py
exception leaves the broker.

A pipeline run with ``raise_on_error=False`` hands refusals back as results:
:func:`is_out_of_memory` tells one apart and :func:`out_of_memory` makes its error.
"""

from __future__ import annotations

from types import TracebackType

from redis import exceptions as rex

from conveyor.broker.settings import RedisSettings, redact_url
from conveyor.errors import (
    BrokerCommandError,
    BrokerConnectionError,
    BrokerOutOfMemory,
    ConveyorError,
)

__all__ = (
    "is_out_of_memory",
    "out_of_memory",
    "refused_by_acl",
    "translate_errors",
    "translate_every_error",
)

# How Redis says the ACL refused a command a script runs: Redis 7.0 "The user executing the
# script can't run this command or subcommand"; Redis >= 7.2 and Valkey "ACL failure in
# script: ... no permissions to run the 'xinfo|consumers' command".
_REFUSED_IN_SCRIPT = ("can't run this command", "acl failure", "no permissions to run")


# How Redis words a command (or subcommand) it does not know, and what that likely means.
_UNKNOWN = ("unknown command", "unknown subcommand", "err unknown command")
_NEEDS = "Conveyor needs Redis 7.0 or newer, or Valkey: is this server older?"


def _redacted(target: RedisSettings | str) -> str:
    return target.redacted_url if isinstance(target, RedisSettings) else redact_url(target)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether a command's error is Redis refusing it for want of memory."""
    return isinstance(error, rex.OutOfMemoryError)


def refused_by_acl(error: BaseException) -> bool:
    """Whether a command's error is the ACL refusing it, or a command a script it ran runs."""
    if isinstance(error, rex.NoPermissionError):
        return True
    detail = str(error).lower()
    return isinstance(error, rex.ResponseError) and any(t in detail for t in _REFUSED_IN_SCRIPT)


def _unblocked(error: BaseException) -> bool:
    """A blocking read Redis ended ("UNBLOCKED ..."): a failover, or its key deleted."""
    return isinstance(error, rex.ResponseError) and str(error).startswith("UNBLOCKED")


def out_of_memory(target: RedisSettings | str, error: BaseException) -> BrokerOutOfMemory:
    """The Conveyor error for Redis at ``target`` (settings, or a URL redacted here)."""
    return BrokerOutOfMemory(_redacted(target), str(error).strip().rstrip("."))


def _reason(exc: BaseException) -> str:
    """What went wrong, in words, then redis-py's own message (which holds no password)."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, rex.AuthenticationError):
        return f"authentication failed (check the user name and password): {detail}"
    if isinstance(exc, rex.AuthorizationError | rex.NoPermissionError):
        return f"permission denied (check the user's ACL rules): {detail}"
    if _unblocked(exc):
        return f"Redis ended a blocking read (a failover, or its key deleted?): {detail}"
    if isinstance(exc, rex.ReadOnlyError):
        return (
            "it is a read-only replica now (a failover?); waiting for a primary at this "
            f"address: {detail}"
        )
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
    """Turn Redis failures raised inside into Conveyor's errors.

    Maps ``redis`` ``ConnectionError`` (and its ``AuthenticationError``, ``BusyLoadingError``,
    pool exhaustion ...), ``TimeoutError``, ``NoPermissionError`` (an ACL refusal),
    ``ReadOnlyError`` and an ``UNBLOCKED`` reply (a failover made the server a replica: like
    an outage, it passes),
    ``InvalidResponse`` (something other than Redis answered) and ``OSError`` (e.g. TLS
    failures) to :class:`~conveyor.errors.BrokerConnectionError` with the server's redacted URL
    and a readable reason, and ``OutOfMemoryError`` (an ``OOM`` refusal) to
    :class:`~conveyor.errors.BrokerOutOfMemory`, keeping the original as ``__cause__``.
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
            | rex.ReadOnlyError
            | rex.NoPermissionError
            | rex.InvalidResponse
            | OSError,
        ):
            raise BrokerConnectionError(_redacted(self._target), _reason(exc)) from exc
        if isinstance(exc, rex.OutOfMemoryError):
            raise out_of_memory(self._target, exc) from exc
        if _unblocked(exc):
            # A blocking read Redis ended: the server became a replica (a failover), or the
            # key went. Like a lost connection, it passes: the caller reads again.
            raise BrokerConnectionError(_redacted(self._target), _reason(exc)) from exc


class translate_every_error(translate_errors):
    """:class:`translate_errors`, and every other Redis error reply as
    :class:`~conveyor.errors.BrokerCommandError`: what the broker's faces wrap each
    operation in (one instance per broker, entered by every operation)."""

    __slots__ = ()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, ConveyorError) or not isinstance(exc, Exception):
            return
        super().__exit__(exc_type, exc, tb)  # raises what it translates
        if isinstance(exc, rex.RedisError):
            detail = str(exc) or type(exc).__name__
            if detail.lower().startswith(_UNKNOWN):  # a server older than Conveyor needs?
                detail += f" ({_NEEDS})"
            raise BrokerCommandError(_redacted(self._target), detail) from exc
