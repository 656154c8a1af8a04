"""A Redis out of memory, as Conveyor's own error.

With ``maxmemory`` reached and the ``noeviction`` policy, Redis refuses every command that may
add memory (XADD, LPUSH, SET, HSET, a script that writes, ...) with an ``OOM`` error and still
runs the others (XACK, XDEL, EXPIRE, BLMPOP, XREADGROUP). That is what Conveyor needs: nothing
is dropped, and what could not be written is written later. An ``allkeys-*`` policy would
instead evict job streams, reply streams and doorbells: jobs and answers vanish silently.

:class:`translate_oom` turns the refusal into :class:`~conveyor.errors.BrokerOutOfMemory`,
which says what to do; :func:`is_out_of_memory` tells a refused command's result apart.
"""

from __future__ import annotations

from types import TracebackType

from redis.exceptions import OutOfMemoryError

from conveyor.broker.connection import RedisSettings, redact_url
from conveyor.errors import BrokerOutOfMemory

__all__ = ("is_out_of_memory", "out_of_memory", "translate_oom")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether a command's error is Redis refusing it for want of memory."""
    return isinstance(error, OutOfMemoryError)


def out_of_memory(target: RedisSettings | str, error: BaseException) -> BrokerOutOfMemory:
    """The Conveyor error for Redis at ``target`` (settings, or a URL redacted here)."""
    url = target.redacted_url if isinstance(target, RedisSettings) else redact_url(target)
    return BrokerOutOfMemory(url, str(error).strip().rstrip("."))


class translate_oom:
    """Raises :class:`~conveyor.errors.BrokerOutOfMemory` for an ``OOM`` refusal inside.

    A class, not a ``@contextmanager`` generator, as ``translate_errors``: it wraps every
    client step.
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
        if exc is not None and isinstance(exc, OutOfMemoryError):
            raise out_of_memory(self._target, exc) from exc
