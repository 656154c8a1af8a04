"""One run per request, when one job's entry exists twice.

A job entry can be in its stream twice: redis-py re-sends a pipeline of XADDs whose reply was
lost with the connection, or a client re-sends a job it found missing after an outage. Both
copies carry one request id, each has its own entry id, and both start at delivery count 1.
Before it runs a job, a worker claims the request for its copy:

    SET <prefix>:claim:{<client>}:<request id> "<attempt> <entry id>" NX GET PX <ttl>

- no claim yet: this copy runs;
- the claim names this entry: a delivery of the same copy (a reclaim after its worker died),
  which runs;
- the claim names an earlier send attempt of the client (a re-send of a job the client found
  missing, say an answer lost with a connection): this copy takes the claim over and runs;
- else another copy of this send runs or ran: this one is a duplicate, acked without an answer.

The claim lives as long as the job's answer can be of use (its deadline plus the reply grace),
so a copy read late is still known. A claim Redis cannot store (out of memory, say) lets the
copy run: the client's fencing (a reply names its entry and delivery) still keeps every caller
to one run's answer. Cost: one SET per job, pipelined with other jobs' commands. A unary job
claims while it runs (``claim_soon``: no round trip before the model, no task); a stream
before its first chunk (``claim``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio.client import Pipeline

from conveyor.broker.pipelining import PipelineBatcher, Settle
from conveyor.broker.wire import Job

__all__ = ("SoonClaims", "claim")

logger = logging.getLogger(__name__)


# A unary job's claim rides with the first pipeline that goes out (its answer's, for a quick
# job: no round trip of its own), at the latest this long after the job started: a copy that
# runs longer is stopped early; a quicker one may run twice, which costs little.
_CLAIM_DELAY_S = 0.01


def _value(job: Job, entry_id: bytes) -> str:
    return f"{job.attempt} {entry_id.decode()}"


def _holder(job: Job, entry_id: bytes, held: object) -> str | None:
    """What a claim's SET NX GET returned, as the copy holding the request (None: this one
    may run; it takes the claim over when it is a later send of the client's)."""
    if held is None:
        return None
    text = held.decode(errors="replace") if isinstance(held, bytes) else str(held)
    attempt, _, entry = text.partition(" ")
    if entry == entry_id.decode():
        return None  # this copy again: delivered anew after its worker stopped
    if attempt.isdigit() and int(attempt) < job.attempt:
        return None  # the client sent the job again, finding the earlier send lost
    return text


def _ttl_ms(ttl_s: float) -> int:
    return max(1000, int(ttl_s * 1000))


async def claim(
    batcher: PipelineBatcher, key: str, job: Job, entry_id: bytes, ttl_s: float
) -> str | None:
    """Claims ``key`` for this copy of ``job``; returns None if it may run, else the claim
    that another copy holds."""
    value, ttl_ms = _value(job, entry_id), _ttl_ms(ttl_s)
    try:
        (held,) = await batcher.run(lambda pipe: pipe.set(key, value, nx=True, get=True, px=ttl_ms))
    except Exception as error:  # cannot tell: run it, fencing keeps callers to one answer
        logger.info("job.claim_failed request=%s error=%s: running it", job.id, error)
        return None
    holder = _holder(job, entry_id, held)
    if holder is None and held is not None and held != value.encode():
        batcher.submit(_overwrite(key, value, ttl_ms))  # a later send takes the claim over
    return holder


class SoonClaims:
    """Unary jobs' claims (:meth:`claim_soon`), sent together: the claims made before a
    round trip leaves ride in it as one entry of the batcher's queue, with one timer for the
    latest they may wait (``_CLAIM_DELAY_S``), and one settle for their replies. Per job that
    leaves its SET: no closures, queue entry or loop timer of its own."""

    __slots__ = ("_batcher", "_waiting")

    def __init__(self, batcher: PipelineBatcher) -> None:
        self._batcher = batcher
        # (key, value, ttl in ms, job, entry id, callback) of claims not yet queued in a pipeline
        self._waiting: list[tuple[str, str, int, Job, bytes, Callable[[str | None], None]]] = []

    def claim_soon(
        self,
        key: str,
        job: Job,
        entry_id: bytes,
        ttl_s: float,
        claimed: Callable[[str | None], None],
    ) -> None:
        """As :func:`claim`, without waiting: ``claimed`` gets the outcome once Redis answered
        (nothing if the worker stops first). Rides in the batcher's next pipeline."""
        if not self._waiting:
            self._batcher.submit(self._add, _CLAIM_DELAY_S)
        self._waiting.append((key, _value(job, entry_id), _ttl_ms(ttl_s), job, entry_id, claimed))

    def _add(self, pipe: Pipeline) -> Settle | None:
        claims, self._waiting = self._waiting, []
        if not claims:
            return None
        for key, value, ttl_ms, _, _, _ in claims:
            # pipe.set()'s own argument handling costs more than the command's packing; the
            # TTL as text: the packer's fast path takes only str and bytes (fastpath.py)
            pipe.execute_command("SET", key, value, "NX", "GET", "PX", str(ttl_ms), get=True)

        def settle(results: list[Any] | BaseException) -> None:
            for i, (key, value, ttl_ms, job, entry_id, claimed) in enumerate(claims):
                held = None if isinstance(results, BaseException) else results[i]
                if isinstance(held, BaseException):  # cannot tell: fencing keeps one answer
                    logger.info("job.claim_failed request=%s error=%s: running it", job.id, held)
                    held = None
                if held is None:
                    claimed(None)  # the common case: nobody held it
                    continue
                holder = _holder(job, entry_id, held)
                if holder is None and held != value.encode():
                    self._batcher.submit(_overwrite(key, value, ttl_ms))
                claimed(holder)

        return settle


def _overwrite(key: str, value: str, ttl_ms: int) -> Callable[[Pipeline], Settle | None]:
    def add(pipe: Pipeline) -> None:
        pipe.set(key, value, px=ttl_ms)

    return add
