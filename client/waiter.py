"""One call in flight: which run's answer it takes, and that a stream arrives whole.

Fencing. A request can be answered by more than one run: its job reclaimed from a worker that
stopped (the same entry, delivered again: a higher ``attempt``), or a copy of its job entry (an
XADD sent twice: another ``entry``). Every reply names its run, ``(entry, attempt)``, and a call
takes the messages of one run:

- the first run heard from is the call's;
- another copy's messages (another entry) are dropped;
- a later delivery of the same entry replaces the run if the caller has taken nothing yet,
  and otherwise breaks a stream with ``StreamInterrupted`` (repeating or skipping chunks
  would be worse); an earlier delivery's late messages are dropped.

Completeness. Chunks are numbered from 0 and the end marker counts them: a chunk seen twice (a
write that redis-py re-sent) is dropped, and a missing one (a reply stream deleted or evicted
before it was read) or an end marker whose count differs breaks the stream with
``StreamInterrupted`` instead of handing the caller a stream with holes.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from conveyor.broker.wire import ErrorCode, ErrorInfo, Job, Message, MessageType
from conveyor.errors import BrokerCommandError, BrokerConnectionError, QueueFull

__all__ = ("Event", "Sent", "Unsent", "Waiter")

logger = logging.getLogger(__name__)

_ENDED = -1  # a waiter's attempt once it stopped taking messages


class Event(Protocol):
    """The running backend's own event: asyncio.Event or trio.Event (anyio.Event wraps them,
    at ~10x the cost to make on asyncio, ~7x on trio)."""

    def set(self) -> object: ...
    async def wait(self) -> object: ...


@dataclass(frozen=True, slots=True)
class Sent:
    """A job as sent: enough to find it in its stream, or send it again."""

    job: Job
    stream: str
    entry_id: bytes


_RESTARTED = "the worker running it stopped and another restarted it; send the request again"
_LOST = (
    "Redis lost them before this client read them (the reply stream was deleted, or evicted: "
    "Conveyor needs maxmemory-policy noeviction); send the request again"
)


class Unsent(Exception):
    """A job sent without waiting (``Waiter.sending``) that Redis did not store, or whose round
    trip failed: :meth:`Waiter.next` raises it, and the caller sends the job again, waiting."""


class Waiter:
    """One call in flight: where its replies are and what has arrived."""

    __slots__ = (
        "attempt",
        "cursor",
        "entry",
        "event",
        "full",
        "inbox",
        "key",
        "new_event",
        "next_seq",
        "refused",
        "request_id",
        "sending",
        "sent",
        "streamed",
        "taken",
        "trim",
        "unreachable",
        "unsent",
    )

    def __init__(self, request_id: str, key: str, new_event: Callable[[], Event]) -> None:
        self.request_id = request_id
        self.key = key
        self.cursor = b"0-0"
        self.trim = False  # delete what the client read from the reply stream as it goes
        self.inbox: deque[Message] = deque()
        self.new_event = new_event
        self.event = new_event()
        self.streamed = False  # whether anything came through the reply stream
        self.attempt: int | None = None  # the delivery whose answer this call takes
        self.entry = ""  # ... of this job entry ("" until known, or from an older worker)
        self.taken = 0  # messages the caller has taken
        self.next_seq = 0  # the chunk a predict_stream expects next
        self.sent: Sent | None = None  # the job entry, once XADDed
        # a job sent without waiting for Redis (see sent_soon): its stream; then its error
        self.sending: tuple[Job, str] | None = None
        self.unsent: BaseException | None = None
        self.refused: BrokerCommandError | None = None  # Redis refused the client's reads
        self.unreachable: BrokerConnectionError | None = None  # why the job is not sent yet
        self.full: QueueFull | None = None  # ... or: the queue was full, waiting for room

    def deliver(self, message: Message) -> None:
        """Takes a message of the reply stream (or doorbell), if it belongs to the call's run."""
        if self.attempt == _ENDED:
            return
        if self.attempt is None:
            self.attempt = message.attempt
            self.entry = message.entry
        elif message.entry != self.entry and message.entry and self.entry:
            # Another copy of the job entry ran too (its claim was lost): not this call's run.
            logger.debug("reply.ignored request=%s entry=%s", self.request_id, message.entry)
            return
        elif message.attempt != self.attempt:
            if self.taken == 0:
                # A reclaimed job restarted before the caller saw anything: follow the new
                # delivery, drop what the old one left unread.
                self.inbox = deque(m for m in self.inbox if m.attempt == message.attempt)
                self.attempt = message.attempt
                self.entry = message.entry or self.entry
                self.next_seq = 0
            elif message.attempt > self.attempt:
                # The worker streaming to this caller died after some chunks; another one
                # restarted the job. Never show duplicated or missing chunks: stop here.
                self._break(_RESTARTED)
                return
            else:
                logger.debug(
                    "reply.ignored request=%s attempt=%d", self.request_id, message.attempt
                )
                return
        if message.type is MessageType.CHUNK:
            # A write that redis-py re-sent can land twice.
            if message.seq < self.next_seq:
                return
            if message.seq > self.next_seq:
                self._break(f"chunks {self.next_seq} to {message.seq - 1} never arrived: {_LOST}")
                return
            self.next_seq = message.seq + 1
        elif message.type is MessageType.END and message.seq != self.next_seq:
            self._break(f"it ended after {message.seq} chunks but {self.next_seq} arrived: {_LOST}")
            return
        self.inbox.append(message)
        self.event.set()

    def fail(self, error: ErrorInfo) -> None:
        """Ends the call with an error of the client's own (not a run's message)."""
        if self.attempt == _ENDED:
            return
        self.inbox.append(Message(MessageType.ERROR, self.request_id, 0, error=error))
        self.attempt = _ENDED  # ignore everything after
        self.event.set()

    def refuse(self, error: BrokerCommandError) -> None:
        """Ends the call with the error of Redis refusing the reads that would bring its
        answer (the reader's: a key of another type, a server too old)."""
        if self.attempt == _ENDED:
            return
        self.refused = error
        self.attempt = _ENDED  # ignore everything after
        self.event.set()

    def _break(self, why: str) -> None:
        shown = self.taken + sum(m.type is MessageType.CHUNK for m in self.inbox)
        self.fail(
            ErrorInfo(
                ErrorCode.STREAM_INTERRUPTED,
                "StreamInterrupted",
                f"the stream broke after {shown} chunks: {why}",
            )
        )

    def sent_soon(self, outcome: bytes | BaseException) -> None:
        """How the XADD of a job sent without waiting went (``ClientBroker.send_job_soon``):
        its entry id, or the error that wakes the caller to send it again."""
        sending, self.sending = self.sending, None
        if sending is None:
            return
        if isinstance(outcome, BaseException):
            self.unsent = outcome
            self.event.set()
        else:
            self.sent = Sent(sending[0], sending[1], outcome)

    async def next(self) -> Message:
        """The next message of the call's run; raises :class:`Unsent` when its job, sent
        without waiting, was not stored (nothing of its run can come)."""
        while not self.inbox:
            if self.refused is not None:  # a new error each time: raised in this call's task
                raise BrokerCommandError(self.refused.url, self.refused.reason)
            if self.unsent is not None:
                error, self.unsent = self.unsent, None
                raise Unsent(str(error)) from error
            await self.event.wait()
            self.event = self.new_event()
        self.taken += 1
        return self.inbox.popleft()
