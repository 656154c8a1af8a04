"""Automatic pipelining: many concurrent callers' commands go to Redis in one round trip."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from redis.asyncio.client import Pipeline, Redis

__all__ = ("PipelineBatcher",)

# Commands a caller adds to the shared pipeline; returns how many it added.
AddCommands = Callable[[Pipeline], None]


class _Slot:
    __slots__ = ("add", "done", "error", "results")

    def __init__(self, add: AddCommands) -> None:
        self.add = add
        self.done = anyio.Event()
        self.results: list[Any] = []
        self.error: BaseException | None = None


class PipelineBatcher:
    """Sends the commands of every caller waiting at the same moment in one pipeline.

    While one pipeline is on the wire, new callers queue up and go together in the next, so
    a busy client or worker pays one round trip per batch instead of one per call, and an
    idle one pays a single task switch. ``run_flusher`` must run in a task group.
    """

    def __init__(self, redis: Redis, max_batch: int = 1024) -> None:
        self._redis = redis
        self._max_batch = max_batch
        self._queue: list[_Slot] = []
        # Made by the first user, on the loop that runs the batcher (a trio caller hands
        # its steps to an asyncio loop thread: an event made on trio would not work there).
        self._wake_event: anyio.Event | None = None
        self._closed = False

    @property
    def _wake(self) -> anyio.Event:
        if self._wake_event is None:
            self._wake_event = anyio.Event()
        return self._wake_event

    @_wake.setter
    def _wake(self, event: anyio.Event) -> None:
        self._wake_event = event

    async def run(self, add: AddCommands) -> list[Any]:
        """Queues ``add``'s commands, waits for their batch, and returns their replies.

        Raises the first error among this caller's replies, or the connection error.
        """
        if self._closed:
            raise RuntimeError("the pipeline batcher is closed")
        slot = _Slot(add)
        self._queue.append(slot)
        self._wake.set()
        await slot.done.wait()
        if slot.error is not None:
            raise slot.error
        for result in slot.results:
            if isinstance(result, Exception):
                raise result
        return slot.results

    async def run_flusher(self) -> None:
        """Flushes queued commands until cancelled; fails waiting callers on shutdown."""
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                while self._queue:
                    batch = self._queue[: self._max_batch]
                    del self._queue[: self._max_batch]
                    await self._flush(batch)
        finally:
            self._closed = True
            for slot in self._queue:
                slot.error = RuntimeError("the connection to Redis was closed")
                slot.done.set()
            self._queue.clear()

    async def _flush(self, batch: list[_Slot]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        counts: list[int] = []
        for slot in batch:
            before = len(pipe)
            slot.add(pipe)
            counts.append(len(pipe) - before)
        try:
            results = await pipe.execute(raise_on_error=False)
        except BaseException as error:  # delivered to every caller of the batch
            for slot in batch:
                slot.error = error
                slot.done.set()
            if not isinstance(error, Exception):
                raise
            return
        start = 0
        for slot, count in zip(batch, counts, strict=True):
            slot.results = results[start : start + count]
            start += count
            slot.done.set()
