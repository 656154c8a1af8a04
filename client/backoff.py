"""Waiting out an outage of a Redis that answered before (restarting, failing over).

The client never gives up on a Redis it has reached while the caller's deadline allows: it
tries again after 0.05 s, then twice as long each time, at most 1 s apart. A Redis never
reached (a wrong URL, a server that is down) is reported at once instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import anyio

from conveyor.broker import ClientBroker
from conveyor.errors import BrokerConnectionError

__all__ = ("Backoff", "retry_until")

T = TypeVar("T")
P = ParamSpec("P")

FIRST_WAIT_S = 0.05
LONGEST_WAIT_S = 1.0


class Backoff:
    """Doubling waits, from ``FIRST_WAIT_S`` up to ``LONGEST_WAIT_S``."""

    def __init__(self) -> None:
        self.delay = FIRST_WAIT_S

    async def wait(self) -> None:
        await anyio.sleep(self.delay)
        self.delay = min(self.delay * 2, LONGEST_WAIT_S)


async def retry_until(
    broker: ClientBroker,
    deadline: float,
    operation: Callable[P, Awaitable[T]],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Runs a broker ``operation``; while a Redis that answered before is unreachable, tries
    again with backoff until ``deadline`` (anyio's clock), as a call's send does; then
    raises the :class:`BrokerConnectionError`."""
    backoff: Backoff | None = None  # made on the first failure: most operations never fail
    while True:
        try:
            return await operation(*args, **kwargs)
        except BrokerConnectionError:
            backoff = backoff or Backoff()
            if not broker.reached or anyio.current_time() + backoff.delay >= deadline:
                raise
            await backoff.wait()
