"""What the worker's reply writer (``replies.ReplyWriter``) sends, one job at a time.

A :class:`Write` is one job's messages to store, or job entries to ack, with how its try went.
An :class:`Answer` is a job's final answer on its way without its job's task waiting for it
(``ReplyWriter.answer``): written, written again with backoff while Redis refuses it (out of
memory) and the job's deadline allows, then acked; its job hears the outcome through a
callback. A write a lost connection left unknown is not tried again: the job stays pending and
is delivered again where Redis can be reached.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from redis.exceptions import ResponseError

from conveyor.broker.errors import translate_every_error
from conveyor.broker.wire import Fields, Job, MessageType, fields_size, pack_inline

__all__ = (
    "INLINE_REPLY_MAX_BYTES",
    "RETRY_FIRST_S",
    "RETRY_MAX_S",
    "AckTarget",
    "Answer",
    "Tries",
    "Write",
    "describe",
    "inline_entry",
    "refused",
)

logger = logging.getLogger(__name__)

# A final answer up to this size rides in the client's doorbell list itself, when the job
# says the client reads it there (Job.inline_reply): no reply stream to XADD and EXPIRE, no
# XREAD round trip and no UNLINK for the client. Streams, bigger answers and answers with
# tensor fields of their own keep reply streams.
INLINE_REPLY_MAX_BYTES = 64 * 1024

# Backoff between tries of an answer Redis did not store.
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 1.0


class AckTarget(Protocol):
    """A job entry to ack and delete once its answer is stored (a ``Delivery``)."""

    @property
    def stream(self) -> str: ...
    @property
    def entry_id(self) -> bytes: ...


@dataclass(eq=False)
class Write:
    """One job's messages to store, or entries to ack, and how it went."""

    job: Job | None
    entries: list[Fields]
    final: bool  # the job's last messages: a small one may ride in the bell
    deadline: float = 0.0  # the job's, on this host's clock
    acks: Sequence[AckTarget] = ()
    settled: bool = False
    error: BaseException | None = None
    then: Callable[[Write], None] | None = None  # called once settled (an Answer's try)

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error


_FINAL = frozenset((MessageType.RESULT.value, MessageType.ERROR.value))  # Enum .value is slow
_TEXT = frozenset((str, bytes))


def inline_entry(write: Write) -> bytes | None:
    """The bell entry carrying a job's final answer, if it may ride there."""
    job = write.job
    if job is None or not job.inline_reply or not write.final or len(write.entries) != 1:
        return None
    fields = write.entries[0]
    if fields["type"] not in _FINAL:
        return None
    kinds = set(map(type, fields.values()))
    if memoryview in kinds:  # a tensor in a field of its own keeps the reply stream
        return None
    envelope = fields.get("envelope")
    if isinstance(envelope, bytes) and len(envelope) > INLINE_REPLY_MAX_BYTES:
        return None  # over the limit alone: not packed for nothing
    packed = pack_inline(fields)
    # str and bytes values take no fewer bytes packed than fields_size counts: it need only
    # be counted near the limit (a batch's small answers skip a Python loop each)
    if (len(packed) > INLINE_REPLY_MAX_BYTES or not kinds <= _TEXT) and fields_size(
        fields
    ) > INLINE_REPLY_MAX_BYTES:
        return None
    return packed


class Writer(Protocol):
    """What an :class:`Answer` asks of the reply writer."""

    where: str  # the redacted URL, for errors

    def translated(self, error: BaseException) -> BaseException: ...
    def resend(self, write: Write) -> None: ...
    def ack_soon(self, target: AckTarget, acked: Callable[[], None] | None = None) -> None: ...


class Tries:
    """The tries of one job's answer: one Redis refused (out of memory, WRONGTYPE: Redis
    answered) is tried again with backoff while the job's deadline allows; one a lost
    connection left unknown is not. Logged once refused, once given up, once stored after
    retries. Both ways of writing an answer (``ReplyWriter.store``, :class:`Answer`) follow it."""

    def __init__(self, request: str, deadline: float) -> None:
        self.request = request  # the job's request id, for the log lines
        self.deadline = deadline  # the job's, on this host's clock
        self.tries = 1
        self.delay = RETRY_FIRST_S

    def again_after(self, error: BaseException, translated: BaseException) -> float | None:
        """After a failed try (``translated``: its error as Conveyor's): how long to wait
        before the next, or None to give up."""
        if time.time() + self.delay >= self.deadline or not refused(error):
            logger.warning(
                "job.answer_not_stored request=%s tries=%d error=%s",
                self.request,
                self.tries,
                describe(translated),
            )
            return None
        if self.tries == 1:
            logger.warning(
                "job.answer_refused request=%s retrying_until=deadline error=%s",
                self.request,
                describe(translated),
            )
        delay = self.delay
        self.delay = min(delay * 2, RETRY_MAX_S)
        self.tries += 1
        return delay

    def stored(self) -> None:
        if self.tries > 1:
            logger.info("job.answer_stored request=%s tries=%d", self.request, self.tries)


class Answer:
    """A job's final answer on its way: written, tried again while Redis refuses it and its
    deadline allows, then acked. ``ended`` hears the outcome once (None: stored, its ack
    follows and then ``acked``; else the error, and the job stays pending)."""

    def __init__(
        self,
        writer: Writer,
        job: Job,
        entries: list[Fields],
        target: AckTarget,
        deadline: float,
        acked: Callable[[], None],
        ended: Callable[[BaseException | None], None],
    ) -> None:
        self.writer = writer
        self.job = job
        self.entries = entries
        self.target = target
        self.deadline = deadline  # the job's, on this host's clock
        self.acked = acked
        self.ended = ended
        self.tries: Tries | None = None  # made once a try failed (most answers have one try)

    def write(self) -> Write:
        """The next try's write."""
        return Write(self.job, self.entries, True, self.deadline, then=self.settled)

    def settled(self, write: Write) -> None:
        """The outcome of one try (called from the pipeline's settle)."""
        writer, error, tries = self.writer, write.error, self.tries
        if error is None:
            if tries is not None:
                tries.stored()
            writer.ack_soon(self.target, self.acked)
            self.ended(None)
            return
        if tries is None:
            tries = self.tries = Tries(self.job.id, self.deadline)
        translated = writer.translated(error)
        delay = tries.again_after(error, translated)
        if delay is None:
            self.ended(conveyor_error(translated, writer.where))
            return
        asyncio.get_running_loop().call_later(delay, self._again)

    def _again(self) -> None:
        try:
            self.writer.resend(self.write())
        except RuntimeError as error:  # the batcher closed: the worker stops
            self.ended(conveyor_error(error, self.writer.where))


def conveyor_error(error: BaseException, where: str) -> BaseException:
    """``error`` as the worker's face would raise it: no redis-py exception leaves the broker."""
    try:
        with translate_every_error(where):
            raise error
    except BaseException as translated:  # handed over, not handled
        return translated


def refused(error: BaseException) -> bool:
    """Redis answered the write with an error (out of memory, WRONGTYPE, ...), as opposed to
    a connection that failed, whose write may or may not have run."""
    return isinstance(error, ResponseError)


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
