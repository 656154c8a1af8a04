"""Sending a call's job, and cleaning up after a call given up on.

:meth:`Sender.send` XADDs a job within its model's queue limit (``max_queue_length``, as the
workers publish it), waiting out an outage of a Redis that answered before.
:meth:`Sender.timed_out` says as well as it can why no answer came in time, and
:meth:`Sender.withdraw` makes sure a caller that gave up leaves no work behind.
"""

from __future__ import annotations

import logging
import time

import anyio

from conveyor.broker import ClientBroker
from conveyor.broker.keys import Keys
from conveyor.broker.wire import ControlVerb, Fields, Job, Message, encode_job
from conveyor.client.backoff import Backoff
from conveyor.client.waiter import Sent, Unsent, Waiter
from conveyor.errors import (
    BrokerConnectionError,
    ConveyorError,
    DeadlineExceeded,
    NoWorkerError,
    QueueFull,
)

__all__ = ("Sender",)

logger = logging.getLogger(__name__)

_LIMITS_TTL_S = 10.0  # how long a model's published queue limit is trusted


class Sender:
    """Sends jobs through the client's broker; caches each model's queue limit a while."""

    def __init__(self, broker: ClientBroker, keys: Keys) -> None:
        self._broker = broker
        self._keys = keys
        self._limits: dict[str, tuple[float, int | None]] = {}  # model -> (when, queue limit)

    async def send_and_wait(
        self, waiter: Waiter, job: Job, stream: str, fields: Fields, wait_when_full: bool
    ) -> Message:
        """Sends a unary call's job and returns its run's first message. On trio, a job of a
        model without a queue limit goes without waiting for Redis (``send_job_soon``)."""
        broker = self._broker
        if not broker.on_asyncio and broker.reached and self._unlimited(job.model):
            waiter.sending = (job, stream)
            broker.send_job_soon(stream, fields, waiter.sent_soon)
            try:
                return await waiter.next()
            except Unsent:  # not stored: again, waiting (its retries, and its errors)
                pass
        await self.send(waiter, job, stream, fields, wait_when_full)
        return await waiter.next()

    async def send(
        self, waiter: Waiter, job: Job, stream: str, fields: Fields, wait_when_full: bool
    ) -> None:
        """XADDs the job, within the model's queue limit; sets ``waiter.sent``.

        A full queue raises :class:`QueueFull`, or with ``wait_when_full`` waits for room.
        While a Redis that answered before is unreachable (restarting, failing over), tries
        again until the caller's deadline, whose TimeoutError then reports the connection
        error (see :meth:`timed_out`).
        """
        broker = self._broker
        backoff: Backoff | None = None  # made on the first wait: most sends never wait
        while True:
            try:
                limit = await self._queue_limit(job.model)
                sent = await broker.send_job(stream, fields, limit)
            except BrokerConnectionError as error:
                if not broker.reached:
                    raise  # never reached: a wrong URL or a server that is down, say so now
                waiter.unreachable = error  # an outage of a Redis that worked: wait it out
                backoff = backoff or Backoff()
                await backoff.wait()
                continue
            waiter.unreachable = None
            if isinstance(sent, int):  # the queue is full: `sent` is its backlog
                assert limit is not None
                if not wait_when_full:
                    raise QueueFull(job.model, sent, limit)
                waiter.full = QueueFull(job.model, sent, limit)
                backoff = backoff or Backoff()
                await backoff.wait()
                continue
            waiter.full = None
            assert isinstance(sent, bytes)
            waiter.sent = Sent(job, stream, sent)
            return

    def _unlimited(self, model: str) -> bool:
        """Whether the model is known, of late, to have no queue limit. No Redis call: one
        that fails during an outage is waited out by :meth:`send`."""
        cached = self._limits.get(model)
        if cached is None:
            return False
        when, limit = cached
        return limit is None and time.monotonic() - when < _LIMITS_TTL_S

    async def _queue_limit(self, model: str) -> int | None:
        """The model's ``max_queue_length`` as its workers published it (cached a while)."""
        cached = self._limits.get(model)
        now = time.monotonic()
        if cached is not None and now - cached[0] < _LIMITS_TTL_S:
            return cached[1]
        limit = await self._broker.model_limits(model)
        self._limits[model] = (now, limit)
        return limit

    async def timed_out(self, job: Job, waiter: Waiter, timeout: float) -> ConveyorError:
        """The error for a call that got no answer in time, saying as well as we can why."""
        if waiter.unreachable is not None:
            return waiter.unreachable
        if waiter.full is not None:
            return waiter.full
        sent = waiter.sent
        if sent is None:  # the job never reached Redis: it is Redis that did not answer
            return BrokerConnectionError(
                self._broker.settings.redacted_url,
                f"no answer from Redis within {timeout:.1f}s",
            )
        taken: bool | None = None
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            taken = await self._broker.job_was_taken(sent.stream, sent.entry_id)
        if taken is False:
            return NoWorkerError(job.id, timeout, job.model)
        if taken is None:
            return DeadlineExceeded(job.id, timeout)
        return DeadlineExceeded(job.id, timeout, "the job was taken by a worker")

    async def withdraw(self, job: Job, unanswered: Sent | None, *keys: str) -> ConveyorError | None:
        """For a call given up on (``unanswered`` is its job as sent), deletes the job if no
        worker took it yet and asks the workers to stop it if one did, so a caller that gave
        up leaves no work running; deletes ``keys``. Shielded, at most 2 s. Returns why that
        cleanup failed, if it did (it never raises)."""
        if unanswered is None and not keys:
            return None
        broker = self._broker
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            try:
                if unanswered is not None:
                    await broker.withdraw_job(unanswered.stream, unanswered.entry_id)
                    cancel = job._replace(
                        method=ControlVerb.CANCEL.value, args=(), kwargs={}, inputs=None
                    )
                    await broker.send_control(self._keys.control(job.model), encode_job(cancel))
                if keys:
                    await broker.delete(*keys)
            except ConveyorError as error:
                # Best effort: the keys expire by themselves, and the call's own outcome (an
                # answer, or the error that ended it) is what the caller must see.
                logger.warning("client.cleanup_failed request=%s error=%s", job.id, error)
                return error
        return None
