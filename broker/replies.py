"""The worker's writes: an answer is stored before its job is acked, whatever fails.

Every job's messages go out coalesced with the other jobs' (one EXPIRE per reply stream, one
LPUSH + EXPIRE per client's doorbell), and the outcome of each command is mapped back to the
jobs that depend on it. A job is acked (``XACK`` + ``XDEL``) only in a later round trip, once
every command of its answer succeeded: a reply that Redis refused (out of memory), that a lost
connection left unknown, or that failed in any way leaves the job unacked. The ack cannot go
in the same pipeline: Redis runs the commands after a refused one all the same, and MULTI
cannot span the job stream's slot and the client's on Redis Cluster (nor would it stop the
ack after a command that fails at run time).

So that the ack costs no round trip of its own, it rides in the next answer's pipeline, or
goes alone ``ACK_DELAY_S`` later if no answer comes (``run_acker``): one job's answer carries
the previous one's ack. Measured (bench, 2 cores): a round trip of its own per ack cost
~0.3 ms of sequential p50 and ~40 us of worker CPU per call; riding along, neither shows. Until
its ack lands an answered job stays pending (its entry in ``XLEN``); a worker that dies in that
window has its job run again, and the caller keeps the first answer.

An answer Redis refused is kept and written again, with backoff, until the job's deadline;
past it, or when the connection failed, the job stays pending and is delivered again (see
``ReplyWriter.store``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import anyio
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from conveyor.broker.errors import is_out_of_memory, out_of_memory, translate_errors
from conveyor.broker.keys import GROUP
from conveyor.broker.pipelining import PipelineBatcher, Settle
from conveyor.broker.wire import (
    Fields,
    Job,
    Message,
    MessageType,
    encode_message,
    fields_size,
    pack_inline,
)
from conveyor.errors import BrokerConnectionError

__all__ = (
    "ACK_DELAY_S",
    "INLINE_REPLY_MAX_BYTES",
    "REPLY_GRACE_S",
    "AckTarget",
    "ReplyWriter",
    "ttl_for",
)

logger = logging.getLogger(__name__)

# Replies and inputs live at least this long past the job's deadline, then expire unread.
REPLY_GRACE_S = 60.0
# However far a job's deadline, its reply and bell expire within a week.
_MAX_TTL_S = 7 * 24 * 3600.0

# A final answer up to this size rides in the client's doorbell list itself, when the job
# says the client reads it there (Job.inline_reply): no reply stream to XADD and EXPIRE, no
# XREAD round trip and no UNLINK for the client. Streams, bigger answers and answers with
# tensor fields of their own keep reply streams.
INLINE_REPLY_MAX_BYTES = 64 * 1024

# Backoff between tries of an answer Redis did not store.
_RETRY_FIRST_S = 0.05
_RETRY_MAX_S = 1.0
# An ack no answer carried goes alone this long after it was due (far below any reclaim's
# idle time: a job answered here is never taken for an abandoned one).
ACK_DELAY_S = 0.05


def ttl_for(deadline: float) -> float:
    """How long a job's reply keys live: to its deadline (unix time on this host's clock),
    plus a grace period."""
    return min(max(deadline - time.time(), 0.0) + REPLY_GRACE_S, _MAX_TTL_S)


class AckTarget(Protocol):
    """A job entry to ack and delete once its answer is stored (a ``Delivery``)."""

    @property
    def stream(self) -> str: ...
    @property
    def entry_id(self) -> bytes: ...


@dataclass(slots=True, eq=False)
class _Write:
    """One job's messages to store, or entries to ack, and how it went."""

    job: Job | None
    entries: list[Fields]
    final: bool  # the job's last messages: a small one may ride in the bell
    deadline: float = 0.0  # the job's, on this host's clock
    acks: Sequence[AckTarget] = ()
    settled: bool = False
    error: BaseException | None = None
    deferred: bool = False  # acks that ride with the next flush (tried again if it fails)
    acked: Callable[[], None] | None = None  # called once a deferred ack is done

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error


def _inline_entry(write: _Write) -> bytes | None:
    """The bell entry carrying a job's final answer, if it may ride there."""
    job = write.job
    if job is None or not job.inline_reply or not write.final or len(write.entries) != 1:
        return None
    fields = write.entries[0]
    if fields["type"] not in (MessageType.RESULT.value, MessageType.ERROR.value):
        return None
    # a tensor in a field of its own (a memoryview) keeps the reply stream
    if memoryview in map(type, fields.values()) or fields_size(fields) > INLINE_REPLY_MAX_BYTES:
        return None
    return pack_inline(fields)


class ReplyWriter:
    """Stores answers and acks jobs through one worker's pipeline batcher."""

    def __init__(self, batcher: PipelineBatcher, where: str) -> None:
        self._batcher = batcher
        self._where = where  # the redacted URL, for errors
        self._pending: list[_Write] = []
        self._deferred: list[_Write] = []  # acks waiting for the next flush
        self._deferred_due: asyncio.Event | None = None  # made on the worker's loop

    async def store(
        self,
        job: Job,
        messages: Sequence[Message],
        *,
        final: bool,
        deadline: float | None = None,
    ) -> None:
        """Returns once Redis stored every message of ``messages`` in the job's reply stream
        (or its final answer in the client's doorbell) and rang the doorbell.

        A write that Redis refused (out of memory, a key of the wrong type: Redis answered)
        is kept and tried again until ``deadline`` (the job's on this host's clock; by
        default as the client wrote it): this worker still holds the job, and a run
        elsewhere would meet the same refusal. A write a lost connection left unknown raises
        at once: the job stays pending and runs again where Redis can be reached (its
        worker's heartbeat may be failing too). Either way it raises a ``ConveyorError``
        saying why in the end, and the job is never acked without its answer.
        """
        deadline = job.deadline if deadline is None else deadline
        entries = [encode_message(message) for message in messages]
        write = _Write(job, entries, final, deadline)
        delay = _RETRY_FIRST_S
        tries = 1
        while (error := await self._send(write)) is not None:
            if time.time() + delay >= deadline or not _refused(error):
                logger.warning(
                    "job.answer_not_stored request=%s tries=%d error=%s",
                    job.id,
                    tries,
                    _describe(self._translated(error)),
                )
                self._raise(error)
            if tries == 1:
                logger.warning(
                    "job.answer_refused request=%s retrying_until=deadline error=%s",
                    job.id,
                    _describe(self._translated(error)),
                )
            await anyio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_S)
            tries += 1
            write = _Write(job, entries, final, deadline)
        if tries > 1:
            logger.info("job.answer_stored request=%s tries=%d", job.id, tries)

    async def ack(self, targets: Sequence[AckTarget]) -> None:
        """Acks and deletes job entries (whose answers are stored); raises if Redis did not."""
        error = await self._send(_Write(None, [], False, acks=targets))
        if error is not None:
            self._raise(error)

    @property
    def acks_waiting(self) -> bool:
        """Whether deferred acks wait for a flush."""
        return bool(self._deferred)

    def ack_soon(self, target: AckTarget, acked: Callable[[], None] | None = None) -> None:
        """Acks and deletes a job entry whose answer is stored, with the next flush (or
        alone within ``ACK_DELAY_S``; see the module's docstring); then calls ``acked``."""
        self._deferred.append(_Write(None, [], False, acks=(target,), deferred=True, acked=acked))
        if self._deferred_due is None:
            self._deferred_due = asyncio.Event()
        self._deferred_due.set()

    async def run_acker(self) -> None:
        """Sends the acks no answer carried, ``ACK_DELAY_S`` after they were due; until
        cancelled (then :meth:`flush_acks` sends what is left)."""
        if self._deferred_due is None:
            self._deferred_due = asyncio.Event()
        due = self._deferred_due
        delay = ACK_DELAY_S
        while True:
            await due.wait()
            due.clear()
            await anyio.sleep(delay)
            if self._deferred:
                failed = await self._send(_Write(None, [], False))  # the flush carries them
                delay = min(delay * 2, _RETRY_MAX_S) if failed else ACK_DELAY_S
                if failed:
                    logger.warning("worker.ack_failed retry_in=%.2fs error=%s", delay, failed)

    async def flush_acks(self) -> bool:
        """Sends the acks still waiting, now (a worker out of slots, or stopping); returns
        whether they were all done."""
        if self._deferred:
            failed = await self._send(_Write(None, [], False))
            if failed is not None:
                logger.warning("worker.ack_failed unacked=%d error=%s", len(self._deferred), failed)
                return False
        return True

    def _translated(self, error: BaseException) -> BaseException:
        """A Redis error as Conveyor's (out of memory, connection), else as it is."""
        if is_out_of_memory(error):
            return out_of_memory(self._where, error)
        try:
            with translate_errors(self._where):
                raise error
        except BrokerConnectionError as translated:
            return translated
        except BaseException:
            return error

    def _raise(self, error: BaseException) -> NoReturn:
        translated = self._translated(error)
        if translated is error:
            raise error
        raise translated from error

    async def _send(self, write: _Write) -> BaseException | None:
        """One try: the write goes out with whatever else is pending; returns its error."""
        self._pending.append(write)
        try:
            await self._batcher.run_settled(self._add)
        except Exception as error:  # the round trip failed, or never went out
            write.fail(error)
        finally:
            if not write.settled and write in self._pending:
                self._pending.remove(write)  # never sent (cancelled, or the batcher closed)
        if not write.settled:
            write.fail(RuntimeError("the answer was never sent"))
        return write.error

    def _add(self, pipe: Pipeline) -> Settle | None:
        """Adds every write pending since the last flush, coalesced, and returns how to
        settle them from the replies. The first caller of a flush sends them all; the
        others find nothing left."""
        writes, self._pending = self._pending, []
        if self._deferred:
            writes += self._deferred
            self._deferred = []
        if not writes:
            return None
        start = len(pipe)
        # for each command, in order, the writes that fail if it fails
        owners: list[list[_Write]] = []
        replies: dict[str, tuple[float, list[_Write]]] = {}
        bells: dict[str, tuple[list[str | bytes], float, list[_Write]]] = {}
        acks: dict[str, tuple[list[bytes], list[_Write]]] = {}
        for write in writes:
            job = write.job
            if job is not None and write.entries:
                ttl = ttl_for(write.deadline)
                ids, bell_ttl, ringers = bells.get(job.bell, ([], 0.0, []))
                bells[job.bell] = (ids, max(ttl, bell_ttl), ringers)
                ringers.append(write)
                inline = _inline_entry(write)
                if inline is not None:
                    ids.append(inline)
                else:
                    for entry in write.entries:
                        pipe.xadd(job.reply, entry)  # type: ignore[arg-type]
                        owners.append([write])
                    reply_ttl, writers = replies.get(job.reply, (0.0, []))
                    replies[job.reply] = (max(ttl, reply_ttl), writers)
                    writers.append(write)
                    ids.append(job.id)
            for target in write.acks:
                entry_ids, ackers = acks.setdefault(target.stream, ([], []))
                entry_ids.append(target.entry_id)
                if not ackers or ackers[-1] is not write:
                    ackers.append(write)
        for key, (ttl, writers) in replies.items():
            pipe.expire(key, max(1, int(ttl)))
            owners.append(writers)
        for bell, (ids, ttl, ringers) in bells.items():
            pipe.lpush(bell, *ids)
            owners.append(ringers)
            pipe.expire(bell, max(1, int(ttl)))
            owners.append(ringers)
        for stream, (entry_ids, ackers) in acks.items():
            pipe.xack(stream, GROUP, *entry_ids)
            owners.append(ackers)
            pipe.xdel(stream, *entry_ids)
            owners.append(ackers)
        assert len(pipe) - start == len(owners)

        def settle(results: list[Any] | BaseException) -> None:
            if isinstance(results, BaseException):
                for write in writes:
                    write.fail(results)
            else:
                for result, failed in zip(results, owners, strict=True):
                    if isinstance(result, Exception):
                        for write in failed:
                            write.fail(result)
            for write in writes:
                write.settled = True
                if not write.deferred:
                    continue
                if write.error is not None:  # into the next flush again
                    self._deferred.append(
                        _Write(None, [], False, acks=write.acks, deferred=True, acked=write.acked)
                    )
                elif write.acked is not None:
                    write.acked()
            if self._deferred and self._deferred_due is not None:
                self._deferred_due.set()

        return settle


def _refused(error: BaseException) -> bool:
    """Redis answered the write with an error (out of memory, WRONGTYPE, ...), as opposed to
    a connection that failed, whose write may or may not have run."""
    return isinstance(error, ResponseError)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
