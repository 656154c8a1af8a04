"""The client's one reader: it waits on the doorbell and hands each caller its answers.

A worker that writes to a reply stream rings the client's doorbell (``<prefix>:bell:{client
id}``) with the request's id, or with the answer itself when it is small (``inline_reply``).
The reader waits on the bell (``BLMPOP``, at most ``BELL_BLOCK_S``), reads the reply streams
it names in one ``XREAD`` and delivers each message to its call's :class:`Waiter` (which
fences off other runs of the job). With that wait it deletes the reply streams of finished
calls and the entries already read of open ones.

After an outage it resyncs: a bell may have been lost, and Redis may have lost the last
writes before a crash (``appendfsync everysec``), the jobs among them. A small answer taken off
the bell by a BLMPOP whose reply the crash lost is lost too: the calls whose jobs were still in
their streams are watched until answered, and one whose job leaves its stream unanswered goes
again (``_check_watched``).
"""

from __future__ import annotations

import logging
import time

import anyio
import anyio.lowlevel

from conveyor.broker import ClientBroker, Replies
from conveyor.broker.wire import ErrorCode, ErrorInfo, Rung, decode_message, encode_job
from conveyor.client.waiter import Sent, Waiter
from conveyor.errors import BrokerCommandError, ConveyorError, WireError

__all__ = ("BELL_BLOCK_S", "Reader")

logger = logging.getLogger(__name__)

BELL_BLOCK_S = 1.0  # the reader's longest wait; keeps it well below any socket timeout
_OUTAGE_PAUSE_S = 0.5  # between tries while Redis is unreachable
_WATCH_EVERY_S = 1.0  # after an outage, how often the calls still running are looked at


class Reader:
    """The calls in flight (``waiters``, by request id) and the task that answers them."""

    def __init__(self, broker: ClientBroker) -> None:
        self._broker = broker
        self.waiters: dict[str, Waiter] = {}
        self.finished: list[str] = []  # reply streams to delete with the next wait
        self._trims: dict[str, bytes] = {}  # open reply streams: read up to this entry
        # after an outage, the calls whose job was still in its stream: see _check_watched
        self._watched: dict[str, Waiter] = {}
        self._next_watch = 0.0

    def forget(self, waiter: Waiter) -> None:
        """Stops delivering to ``waiter``; its reply stream goes with the next wait."""
        self.waiters.pop(waiter.request_id, None)
        self.finished.append(waiter.key)

    async def run(self) -> None:
        """Answers the calls in flight until cancelled; waits out Redis outages."""
        broker = self._broker
        broken = refused = False
        while True:
            finished, self.finished = self.finished, []
            trims, self._trims = self._trims, {}
            try:
                if broken:
                    # Back after an outage: a bell may have been lost, and Redis may have
                    # lost the last writes before a crash (appendfsync everysec).
                    await self._resync()
                    broken = False
                if self._watched:
                    await self._check_watched()
                rung = await broker.wait_bell(BELL_BLOCK_S, finished, trims)
                refused = False
                if rung.messages:
                    self._deliver_inline(rung)
                    # let the answered callers go on before the next BLMPOP is sent
                    await anyio.lowlevel.checkpoint()
                asked = self._named(rung)
                if not asked:
                    continue
                replies = await broker.read_replies({k: w.cursor for k, w in asked.items()})
            except BrokerCommandError as error:
                # Redis refuses the reads (the bell is a key of another type, the server is
                # too old): no outage to wait out. The calls in flight end with the error now,
                # not at their timeouts, and the reader tries again after a pause: an
                # operator may mend the key. Raised, it would cancel the caller's whole block.
                if not refused:
                    logger.error("client.reads_refused error=%s", error)
                refused = True
                for waiter in list(self.waiters.values()):
                    waiter.refuse(error)
                await anyio.sleep(_OUTAGE_PAUSE_S)
                continue
            except ConveyorError as error:
                if not broken:
                    logger.warning("client.redis_unavailable error=%s", error)
                broken = True
                await anyio.sleep(_OUTAGE_PAUSE_S)  # the connection's own retries ran out
                continue
            self._dispatch(replies, asked)

    def _named(self, rung: Rung) -> dict[str, Waiter]:
        """The calls in flight whose reply streams the bell says have news, by stream."""
        asked: dict[str, Waiter] = {}
        for request_id in set(rung.ids):
            waiter = self.waiters.get(request_id)
            if waiter is not None:
                asked[waiter.key] = waiter
        return asked

    def _deliver_inline(self, rung: Rung) -> None:
        """Hands the answers that came in the bell itself to their callers."""
        for fields in rung.messages:
            try:
                message = decode_message(fields)
            except WireError as error:
                logger.warning("client.bad_bell_entry reason=%s", error.reason)
                # its caller hears why now, not at its timeout, when the entry names it
                named = fields.get(b"id") if isinstance(fields, dict) else None
                waiter = None
                if isinstance(named, bytes):
                    waiter = self.waiters.get(named.decode(errors="replace"))
                if waiter is not None:
                    waiter.fail(ErrorInfo(ErrorCode.BAD_ENTRY, "WireError", error.reason))
                continue
            waiter = self.waiters.get(message.id)
            if waiter is not None:
                waiter.deliver(message)

    def _dispatch(self, replies: Replies, asked: dict[str, Waiter]) -> None:
        """Delivers what was read of the reply streams ``asked`` (key -> its call) to the
        calls still in flight."""
        for key, entries in replies:
            waiter = asked.get(key)
            if waiter is None or self.waiters.get(waiter.request_id) is not waiter:
                continue  # the call ended (answered, timed out) while its stream was read
            waiter.streamed = True
            if waiter.trim and entries:
                # delete what was read with the next BLMPOP: Redis holds only the unread
                self._trims[key] = entries[-1][0]
            for entry_id, fields in entries:
                waiter.cursor = entry_id
                try:
                    message = decode_message(fields)
                except WireError as error:
                    waiter.fail(ErrorInfo(ErrorCode.BAD_ENTRY, "WireError", error.reason))
                    continue
                waiter.deliver(message)

    async def _resync(self) -> None:
        """Reads every open reply stream, and sends again the jobs Redis no longer has.

        A job that is neither in its stream (queued or running) nor answered was lost with
        the last writes before a Redis crash: it goes again under the same request id, with
        the next attempt number. Workers and answer-taking are idempotent per request id.
        """
        broker = self._broker
        waiters = [w for w in self.waiters.values() if w.sent is not None]
        if not waiters:
            return
        # answers that came inline first: the jobs they answer are gone from their streams
        self._deliver_inline(await broker.drain_bell())
        asked = {w.key: w for w in waiters}
        self._dispatch(await broker.read_replies({k: w.cursor for k, w in asked.items()}), asked)
        pending = [
            (w, w.sent) for w in waiters if not w.inbox and w.taken == 0 and w.sent is not None
        ]
        present = await broker.jobs_present([(sent.stream, sent.entry_id) for _, sent in pending])
        for (waiter, sent), here in zip(pending, present, strict=True):
            if here:
                self._watched[waiter.request_id] = waiter
                continue
            await self._resend(waiter, sent)

    async def _check_watched(self) -> None:
        """The calls whose job was still in its stream when the client came back from an
        outage, checked each second until answered: a job that left its stream (acked once
        its answer was stored) with no answer come, none on the bell nor in its reply stream,
        had its answer lost with the outage, and goes again.

        A small answer rides in the bell, and BLMPOP takes it off the bell as it replies: a
        reply lost when Redis went down lost the answer with it, while the job, its ack not
        yet sent, was still in its stream for the resync to see.
        """
        now = time.monotonic()
        if now < self._next_watch:
            return
        self._next_watch = now + _WATCH_EVERY_S
        for request_id, waiter in list(self._watched.items()):
            if self.waiters.get(request_id) is not waiter or waiter.inbox or waiter.taken:
                del self._watched[request_id]  # answered, or ended
        watched = [(w, w.sent) for w in self._watched.values() if w.sent is not None]
        if not watched:
            self._watched.clear()
            return
        broker = self._broker
        present = await broker.jobs_present([(sent.stream, sent.entry_id) for _, sent in watched])
        gone = [(w, sent) for (w, sent), here in zip(watched, present, strict=True) if not here]
        if not gone:
            return
        # its answer, stored before the ack, may be on its way: on the bell, in its stream
        rung = await broker.drain_bell()
        self._deliver_inline(rung)
        asked = {**self._named(rung), **{w.key: w for w, _ in gone}}  # others' news too
        self._dispatch(await broker.read_replies({k: w.cursor for k, w in asked.items()}), asked)
        for waiter, sent in gone:
            del self._watched[waiter.request_id]
            ended = self.waiters.get(waiter.request_id) is not waiter
            if not ended and not waiter.inbox and waiter.taken == 0 and waiter.sent is sent:
                logger.warning("client.answer_lost request=%s", sent.job.id)
                await self._resend(waiter, sent)

    async def _resend(self, waiter: Waiter, sent: Sent) -> None:
        """Sends the job again, as its next attempt (the first was lost with an outage)."""
        # What is left of its timeout, not all of it again: a worker counts the budget
        # (deadline - sent_at) from when Redis stores the new entry (worker/clock.py).
        now = time.time()
        job = sent.job._replace(
            attempt=sent.job.attempt + 1,
            sent_at=now,
            deadline=max(sent.job.deadline, now),
        )
        # no queue limit here: the job was admitted once already
        entry_id = await self._broker.send_job(sent.stream, encode_job(job))
        assert isinstance(entry_id, bytes)
        waiter.sent = Sent(job, sent.stream, entry_id)
        logger.warning("client.resent request=%s attempt=%d", job.id, job.attempt)
