"""The worker's job slots: a job holds one from its read until it ended unanswered (pending)
or its ack is done, so the worker never fetches more jobs than ``concurrency`` allows."""

from __future__ import annotations

import asyncio
from collections import Counter

import anyio

from conveyor.broker.keys import hash_tag

__all__ = ("Slots",)


class Slots:
    """Jobs held, by entry id (the heartbeat's ``in_flight``) and by model."""

    __slots__ = ("_freed", "acking", "closed", "held", "in_flight")

    def __init__(self, in_flight: dict[bytes, str]) -> None:
        self.in_flight = in_flight  # entry id -> job stream (WorkerStats.in_flight)
        self.held: Counter[str] = Counter()  # jobs held, by model (worker.call_limit)
        self.acking = 0  # answered jobs that keep their slots until their acks are done
        self.closed = False  # no job is taken any more: the worker stops
        self._freed = asyncio.Event()

    def close(self) -> None:
        """Takes no more jobs; wakes the reader waiting for a slot."""
        self.closed = True
        self._freed.set()

    def take(self, entry_id: bytes, stream: str) -> None:
        self.in_flight[entry_id] = stream
        self.held[hash_tag(stream)] += 1

    def release(self, entry_id: bytes, stream: str) -> None:
        """A job's slot is free: it ended unanswered (pending), or its ack is done."""
        self.in_flight.pop(entry_id, None)
        self.held[hash_tag(stream)] -= 1
        self._freed.set()

    def acked(self, entry_id: bytes, stream: str) -> None:
        """An answered job's ack is done: its slot is free."""
        self.acking -= 1
        self.release(entry_id, stream)

    def wake(self) -> None:
        """Wakes a :meth:`wait` (the worker stops, or the streams to read changed)."""
        self._freed.set()

    async def wait(self) -> None:
        """Waits until a slot frees (or :meth:`wake`)."""
        await self._freed.wait()
        self._freed = asyncio.Event()

    async def wait_at_most(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self.wait()
