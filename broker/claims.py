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
to one run's answer. Cost: one SET per job, pipelined with other jobs' commands, before the
model runs (measured in bench/README.md, "Claims").
"""

from __future__ import annotations

import logging

from conveyor.broker.batching import PipelineBatcher
from conveyor.broker.wire import Job

__all__ = ("claim",)

logger = logging.getLogger(__name__)


def _value(job: Job, entry_id: bytes) -> str:
    return f"{job.attempt} {entry_id.decode()}"


async def claim(
    batcher: PipelineBatcher, key: str, job: Job, entry_id: bytes, ttl_s: float
) -> str | None:
    """Claims ``key`` for this copy of ``job``; returns None if it may run, else the claim
    that another copy holds."""
    value = _value(job, entry_id)
    ttl_ms = max(1000, int(ttl_s * 1000))
    try:
        (held,) = await batcher.run(lambda pipe: pipe.set(key, value, nx=True, get=True, px=ttl_ms))
    except Exception as error:  # cannot tell: run it, fencing keeps callers to one answer
        logger.info("job.claim_failed request=%s error=%s: running it", job.id, error)
        return None
    if held is None:
        return None
    text = held.decode(errors="replace") if isinstance(held, bytes) else str(held)
    attempt, _, entry = text.partition(" ")
    if entry == entry_id.decode():
        return None  # this copy again: delivered anew after its worker stopped
    if not (attempt.isdigit() and int(attempt) < job.attempt):
        return text
    # the client sent the job again, finding the earlier send lost: this send runs
    try:
        await batcher.run(lambda pipe: pipe.set(key, value, px=ttl_ms))
    except Exception as error:
        logger.info("job.claim_failed request=%s error=%s: running it", job.id, error)
    return None
