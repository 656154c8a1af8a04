"""Automatic pipelining: many concurrent callers' commands go to Redis in one round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from redis.asyncio.client import Pipeline, Redis
from redis.exceptions import ResponseError

from conveyor.broker.fastpath import lone_command
from conveyor.broker.fastpipe import execute

__all__ = ("PipelineBatcher",)

# Commands a caller adds to the shared pipeline.
AddCommands = Callable[[Pipeline], object]
# What an ``add`` given to ``run_settled`` hands back: called with its commands' replies, or
# with the error of the whole round trip, as soon as they are known, even if its caller was
# cancelled meanwhile (so commands coalesced from several callers are settled for them all).
Settle = Callable[[list[Any] | BaseException], None]
AddSettled = Callable[[Pipeline], Settle | None]


class _Slot:
    def __init__(self, add: AddCommands, settles: bool = False) -> None:
        self.add = add
        # the caller's replies, or the error of the whole round trip (once it queued)
        self.done: asyncio.Future[list[Any]] | None = None
        self.settles = settles  # what add returns is a Settle
        self.settle: Settle | None = None
        self.timer: asyncio.TimerHandle | None = None  # a submit's latest send (see submit)

    def add_to(self, pipe: Pipeline) -> None:
        if self.timer is not None:  # it goes now: its wake-up would find nothing to send
            self.timer.cancel()
            self.timer = None
        settle = self.add(pipe)
        if self.settles:
            self.settle = cast("Settle | None", settle)


class PipelineBatcher:
    """Sends the commands of every caller waiting at the same moment in one pipeline.

    While a pipeline is on the wire, new callers queue up and go together in the next, so a
    busy client or worker pays one round trip per batch instead of one per call. A caller
    that finds nothing on the wire sends its own commands at once, without waking the
    flusher task: at one call in flight that saves a task switch on every step.

    Always runs on asyncio (redis.asyncio); ``run_flusher`` must run in a task group there.
    """

    def __init__(self, redis: Redis, max_batch: int = 1024) -> None:
        self._redis = redis
        self._max_batch = max_batch
        self._queue: list[_Slot] = []
        self._wake: asyncio.Event | None = None  # made on the loop that runs the batcher
        self._sending = 0  # round trips on the wire (the flusher's or callers' own)
        self._closed = False

    @property
    def busy(self) -> bool:
        """Whether a round trip is on the wire: what is queued now goes with the next one."""
        return self._sending > 0

    @property
    def waiting(self) -> bool:
        """Whether commands wait to go while nothing is on the wire: a caller now sends them
        at once, with its own, in one round trip."""
        return self._sending == 0 and bool(self._queue)

    async def run(self, add: AddCommands) -> list[Any]:
        """Queues ``add``'s commands, waits for their batch, and returns their replies.

        Raises the first error among this caller's replies, or the connection error.
        """
        results = await self._run(_Slot(add))
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def run_settled(self, add: AddSettled) -> list[Any]:
        """As :meth:`run`, but hands every reply back, errors included (raises only the
        error of the whole round trip), and calls the ``Settle`` that ``add`` returns."""
        return await self._run(_Slot(add, settles=True))

    def submit(self, add: AddSettled, delay_s: float = 0.0) -> None:
        """Queues ``add``'s commands without waiting: the ``Settle`` that ``add`` returns
        gets the replies (nothing, if the batcher closes first). No task or coroutine per
        call: for commands whose outcome only a callback needs. They ride with the next
        caller's pipeline, or go at the latest ``delay_s`` later."""
        if self._closed:
            raise RuntimeError("the pipeline batcher is closed")
        slot = _Slot(add, settles=True)
        self._queue.append(slot)
        if delay_s <= 0:
            self._wake_flusher()
        else:
            # Cancelled once the slot rides with another round trip (_Slot.add_to), most often
            # within the delay: one call at a time, each job's claim then woke the flusher for
            # nothing 10 ms later (broker.claims), a loop turn and a task step a job.
            slot.timer = asyncio.get_running_loop().call_later(delay_s, self._wake_flusher)

    async def _run(self, slot: _Slot) -> list[Any]:
        if self._closed:
            raise RuntimeError("the pipeline batcher is closed")
        if self._sending == 0 and not self._queue:
            return await self._send_alone(slot)
        done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        slot.done = done
        self._queue.append(slot)
        if self._sending == 0:
            # nothing on the wire, only submitted commands waiting: take them along at once
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            await self._flush(batch)
        else:
            self._wake_flusher()
        return await done

    async def _send_alone(self, slot: _Slot) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        slot.add_to(pipe)
        settle = slot.settle
        lone = lone_command(pipe)
        self._sending += 1
        try:
            if lone is not None:
                args, options = lone
                try:
                    results: list[Any] = [await self._redis.execute_command(*args, **options)]  # type: ignore[no-untyped-call]
                except ResponseError as error:  # as the pipeline would hand it back
                    results = [error]
            else:
                results = await execute(pipe, raise_on_error=False)
        except BaseException as error:
            if settle is not None:
                settle(error)
            raise
        else:
            if settle is not None:
                settle(results)
        finally:
            self._sending -= 1
            if self._queue:  # others came while this was on the wire
                self._wake_flusher()
        return results

    def _wake_flusher(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()

    async def run_flusher(self) -> None:
        """Flushes queued commands until cancelled; fails waiting callers on shutdown."""
        if self._wake is None:
            self._wake = asyncio.Event()
        wake = self._wake
        try:
            while True:
                await wake.wait()
                wake.clear()
                while self._queue:
                    batch = self._queue[: self._max_batch]
                    del self._queue[: self._max_batch]
                    await self._flush(batch)
        finally:
            self._closed = True
            for slot in self._queue:
                if slot.timer is not None:
                    slot.timer.cancel()
                if slot.done is not None and not slot.done.done():
                    slot.done.set_exception(RuntimeError("the connection to Redis was closed"))
            self._queue.clear()

    async def _flush(self, batch: list[_Slot]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        counts: list[int] = []
        for slot in batch:
            before = len(pipe)
            slot.add_to(pipe)
            counts.append(len(pipe) - before)
        self._sending += 1
        try:
            results = await execute(pipe, raise_on_error=False)
        except BaseException as error:  # delivered to every caller of the batch
            for slot in batch:
                if slot.settle is not None:
                    slot.settle(error)
                if slot.done is not None and not slot.done.done():
                    slot.done.set_exception(
                        error
                        if isinstance(error, Exception)
                        else RuntimeError("the connection to Redis was closed")
                    )
            if not isinstance(error, Exception):
                raise
            return
        finally:
            self._sending -= 1
        start = 0
        for slot, count in zip(batch, counts, strict=True):
            if slot.settle is not None:
                slot.settle(results[start : start + count])
            # a caller that was cancelled meanwhile is left out
            if slot.done is not None and not slot.done.done():
                slot.done.set_result(results[start : start + count])
            start += count
