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
``ReplyWriter.store``). A unary job's task does not wait for any of it
(``ReplyWriter.answer``: the same steps by callbacks, ``writes.Answer``); measured (bench.drain,
2 cores): 142 -> 92 us of worker CPU a job, with the claims sent together.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import anyio
from redis.asyncio.client import Pipeline

from conveyor.broker.errors import is_out_of_memory, out_of_memory, translate_errors
from conveyor.broker.keys import GROUP
from conveyor.broker.pipelining import PipelineBatcher, Settle
from conveyor.broker.wire import Fields, Job, Message, encode_message
from conveyor.broker.writes import (
    INLINE_REPLY_MAX_BYTES,
    RETRY_MAX_S,
    AckTarget,
    Answer,
    Tries,
    Write,
    conveyor_error,
    inline_entry,
)
from conveyor.compiled import caused_by
from conveyor.errors import BrokerConnectionError

# One job's answer for ``ReplyWriter.answer_soon``: as ``ReplyWriter.answer``'s arguments.
Answering = tuple[
    Job,
    Sequence[Message | Fields],  # messages, or their fields encoded already (encode_rows)
    AckTarget,
    float,
    Callable[[], None],
    Callable[[BaseException | None], None],
]

__all__ = (
    "ACK_DELAY_S",
    "INLINE_REPLY_MAX_BYTES",
    "REPLY_GRACE_S",
    "AckTarget",
    "Answering",
    "ReplyWriter",
    "ttl_for",
)

logger = logging.getLogger(__name__)

# Replies and inputs live at least this long past the job's deadline, then expire unread.
REPLY_GRACE_S = 60.0
# However far a job's deadline, its reply and bell expire within a week.
_MAX_TTL_S = 7 * 24 * 3600.0

# An ack no answer carried goes alone this long after it was due (far below any reclaim's
# idle time: a job answered here is never taken for an abandoned one).
ACK_DELAY_S = 0.05


def ttl_for(deadline: float) -> float:
    """How long a job's reply keys live: to its deadline (unix time on this host's clock),
    plus a grace period."""
    return min(max(deadline - time.time(), 0.0) + REPLY_GRACE_S, _MAX_TTL_S)


class ReplyWriter:
    """Stores answers and acks jobs through one worker's pipeline batcher."""

    def __init__(self, batcher: PipelineBatcher, where: str) -> None:
        self._batcher = batcher
        self.where = where  # the redacted URL, for errors
        self._pending: list[Write] = []
        # acks waiting for the next flush, and what to call once each is done
        self._deferred: list[tuple[AckTarget, Callable[[], None] | None]] = []
        self._deferred_due: asyncio.Event | None = None  # made on the worker's loop
        self._queued = False  # an `_add_queued` waits in the batcher's queue
        self._unsettled = 0  # answers (ReplyWriter.answer) queued or on the wire

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
        write = Write(job, entries, final, deadline)
        tries = Tries(job.id, deadline)
        while (error := await self._send(write)) is not None:
            delay = tries.again_after(error, self.translated(error))
            if delay is None:
                self._raise(error)
            await anyio.sleep(delay)
            write = Write(job, entries, final, deadline)
        tries.stored()

    async def answer(
        self,
        job: Job,
        messages: Sequence[Message | Fields],  # or their fields, encoded already,
        target: AckTarget,
        deadline: float,
        acked: Callable[[], None],
        ended: Callable[[BaseException | None], None],
        together: bool = False,
    ) -> None:
        """As :meth:`store` with ``final=True`` and then :meth:`ack_soon`, without waiting
        for Redis unless nothing is on the wire (then this call sends the pipeline itself:
        at one call in flight the answer leaves at once, with no hop through the flusher).

        ``ended`` is called once the answer's fate is known: with None once it is stored
        (its ack follows, then ``acked``), or with the error (a ``ConveyorError`` where one
        applies) when it will not be: the job stays pending and ``acked`` is never called.
        A refused answer is tried again, with backoff, until ``deadline``, as by
        :meth:`store`. Raises only what encoding the messages raises (nothing was sent).
        ``together``: the caller's next read goes out this loop turn and takes the waiting
        commands along (``WorkerStreams.read_jobs``): the answer waits for it, as when a
        round trip is on the wire (the flusher sends it if that read does not).
        """
        entries = [
            message if type(message) is dict else encode_message(message)  # type: ignore[arg-type]
            for message in messages
        ]
        write = Answer(self, job, entries, target, deadline, acked, ended).write()
        self._pending.append(write)
        self._unsettled += 1
        try:
            if together or self._batcher.busy:
                self._queue_pending()  # rides the next round trip; `ended` hears how it went
            else:
                await self._batcher.run_settled(self._add)
        except Exception as error:  # settled with it (`ended` has it), or never sent
            if not write.settled and write in self._pending:  # the batcher closed
                self._pending.remove(write)
                self._unsettled -= 1
                ended(conveyor_error(error, self.where))

    def answer_soon(self, answers: Sequence[Answering]) -> None:
        """As :meth:`answer` for many jobs at once (a batch's), without waiting at all: their
        writes go together with the next round trip (one pipeline of replies, then one of
        acks). A job whose messages cannot be encoded, or all of them when the batcher has
        closed, hear it through their ``ended`` at once (nothing of theirs was sent)."""
        writes: list[tuple[Write, Callable[[BaseException | None], None]]] = []
        for job, messages, target, deadline, acked, ended in answers:
            try:
                entries = [
                    message if type(message) is dict else encode_message(message)  # type: ignore[arg-type]
                    for message in messages
                ]
            except Exception as error:
                ended(error)
                continue
            write = Answer(self, job, entries, target, deadline, acked, ended).write()
            writes.append((write, ended))
            self._pending.append(write)
        self._unsettled += len(writes)
        try:
            if writes:
                self._queue_pending()
        except RuntimeError as error:  # the batcher closed: none was sent
            for write, ended in writes:
                self._pending.remove(write)
                self._unsettled -= 1
                ended(conveyor_error(error, self.where))

    def _queue_pending(self) -> None:
        """Makes sure the pending writes go out with the batcher's next round trip."""
        if not self._queued:
            self._batcher.submit(self._add_queued)
            self._queued = True

    def resend(self, write: Write) -> None:
        """Sends an answer's write again, with the next round trip (raises RuntimeError once
        the batcher closed)."""
        self._pending.append(write)
        self._unsettled += 1
        try:
            self._queue_pending()
        except RuntimeError:
            self._pending.remove(write)
            self._unsettled -= 1
            raise

    def _add_queued(self, pipe: Pipeline) -> Settle | None:
        self._queued = False
        return self._add(pipe)

    async def ack(self, targets: Sequence[AckTarget]) -> None:
        """Acks and deletes job entries (whose answers are stored); raises if Redis did not."""
        error = await self._send(Write(None, [], False, acks=targets))
        if error is not None:
            self._raise(error)

    @property
    def acks_waiting(self) -> bool:
        """Whether deferred acks wait for a flush, or answers on their way will add some."""
        return bool(self._deferred) or self._unsettled > 0

    def ack_soon(self, target: AckTarget, acked: Callable[[], None] | None = None) -> None:
        """Acks and deletes a job entry whose answer is stored, with the next flush (or
        alone within ``ACK_DELAY_S``; see the module's docstring); then calls ``acked``."""
        self._deferred.append((target, acked))
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
                failed = await self._send(Write(None, [], False))  # the flush carries them
                delay = min(delay * 2, RETRY_MAX_S) if failed else ACK_DELAY_S
                if failed:
                    logger.warning("worker.ack_failed retry_in=%.2fs error=%s", delay, failed)

    async def flush_acks(self) -> bool:
        """Sends the acks still waiting, now (a worker out of slots, or stopping), after the
        answers on their way (whose acks then go too); returns whether they were all done."""
        if self._deferred or self._unsettled:
            failed = await self._send(Write(None, [], False))
            if failed is not None:
                logger.warning("worker.ack_failed unacked=%d error=%s", len(self._deferred), failed)
                return False
        return True

    def translated(self, error: BaseException) -> BaseException:
        """A Redis error as Conveyor's (out of memory, connection), else as it is."""
        if is_out_of_memory(error):
            return out_of_memory(self.where, error)
        try:
            with translate_errors(self.where):
                raise error
        except BrokerConnectionError as translated:
            return translated
        except BaseException:
            return error

    def _raise(self, error: BaseException) -> NoReturn:
        translated = self.translated(error)
        if translated is error:
            raise error
        raise caused_by(translated, error) from error

    async def _send(self, write: Write) -> BaseException | None:
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
        deferred, self._deferred = self._deferred, []
        if deferred:  # every deferred ack in one write (one XACK and XDEL per stream)
            writes.append(Write(None, [], False, acks=[target for target, _ in deferred]))
        if not writes:
            return None
        start = len(pipe)
        # for each command, in order, the writes that fail if it fails
        owners: list[list[Write]] = []
        replies: dict[str, tuple[float, list[Write]]] = {}
        bells: dict[str, tuple[list[str | bytes], float, list[Write]]] = {}
        acks: dict[str, tuple[list[bytes], list[Write]]] = {}
        for write in writes:
            job = write.job
            if job is not None and write.entries:
                ttl = ttl_for(write.deadline)
                ids, bell_ttl, ringers = bells.get(job.bell, ([], 0.0, []))
                bells[job.bell] = (ids, max(ttl, bell_ttl), ringers)
                ringers.append(write)
                inline = inline_entry(write)
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
            # numbers as text: the packer's fast path takes only str and bytes (fastpath.py)
            pipe.execute_command("EXPIRE", key, str(max(1, int(ttl))))
            owners.append(writers)
        for bell, (ids, ttl, ringers) in bells.items():
            pipe.lpush(bell, *ids)
            owners.append(ringers)
            pipe.execute_command("EXPIRE", bell, str(max(1, int(ttl))))
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
                if write.then is not None:
                    self._unsettled -= 1
                    write.then(write)
            if deferred:  # the last write: the deferred acks
                if writes[-1].error is not None:  # into the next flush again
                    self._deferred += deferred
                else:
                    for _, acked in deferred:
                        if acked is not None:
                            acked()
            if self._deferred and self._deferred_due is not None:
                self._deferred_due.set()

        return settle
