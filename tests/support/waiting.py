"""Waiting for state that has no event to await (Redis keys, process state): polled under a
deadline. Wait for an event (a log line, an answer, a chunk) wherever there is one."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

POLL_S = 0.01


def wait_until(check: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    """Polls ``check`` until it returns something true; :class:`TimeoutError` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not true after {timeout:.0f}s")
        time.sleep(POLL_S)


async def wait_until_async(check: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    """:func:`wait_until` for async code: the event loop runs between polls."""
    with anyio.move_on_after(timeout):
        while not check():  # noqa: ASYNC110
            await anyio.sleep(POLL_S)
        return
    raise TimeoutError(f"{what}: not true after {timeout:.0f}s")
