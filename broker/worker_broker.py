"""The worker's face of the broker: :class:`WorkerBroker`.

Everything ``worker/`` asks of Redis goes through it, one method per step of a job's life: read
jobs as one consumer of the group (``worker_streams``), or only those no worker with room would
take (``waiting_jobs``), claim a request (``claims``), answer and ack (``replies``),
dead-letter, reclaim a dead worker's jobs, keep the fleet's bookkeeping (``bookkeeping``), read
control requests, and the heartbeat thread's own connection (``heartbeats``). It owns the
worker's connections (an asyncio client for blocking reads and the pipeline, a blocking one per
heartbeat link) and its auto-pipelining (``pipelining.PipelineBatcher``: the writes of
concurrent jobs share round trips).

It is the one place where Redis errors become the worker's Conveyor errors: a lost connection
or an ACL refusal is ``BrokerConnectionError``, a refused write ``BrokerOutOfMemory``, any other
error reply ``BrokerCommandError``; redis-py's exceptions never leave it.

Runs on asyncio only (redis.asyncio), as the worker does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Self

import anyio

from conveyor.broker.bookkeeping import delete_consumer, delete_dead_consumers, redis_time
from conveyor.broker.clients import create_client, create_sync_client, ping
from conveyor.broker.entries import Delivery
from conveyor.broker.errors import translate_every_error
from conveyor.broker.heartbeats import HeartbeatLink
from conveyor.broker.keys import Keys
from conveyor.broker.replies import Answering
from conveyor.broker.server_version import ServerVersion, read_server_version
from conveyor.broker.settings import RedisSettings
from conveyor.broker.waiting_jobs import WaitingJobs
from conveyor.broker.wire import Fields, Job, Message, RawFields
from conveyor.broker.worker_streams import WorkerStreams
from conveyor.errors import BrokerTooOld

__all__ = ("WorkerBroker",)


class WorkerBroker:
    """One worker process's broker: ``async with WorkerBroker(...) as broker:``.

    ``consumer`` is the worker's name in the consumer groups (unique in the fleet);
    ``max_block`` the longest blocking read it will make (its connections' read timeout
    allows for it).
    """

    def __init__(
        self, redis: RedisSettings | str, keys: Keys, consumer: str, *, max_block: float
    ) -> None:
        settings = RedisSettings.from_url(redis) if isinstance(redis, str) else redis
        self._settings = settings
        self.keys = keys
        self.consumer = consumer
        self.where = settings.redacted_url  # for messages: the URL without its password
        self.cluster = settings.cluster  # Redis Cluster: a blocking read names one slot
        self._redis = create_client(settings, blocking=True, max_block=max_block)
        self._streams = WorkerStreams(
            self._redis, keys, consumer, self.where, cluster=settings.cluster
        )
        self._writer = self._streams.writer
        self._waiting = WaitingJobs(self._redis, consumer)
        self._translated = translate_every_error(self.where)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the worker's connections (shielded: it runs as the worker stops)."""
        with anyio.CancelScope(shield=True), self._translated:
            await self._redis.aclose()

    # -- starting: is Redis there, its clock, the groups, the control cursors

    async def ping(self, timeout: float = 10.0) -> float:
        """Connects, PINGs and disconnects; the round trip in seconds (within ``timeout``)."""
        return await ping(self._settings, timeout=timeout)

    async def server_version(self) -> ServerVersion | None:
        """The server's name and version (None when it does not say: see
        ``broker.server_version``); raises :class:`BrokerTooOld` below Redis 7.0."""
        with self._translated:
            found = await read_server_version(self._redis)
        if found is not None and found.too_old:
            raise BrokerTooOld(self.where, str(found))
        return found

    async def redis_time(self) -> tuple[tuple[int, int], float, float]:
        """Redis's ``TIME`` (seconds, microseconds), with ``time.time()`` just before the
        command was sent and just after its answer came."""
        with self._translated:
            return await redis_time(self._redis, self.where)

    async def ensure_groups(self, streams: Sequence[str]) -> None:
        """Creates each job stream's consumer group (from its start) unless it exists."""
        with self._translated:
            await self._streams.ensure_groups(streams)

    async def control_cursors(self, streams: Sequence[str]) -> dict[str, bytes]:
        """The id of the last entry of each control stream, to read only what comes next."""
        with self._translated:
            return await self._streams.control_cursors(streams)

    async def publish_limits(self, model: str, max_queue_length: int | None) -> None:
        """Tells clients the model's queue limit (the last worker to start wins)."""
        with self._translated:
            await self._streams.publish_limits(model, max_queue_length)

    def heartbeat_link(self) -> HeartbeatLink:
        """A new blocking connection for the heartbeat thread (made and used there)."""
        client = create_sync_client(self._settings)
        return HeartbeatLink(client, self.keys, self.consumer, self._translated)

    # -- background: the pipeline's flusher and the acker, for the worker's life

    async def run_writers(self) -> None:
        """Sends pipelined writes and the acks no answer carried, until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._streams.batcher.run_flusher)
            tg.start_soon(self._writer.run_acker)

    @property
    def acks_waiting(self) -> bool:
        """Whether acks of answered jobs wait for the next answer's round trip."""
        return self._writer.acks_waiting

    async def flush_acks(self) -> bool:
        """Sends the acks still waiting, now; returns whether they were all done."""
        with self._translated:
            return await self._writer.flush_acks()

    # -- jobs

    async def read_jobs(self, streams: Sequence[str], free: int, block_s: float) -> list[Delivery]:
        """Takes at most ``free`` new jobs from ``streams``, waiting up to ``block_s`` (see
        :meth:`WorkerStreams.read_jobs`)."""
        with self._translated:
            return await self._streams.read_jobs(streams, free, block_s)

    @property
    def reads_ride(self) -> bool:
        """Whether the next :meth:`read_jobs` takes the answers waiting to go along with it
        (see :attr:`WorkerStreams.reads_ride`): answers given until then may wait for it."""
        return self._streams.reads_ride

    async def take_waiting(
        self, streams: Sequence[str], count: int, min_age_s: float, busy: int
    ) -> list[Delivery]:
        """Takes at most ``count`` new jobs from ``streams`` that no worker with room would
        take: every other consumer holds ``busy`` jobs, or they waited ``min_age_s`` (see
        :mod:`conveyor.broker.waiting_jobs`); never blocks."""
        with self._translated:
            if self._waiting.checked:
                found = await self._waiting.take(streams, count, min_age_s, busy)
                if found is not None:
                    return found
            # the ACL refused the script (said once, in waiting_jobs): as before the check
            return await self._streams.take_now(streams, count)

    async def reclaim(self, streams: Sequence[str], idle_s: float, limit: int) -> list[Delivery]:
        """Takes over at most ``limit`` jobs of workers whose heartbeat is gone, pending
        longer than ``idle_s``; each comes with its delivery count (its fencing attempt)."""
        with self._translated:
            return await self._streams.reclaim(streams, idle_s, limit)

    async def claim(self, delivery: Delivery, job: Job, deadline: float) -> str | None:
        """Claims the job's request for this entry (see ``claims``): None if it may run,
        else the claim of the copy that runs it."""
        with self._translated:
            return await self._streams.claim(delivery, job, deadline)

    def claim_soon(
        self,
        delivery: Delivery,
        job: Job,
        deadline: float,
        claimed: Callable[[str | None], None],
    ) -> None:
        """As :meth:`claim` without waiting: ``claimed`` gets the outcome."""
        self._streams.claim_soon(delivery, job, deadline, claimed)

    async def reply(
        self, job: Job, messages: Sequence[Message], deadline: float | None = None
    ) -> None:
        """Writes messages to the job's reply stream and rings its caller's doorbell."""
        with self._translated:
            await self._writer.store(job, messages, final=False, deadline=deadline)

    async def finish(
        self,
        delivery: Delivery,
        job: Job,
        messages: Sequence[Message],
        deadline: float | None = None,
        acked: Callable[[], None] | None = None,
    ) -> None:
        """Stores the final messages, then acks and deletes the job entry (and calls
        ``acked``) with a later round trip (see ``replies``)."""
        with self._translated:
            await self._streams.finish(delivery, job, messages, deadline, acked)

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
        """As :meth:`finish`, without waiting for Redis: the answer goes with the next round
        trip (or now, when none is on the wire). ``ended`` is called once it is stored (with
        None; its ack follows, then ``acked``) or will not be (with the Conveyor error; the
        job stays pending, to be delivered again). A refused answer is tried again until
        ``deadline`` first. Raises only if the messages cannot be encoded (nothing sent).
        The writer's own coroutine, to await: no wrapper coroutine a job."""
        return self._streams.answer(delivery, job, messages, deadline, acked, ended, together)

    def answer_soon(self, answers: Sequence[Answering]) -> None:
        """As :meth:`answer` for many jobs (a batch's), without waiting: one write of their
        answers with the next round trip, their acks with a later one. Each job's ``ended``
        hears its outcome (an answer that cannot be encoded: at once, nothing sent)."""
        self._writer.answer_soon(answers)

    async def drop_duplicate(self, delivery: Delivery) -> None:
        """Acks and deletes a copy of a job that another copy runs."""
        with self._translated:
            await self._streams.drop_duplicate(delivery)

    async def requeue(self, delivery: Delivery) -> None:
        """Puts a job back at the end of its stream for another worker, then acks this one."""
        with self._translated:
            await self._streams.requeue(delivery)

    async def dead_letter(
        self,
        delivery: Delivery,
        dead_stream: str,
        reason: str,
        *,
        job: Job | None = None,
        error_message: Message | None = None,
    ) -> None:
        """Moves an entry to ``dead_stream`` with its reason, then acks and deletes it (and
        sends ``error_message`` to the job's caller, when given)."""
        with self._translated:
            await self._streams.dead_letter(
                delivery, dead_stream, reason, job=job, error_message=error_message
            )

    # -- a predict_stream's inputs and credit

    async def read_inputs(
        self, key: str, after: bytes, block_s: float
    ) -> list[tuple[bytes, RawFields]]:
        """Reads a predict_stream's input entries after ``after``, waiting up to ``block_s``."""
        with self._translated:
            return await self._streams.read_inputs(key, after, block_s)

    async def wait_credit(self, key: str, block_s: float) -> int | None:
        """Waits up to ``block_s`` for a streaming caller to report the chunks it took."""
        with self._translated:
            return await self._streams.wait_credit(key, block_s)

    # -- control requests, and the fleet's bookkeeping

    async def read_control(
        self, cursors: Mapping[str, bytes], block_s: float
    ) -> list[tuple[str, bytes, RawFields]]:
        """Reads control requests sent to the fleet after each stream's cursor."""
        with self._translated:
            return await self._streams.read_control(cursors, block_s)

    async def delete_dead_consumers(
        self, streams: Sequence[str], idle_s: float
    ) -> list[tuple[str, str]]:
        """Deletes the consumers of dead workers that own nothing (see ``bookkeeping``);
        returns the (stream, consumer) pairs deleted."""
        with self._translated:
            return await delete_dead_consumers(
                self._redis, self.keys, streams, idle_s, self.consumer, self.where
            )

    async def leave(self, streams: Sequence[str]) -> list[str]:
        """Leaves the group of each stream where this worker owns nothing; returns the
        streams where it still owns pending jobs."""
        with self._translated:
            return await delete_consumer(self._redis, streams, self.consumer, self.where)
