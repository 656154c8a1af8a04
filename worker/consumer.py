"""The consume loop: reads as many jobs as the worker has free slots for, and starts each.

A worker holds only the jobs its models can run soon (``worker.call_limit``): each read
names the streams of models with room, rotated so no model starves another, and takes at
most the free slots. A model with a call slot to fill is waited on (a blocking XREADGROUP:
Redis hands each arriving job to the reader that has waited longest, so jobs go to the
processes with room); a batched model that holds what it runs is only looked at, every few
milliseconds, for jobs that waited in its stream (``broker.waiting_jobs``): its next batch,
gathered while the model runs, from work no idle process was waiting for. Jobs of dead
workers are reclaimed first, every half heartbeat TTL. Each job runs in a task of its own
(``worker.cancellation``), its body ``JobRunner.handle``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from conveyor.broker import Delivery, WorkerBroker
from conveyor.broker.keys import Keys, hash_tag
from conveyor.errors import BrokerConnectionError
from conveyor.worker.answers import describe
from conveyor.worker.bookkeeper import Bookkeeper
from conveyor.worker.call_limit import plan_reads
from conveyor.worker.cancellation import JobScope, RunningJobs
from conveyor.worker.metrics import WorkerMetrics
from conveyor.worker.registry import ModelRegistry
from conveyor.worker.settings import WorkerSettings
from conveyor.worker.slots import Slots

__all__ = ("Consumer",)

logger = logging.getLogger(__name__)

# How long a read may block while a model that holds its fill waits for a slot (see consume).
_FULL_MODEL_BLOCK_S = 0.005


class Consumer:
    """Reads one worker's jobs until its slots close (:meth:`Slots.close`)."""

    def __init__(
        self,
        broker: WorkerBroker,
        registry: ModelRegistry,
        keys: Keys,
        jobs: RunningJobs,
        slots: Slots,
        metrics: WorkerMetrics,
        bookkeeper: Bookkeeper,
        settings: WorkerSettings,
        handle: Callable[[Delivery, JobScope], Coroutine[Any, Any, None]],
        take_batched: Callable[[list[Delivery]], list[Delivery]] | None = None,
        *,
        new_read: Callable[[], None] | None = None,
    ) -> None:
        self._broker = broker
        self._registry = registry
        self._keys = keys
        self._jobs = jobs
        self._slots = slots
        self._metrics = metrics
        self._bookkeeper = bookkeeper
        self._settings = settings
        self._handle = handle  # a job's task body
        self._take_batched = take_batched  # the batch path takes its jobs first (batch_jobs)
        self._new_read = new_read  # the runner's jobs of the next read are another read's
        self._model_of = _ModelOf()
        self._next_reclaim = 0.0
        # job streams not yet checked for dead workers' jobs this half TTL (see _reclaimed)
        self._unchecked: set[str] = set()

    async def consume(self) -> None:
        loop = asyncio.get_running_loop()
        broker = self._broker
        jobs = self._jobs
        slots = self._slots
        in_flight = slots.in_flight
        held = slots.held
        handle = self._handle
        settings = self._settings
        turn = 0
        backoff = 0.1
        next_look = 0.0  # loop.time() of the next look for jobs that waited (see the head)
        while not slots.closed:
            free = settings.concurrency - len(in_flight)
            if free <= 0:
                await self.await_room()
                continue
            job_streams = self._registry.job_streams()
            if not job_streams:  # every model unloaded: wait for a load
                await slots.wait_at_most(settings.read_block)
                continue
            turn = (turn + 1) % len(job_streams)  # rotate, so no model starves another
            order = job_streams[turn:] + job_streams[:turn]
            # Only the jobs each model can run soon: the rest is left to other processes.
            reads = plan_reads(
                order, self._model_of, self._registry.holds(settings.concurrency), held, free
            )
            if not reads.wait and not reads.look:  # every model holds its fill
                await self.await_room()
                continue
            if (
                (reads.acks_now or len(reads.wait) < len(order))
                and broker.acks_waiting
                and await broker.flush_acks()
            ):
                # Answered jobs count as held until acked, here and in other workers' looks
                # (broker.waiting_jobs), and a deferred ack waits for the next answer (a batch
                # later): send them now, so a model's room is its own.
                continue
            now = loop.time()
            rides = False  # whether the next read may take these jobs' answers along
            try:
                if reads.look and now >= next_look:
                    next_look = now + reads.look_s
                    deliveries = await self._reclaimed(broker, reads.look, reads.look_count)
                    if not deliveries:
                        deliveries = await broker.take_waiting(
                            reads.look, reads.look_count, reads.min_age_s, reads.busy
                        )
                elif reads.wait:
                    block = settings.read_block
                    if reads.look:  # back in time for the next look
                        block = min(block, max(next_look - now, 0.001))
                    elif len(reads.wait) < len(order):
                        # A full model's freed slot cannot wake a read blocked on the others'
                        # streams: block briefly (no event to await in Redis), so its next
                        # job is fetched soon.
                        block = min(block, _FULL_MODEL_BLOCK_S)
                    deliveries = await self._reclaimed(broker, reads.wait, reads.wait_count)
                    if not deliveries:
                        deliveries = await broker.read_jobs(reads.wait, reads.wait_count, block)
                        rides = broker.reads_ride
                else:  # only looks, not yet due: until then, or until a slot frees
                    await slots.wait_at_most(next_look - now)
                    continue
            except BrokerConnectionError as error:
                # Redis restarting or unreachable: back off and try again, never give up (any
                # other refusal, a job stream of the wrong type say, stops the worker)
                logger.warning(
                    "worker.redis_unavailable worker=%s retry_in=%.1fs error=%s",
                    settings.name,
                    backoff,
                    describe(error),
                )
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if self._take_batched is not None and deliveries:
                deliveries = self._take_batched(deliveries)
            if deliveries and self._new_read is not None:
                self._new_read()
            for delivery in deliveries:
                slots.take(delivery.entry_id, delivery.stream)
                scope = JobScope()
                jobs.start(loop, scope, handle(delivery, scope))
            if deliveries:
                # Let the new jobs run up to their first wait before the next read goes out.
                # A quick job's answer leaves ahead of it (one send less before the answer, at
                # one call in flight); or, while jobs queue up (a read of several), with it,
                # in one round trip (WorkerStreams.read_jobs).
                jobs.read_follows = rides
                try:
                    await asyncio.sleep(0)
                finally:
                    jobs.read_follows = False

    async def await_room(self) -> None:
        """Waits for a slot to free. A job holds its slot until its ack is done: the acks
        that wait for the next answer go now instead (a worker of one slot, say)."""
        broker = self._broker
        if broker.acks_waiting and await broker.flush_acks():
            return
        await self._slots.wait_at_most(self._settings.read_block)

    async def _reclaimed(self, broker: WorkerBroker, order: list[str], free: int) -> list[Delivery]:
        """Jobs of dead workers (checked every half TTL), if any, before new ones are read.

        ``order`` holds the streams of models with room only (worker.call_limit): a stream
        left out stays due for its check until its model has room, so a model that is always
        busy still reclaims a dead worker's jobs.
        """
        if time.monotonic() < self._next_reclaim:
            return []
        ttl = self._settings.heartbeat_ttl
        # Recovery time is bounded by the heartbeat TTL, not by the longest job.
        if not self._unchecked:
            self._unchecked = set(self._registry.job_streams())
        due = [stream for stream in order if stream in self._unchecked]
        if due:
            reclaimed = await broker.reclaim(due, ttl, free)
            for delivery in reclaimed:
                self._metrics.reclaimed.labels(hash_tag(delivery.stream)).inc()
                logger.warning(
                    "job.reclaimed stream=%s entry=%s deliveries=%d",
                    delivery.stream,
                    delivery.entry_id.decode(),
                    delivery.deliveries,
                )
            if reclaimed:
                return reclaimed  # there may be more: they stay due, looked at next round
            # dead workers' jobs reclaimed: their consumers go
            await self._bookkeeper.sweep(due)
            self._unchecked.difference_update(due)
        self._unchecked.intersection_update(self._registry.job_streams())
        if not self._unchecked:
            self._next_reclaim = time.monotonic() + ttl / 2
        return []


class _ModelOf(dict[str, str]):
    """A job stream's model (its hash tag), found on first use."""

    def __missing__(self, stream: str) -> str:
        model = self[stream] = hash_tag(stream)
        return model
