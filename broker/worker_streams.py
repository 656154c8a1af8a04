"""The worker's side of the protocol: each step of a job's life as one Redis round trip.

Read jobs as one consumer of the group, claim, answer, ack, dead-letter, reclaim. Redis's
errors leave as they are: the worker's face (``worker_broker.WorkerBroker``) translates them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio.client import Pipeline, Redis

from conveyor.broker.bookkeeping import join_groups
from conveyor.broker.claims import SoonClaims, claim
from conveyor.broker.entries import (
    Delivery,
    claim_ttl,
    entries_by_stream,
    is_nogroup,
    text,
)
from conveyor.broker.keys import GROUP, Keys, hash_tag
from conveyor.broker.pipelining import PipelineBatcher
from conveyor.broker.replies import ReplyWriter
from conveyor.broker.wire import Fields, Job, Message, RawFields, dead_letter
from conveyor.broker.writes import INLINE_REPLY_MAX_BYTES

__all__ = ("INLINE_REPLY_MAX_BYTES", "WorkerStreams")

logger = logging.getLogger(__name__)

# On Redis Cluster, how long a worker of several models blocks on one model's streams.
_CLUSTER_BLOCK_S = 0.1


class WorkerStreams:
    """The worker's side: read jobs as one consumer of the group, answer, ack, dead-letter."""

    def __init__(
        self, redis: Redis, keys: Keys, consumer: str, where: str = "redis", cluster: bool = False
    ) -> None:
        self.redis = redis
        self.cluster = cluster  # Redis Cluster: a blocking read names one slot's streams
        self.keys = keys
        self.consumer = consumer
        self.where = where  # the redacted URL, for errors
        self.batcher = PipelineBatcher(redis)
        self.writer = ReplyWriter(self.batcher, where)
        self._claims = SoonClaims(self.batcher, scripted=not cluster)
        self._drained = False  # whether the last sweep of several streams found them all empty
        self._rides = False  # see reads_ride
        self._listed = True  # False once Redis refused XGROUP CREATECONSUMER

    async def ensure_groups(self, streams: Sequence[str]) -> None:
        """Creates each stream's consumer group unless it exists, with this worker's consumer
        in it (see ``bookkeeping.join_groups``; a refusal is said once)."""
        self._listed = await join_groups(self.redis, streams, self.consumer, self._listed)

    @property
    def reads_ride(self) -> bool:
        """Whether the next read rides with the answers waiting to go (see read_jobs): the
        last read took more than one job, or rode itself. Jobs then queue up while this worker
        works, and one round trip answers the last ones and takes the next. A worker that
        takes one job at a time reads as before: an empty read riding would cost a round trip
        more, and at one call in flight the answer leaves ahead of the read."""
        return self._rides

    async def read_jobs(self, streams: Sequence[str], free: int, block_s: float) -> list[Delivery]:
        """Takes at most ``free`` new jobs from ``streams``, waiting up to ``block_s``.

        XREADGROUP's COUNT is per stream, so a backlog is taken one stream at a time (in the
        given order: rotate it for fairness) until ``free`` is reached; only when every
        stream is empty does the worker block on all of them, and a blocked read is answered
        with the entries of the one stream that got them. A worker never holds more jobs
        than it can run (taskiq-redis PR #129). While jobs queue up (:attr:`reads_ride`), a
        read first goes without blocking in the pipeline of the answers waiting to go.
        """
        if not streams or free <= 0:
            return []
        rides, self._rides = self._rides, False
        share = free // len(streams)  # COUNT is per stream: at most `free` in all
        if rides and share and self.batcher.waiting and not self.cluster:
            deliveries = await self._read_riding(dict.fromkeys(streams, ">"), share)
            if deliveries:
                self._rides = True
                return deliveries
        deliveries = await self._read_new(streams, free, block_s)
        self._rides = len(deliveries) > 1
        return deliveries

    async def _read_new(self, streams: Sequence[str], free: int, block_s: float) -> list[Delivery]:
        deliveries: list[Delivery] = []
        share = free // len(streams)
        if len(streams) > 1 and self._drained and share and not self.cluster:
            # Every stream was empty at the last read: block on all of them at once, taking
            # at most `share` from each, so the total never exceeds `free` (saves one
            # non-blocking read per stream on every call of an idle worker).
            block_ms = int(block_s * 1000)
            deliveries = await self._read_group(dict.fromkeys(streams, ">"), share, block_ms)
            self._drained = len(deliveries) < share
            return deliveries
        if len(streams) > 1:
            for stream in streams:
                deliveries += await self._read_group({stream: ">"}, free - len(deliveries), None)
                if len(deliveries) >= free:
                    self._drained = False
                    return deliveries
            self._drained = True
            if deliveries:
                return deliveries
        if self.cluster:
            # One blocking read may only name keys of one slot: block on the first model's
            # streams (the caller rotates the order), briefly if other models wait their turn.
            tag = hash_tag(streams[0])
            same = [stream for stream in streams if hash_tag(stream) == tag]
            if len(same) < len(streams):
                streams, block_s = same, min(block_s, _CLUSTER_BLOCK_S)
        # at most `free` in all: XREADGROUP's COUNT is per stream
        count = max(free // len(streams), 1)
        return await self._read_group(dict.fromkeys(streams, ">"), count, int(block_s * 1000))

    async def _read_riding(self, streams: dict[str, str], count: int) -> list[Delivery]:
        """A read that does not block, sent now with the answers, acks and claims waiting to
        go: one round trip for both. It fails as their pipeline does (a lost connection fails
        them all: those jobs stay pending, as with any flush), and a retry sends both again,
        as redis-py retries any read."""

        def add(pipe: Pipeline) -> None:
            pipe.xreadgroup(GROUP, self.consumer, streams, count=count)  # type: ignore[arg-type]

        try:
            (response,) = await self.batcher.run(add)
        except redis_errors.ResponseError as error:
            if not is_nogroup(error):
                raise
            return []  # the blocking read that follows says it, and recreates the group
        return _deliveries(response)

    async def take_now(self, streams: Sequence[str], count: int) -> list[Delivery]:
        """At most ``count`` new jobs from ``streams`` (COUNT per stream, as read_jobs), never
        blocking."""
        per_stream = max(count // max(len(streams), 1), 1)
        return await self._read_group(dict.fromkeys(streams, ">"), per_stream, None)

    async def _read_group(
        self, streams: dict[str, str], count: int, block_ms: int | None
    ) -> list[Delivery]:
        try:
            response = await self.redis.xreadgroup(
                GROUP,
                self.consumer,
                dict(streams),  # type: ignore[arg-type]  # redis-py's dict type is invariant
                count=count,
                block=block_ms,
            )
        except redis_errors.ResponseError as error:
            if not is_nogroup(error):
                raise
            # Redis lost the group (restarted without persistence, or the stream was deleted)
            logger.warning("consumer group missing; recreating it streams=%s", list(streams))
            await self.ensure_groups(list(streams))
            return []
        return _deliveries(response)

    async def reclaim(self, streams: Sequence[str], idle_s: float, limit: int) -> list[Delivery]:
        """Takes over jobs whose worker stopped: pending longer than ``idle_s`` (live workers
        reset the idle time of their running jobs from their heartbeat thread) and whose
        owner's heartbeat key is gone. At most ``limit`` jobs; each comes with its delivery
        count, which is its fencing attempt.
        """
        idle_ms = int(idle_s * 1000)
        found: list[Delivery] = []
        for stream in streams:
            if len(found) >= limit:
                break
            try:
                pending: list[dict[str, Any]] = await self.redis.xpending_range(
                    stream, GROUP, min="-", max="+", count=limit - len(found), idle=idle_ms
                )
            except redis_errors.ResponseError as error:
                if not is_nogroup(error):
                    raise
                await self.ensure_groups([stream])
                continue
            if not pending:
                continue
            owners = sorted({text(p["consumer"]) for p in pending})
            alive = await self._alive(owners)
            stale = [p for p in pending if text(p["consumer"]) not in alive]
            if not stale:
                continue
            ids: list[bytes] = [p["message_id"] for p in stale]
            counts = {p["message_id"]: int(p["times_delivered"]) + 1 for p in stale}
            # XCLAIM re-checks the idle time, so two workers never both take one job.
            claimed: list[Any] = await self.redis.xclaim(
                stream,
                GROUP,
                self.consumer,
                idle_ms,
                ids,  # type: ignore[arg-type]  # redis-py's list type is invariant
            )
            for entry_id, fields in claimed:
                if fields is None:  # deleted meanwhile (answered late by its first runner)
                    await self.redis.xack(stream, GROUP, entry_id)
                    continue
                found.append(Delivery(stream, entry_id, fields, counts.get(entry_id, 2)))
        return found

    async def _alive(self, consumers: Sequence[str]) -> set[str]:
        pipe = self.redis.pipeline(transaction=False)
        for consumer in consumers:
            # its heartbeat key; cluster pipelines lack exists()
            pipe.execute_command("EXISTS", self.keys.worker(consumer))
        results = await pipe.execute()
        # This worker's own stale entries are jobs it gave up on (its answer could not be
        # written): its heartbeat refreshes every job it still runs, so take them again.
        return {
            c for c, exists in zip(consumers, results, strict=True) if exists and c != self.consumer
        }

    async def reply(
        self, job: Job, messages: Sequence[Message], deadline: float | None = None
    ) -> None:
        """Writes messages to the job's reply stream and rings the client's bell; returns once
        Redis stored them (a refused write is tried again until the job's ``deadline``, on
        this host's clock; by default as the client wrote it)."""
        await self.writer.store(job, messages, final=False, deadline=deadline)

    async def finish(
        self,
        delivery: Delivery,
        job: Job,
        messages: Sequence[Message],
        deadline: float | None = None,
        acked: Callable[[], None] | None = None,
    ) -> None:
        """Stores the final messages, then acks and deletes the job entry (and calls
        ``acked``).

        The ack waits until Redis stored the answer: an answer it refused (out of memory, a
        lost connection, any error) is tried again until the job's deadline, and past it
        raises with the job still pending, to be delivered again. The ack itself rides with
        the next answer's pipeline (see ``replies``).
        """
        await self.writer.store(job, messages, final=True, deadline=deadline)
        self.writer.ack_soon(delivery, acked)

    def answer(
        self,
        delivery: Delivery,
        job: Job,
        messages: Sequence[Message | Fields],  # or their fields, encoded already
        deadline: float,
        acked: Callable[[], None],
        ended: Callable[[BaseException | None], None],
        together: bool = False,
    ) -> Awaitable[None]:
        """As :meth:`finish`, without waiting for Redis (see ``ReplyWriter.answer``):
        ``ended`` hears whether the answer was stored, ``acked`` when the job was acked.
        The writer's coroutine, to await (no wrapper coroutine a job)."""
        return self.writer.answer(job, messages, delivery, deadline, acked, ended, together)

    async def claim(self, delivery: Delivery, job: Job, deadline: float) -> str | None:
        """Claims the job's request for this entry until past its ``deadline`` (this host's
        clock); None if it may run, else the claim of the copy that runs it (see ``claims``)."""
        key = self.keys.claim(hash_tag(job.bell), job.id)
        return await claim(self.batcher, key, job, delivery.entry_id, claim_ttl(deadline))

    def claim_soon(
        self,
        delivery: Delivery,
        job: Job,
        deadline: float,
        claimed: Callable[[str | None], None],
    ) -> None:
        """As :meth:`claim` without waiting: ``claimed`` gets the outcome."""
        key = self.keys.claim(hash_tag(job.bell), job.id)
        self._claims.claim_soon(key, job, delivery.entry_id, claim_ttl(deadline), claimed)

    async def drop_duplicate(self, delivery: Delivery) -> None:
        """Acks and deletes a copy of a job that another copy runs: its answer is that one's."""
        await self.writer.ack([delivery])

    async def publish_limits(self, model: str, max_queue_length: int | None) -> None:
        """Tells clients the model's queue limit (the last worker to start wins)."""
        key = self.keys.limits(model)
        if max_queue_length is None:
            await self.redis.hdel(key, "max_queue_length")
        else:
            await self.redis.hset(key, "max_queue_length", max_queue_length)

    async def requeue(self, delivery: Delivery) -> None:
        """Puts a job this worker cannot run now (its model was just unloaded here) back at
        the end of its stream for another worker, then (once the copy is stored) acks and
        deletes this delivery."""
        fields = dict(delivery.fields)

        def add(pipe: Pipeline) -> None:
            pipe.xadd(delivery.stream, fields)  # type: ignore[arg-type]

        await self.batcher.run(add)
        await self.writer.ack([delivery])

    async def dead_letter(
        self,
        delivery: Delivery,
        dead_stream: str,
        reason: str,
        *,
        job: Job | None = None,
        error_message: Message | None = None,
    ) -> None:
        """Moves an entry to the dead-letter stream with its reason, then acks and deletes it.

        The original fields are kept as they were (binary ones included) so `dlq retry` can
        send the job again; the reason and bookkeeping are added as readable fields.
        """
        dead = dead_letter(
            delivery.fields,
            reason=reason,
            at=time.time(),
            stream=delivery.stream,
            entry=delivery.entry_id,
            deliveries=delivery.deliveries,
            consumer=self.consumer,
        )

        def add(pipe: Pipeline) -> None:
            # never trimmed: dead letters leave only by `conveyor dlq retry|purge`
            pipe.xadd(dead_stream, dead)  # type: ignore[arg-type]

        # The job is acked only once its dead letter is stored (else it stays pending).
        await self.batcher.run(add)
        if job is not None and error_message is not None:
            try:
                await self.writer.store(job, [error_message], final=True)
            except Exception as error:  # the job is safe in the dead letters; say so
                logger.warning(
                    "job.dead_letter_unanswered request=%s error=%s: the caller times out",
                    job.id,
                    error,
                )
        await self.writer.ack([delivery])

    async def wait_credit(self, key: str, block_s: float) -> int | None:
        """Waits up to ``block_s`` for a predict_stream caller to report the number of chunks
        it has taken (the largest reported so far), or None if it reported nothing."""
        popped = await self.redis.blmpop(block_s, 1, key, direction="RIGHT", count=100)
        if not popped:
            return None
        return max(int(value) for value in popped[1])

    async def read_inputs(
        self, key: str, after: bytes, block_s: float
    ) -> list[tuple[bytes, RawFields]]:
        """Reads a predict_stream's input entries after ``after``, waiting up to ``block_s``."""
        response = await self.redis.xread({key: after}, count=64, block=int(block_s * 1000))
        return [entry for _, entries in entries_by_stream(response) for entry in entries]

    async def read_control(
        self, cursors: Mapping[str, bytes], block_s: float
    ) -> list[tuple[str, bytes, RawFields]]:
        """Reads load/unload requests sent to the fleet after each stream's cursor."""
        response = await self.redis.xread(
            dict(cursors),  # type: ignore[arg-type]  # redis-py's dict type is invariant
            count=16,
            block=int(block_s * 1000),
        )
        return [
            (stream, entry_id, fields)
            for stream, entries in entries_by_stream(response)
            for entry_id, fields in entries
        ]

    async def control_cursors(self, streams: Sequence[str]) -> dict[str, bytes]:
        """The id of the last entry of each control stream, to read only what comes next."""
        cursors: dict[str, bytes] = {}
        for stream in streams:
            last = await self.redis.xrevrange(stream, count=1)
            entry_id = last[0][0] if last else b"0-0"
            cursors[stream] = entry_id if isinstance(entry_id, bytes) else b"0-0"
        return cursors


def _deliveries(response: Any) -> list[Delivery]:
    """A read's jobs: all of them, even past its COUNT (never, as the callers ask): an entry
    read is pending on this worker, and one dropped here would wait for a reclaim."""
    return [
        Delivery(stream, entry_id, fields)
        for stream, entries in entries_by_stream(response)
        for entry_id, fields in entries
    ]
