"""Job deadlines on this worker's clock, whatever the clocks of the clients say.

A client writes its own wall-clock ``deadline`` and ``sent_at`` into a job; hosts' clocks
differ, by seconds or minutes, so the worker never compares them with its own clock. What it
trusts is their difference, the time the client allowed (measured on one clock), and when
Redis stored the entry: the entry id's milliseconds, on Redis's clock. So a job's deadline is

    when Redis stored it (Redis's clock, converted to ours) + (deadline - sent_at)

which counts the time the job waited in its queue, and needs no new field: entries of older
clients read the same. Redis's clock is converted with an offset measured by ``TIME`` at start
and on every heartbeat. (The other way, sending the remaining time and measuring it from when
the worker read the job, forgets the time spent queued: a job would run after its caller had
given up.) A job resent as a new entry (``dlq retry``, a requeue) gets a budget measured from
then, so a requeue writes the time that is left (see :func:`remaining_fields`). On Redis
Cluster, ``TIME`` is answered by any node and entry ids come from the stream's own node: the
nodes' clocks are taken to agree (NTP); a deadline is off by as much as they differ.
"""

from __future__ import annotations

import math
import time

from conveyor.broker.wire import RawFields

__all__ = ("RedisClock", "remaining_fields")


class RedisClock:
    """Redis's clock as seen from this host: ``offset`` is Redis's time minus ours."""

    def __init__(self) -> None:
        self.offset = 0.0  # seconds; written by the heartbeat thread, a float: GIL-atomic

    def observe(self, redis_time: tuple[int, int], before: float, after: float) -> None:
        """Takes ``TIME``'s answer, asked at ``before`` and answered at ``after`` (our
        ``time.time()``): Redis read its clock about halfway, give or take half the trip."""
        seconds, micros = redis_time
        self.offset = seconds + micros / 1e6 - (before + after) / 2

    def now(self) -> float:
        """Redis's time now, in unix seconds (for scores other workers compare)."""
        return time.time() + self.offset

    def stored_at(self, entry_id: bytes) -> float:
        """When Redis stored the entry ``entry_id`` (``<ms>-<seq>``), on our clock."""
        return int(entry_id.partition(b"-")[0]) / 1000 - self.offset

    def deadline(self, entry_id: bytes, deadline: float, sent_at: float) -> float:
        """The deadline of a job stored as ``entry_id`` whose client gave it ``deadline`` and
        ``sent_at`` (its own clock), on our clock."""
        return self.stored_at(entry_id) + (deadline - sent_at)


def remaining_fields(fields: RawFields, deadline: float) -> dict[bytes, bytes]:
    """A job's fields to add again as a new entry, with the time left until ``deadline`` (our
    clock) as its budget: ``sent_at`` is now and ``deadline`` is now + what is left."""
    now = time.time()
    copy = dict(fields)
    if math.isfinite(deadline):
        copy[b"sent_at"] = repr(now).encode()
        copy[b"deadline"] = repr(now + max(deadline - now, 0.0)).encode()
    return copy
