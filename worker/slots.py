"""The worker's job slots: a job holds one from its read until it ended unanswered (pending)
or its ack is done, so the worker never fetches more jobs than ``concurrency`` allows.

A job also counts against its model's hold (``held``, see ``worker.call_limit``) until it is
answered: a job run alone stops counting once its answer is stored (:meth:`Slots.answered`),
so the next read goes out without waiting for its ack, which rides with the next answer
(``broker.replies``). A batched job counts until its ack is done: other workers' looks count
a worker's pending entries as its load (``broker.waiting_jobs``)."""

from __future__ import annotations

import asyncio
from collections import Counter

import anyio

from conveyor.broker.keys import hash_tag

__all__ = ("Slots",)


class Slots:
    """Jobs held, by entry id (the heartbeat's ``in_flight``) and by model."""

    def __init__(self, in_flight: dict[bytes, str]) -> None:
        self.in_flight = in_flight  # entry id -> job stream (WorkerStats.in_flight)
        self.held: Counter[str] = Counter()  # jobs held, by model (worker.call_limit)
        # answers stored and counted done, whose slots wait for their acks: a job leaves the
        # in-flight gauge here, after its metrics (a scrape that sees none in flight sees it)
        self.awaiting_ack = 0
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
        self.answered(stream)
        self._free(entry_id)

    def acked(self, entry_id: bytes, stream: str) -> None:
        """An answered batched job's ack is done: its model's room and its slot are free."""
        self.answered(stream)
        self.ack_done(entry_id)

    def answered(self, stream: str) -> None:
        """A job run alone has its answer stored: its model has room for the next one,
        while the job keeps its slot until its ack is done (:meth:`ack_done`).

        It does not wake the reader: the ack, riding with the next answer, does, so one read
        fills the room of the answers stored meanwhile. Woken at each answer, the reader took
        one job a read: 1.15 reads a call against 0.4, and more worker CPU than waiting for
        the ack."""
        self.held[hash_tag(stream)] -= 1

    def ack_done(self, entry_id: bytes) -> None:
        """The ack of a job :meth:`answered` is done: its slot is free."""
        self.awaiting_ack -= 1
        self._free(entry_id)

    def _free(self, entry_id: bytes) -> None:
        self.in_flight.pop(entry_id, None)
        self._freed.set()

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
