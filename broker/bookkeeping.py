"""The fleet's bookkeeping in Redis: consumers of workers that are gone, and Redis's clock.

Every worker process is a consumer of the group ``workers`` of each job stream it reads, under
its own name (``host-pid-xxxx``). Redis never forgets a consumer by itself, so a fleet that
restarts, autoscales or redeploys would pile up thousands of them. A consumer is deleted
(``XGROUP DELCONSUMER``) only once it owns nothing, because deleting it drops its pending
entries from the group: those jobs would never be delivered again.

- a worker that stops deletes its own consumers once its jobs are answered: nothing reads
  for it any more, so nothing can become pending between the check and the delete;
- a worker that starts makes its consumer at once (``XGROUP CREATECONSUMER``): Redis >= 7.0
  lists a consumer only once it was handed an entry, and a busy batched model's worker leaves
  waiting jobs to the workers it sees with room (``waiting_jobs``), so a new worker must be
  seen before its first job;
- a worker that died leaves its jobs pending; a live worker reclaims them, and deletes the
  consumer once it has no pending entry left, its heartbeat key is gone (the test reclaim
  uses too) and it has been idle at least a heartbeat TTL (a consumer made just now by a
  worker whose first heartbeat has not landed yet is not taken for a dead one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio.client import Redis
from redis.exceptions import ResponseError

from conveyor.broker.entries import is_nogroup
from conveyor.broker.errors import refused_by_acl, translate_errors
from conveyor.broker.keys import GROUP, Keys

__all__ = ("delete_consumer", "delete_dead_consumers", "join_groups", "redis_time")

logger = logging.getLogger(__name__)


async def redis_time(redis: Redis, where: str = "redis") -> tuple[tuple[int, int], float, float]:
    """Redis's ``TIME`` (seconds, microseconds), with our ``time.time()`` just before the
    command was sent and just after its answer came."""
    with translate_errors(where):
        before = time.time()
        seconds, micros = await redis.time()
        return (int(seconds), int(micros)), before, time.time()


async def join_groups(
    redis: Redis, streams: Sequence[str], consumer: str, make_consumer: bool = True
) -> bool:
    """Creates each stream's consumer group from its start (so jobs sent before any worker
    existed are served) unless it exists, and, if ``make_consumer``, ``consumer`` in it.
    Returns False when Redis refused to make the consumer (an ACL user set up from an older
    README, or Redis < 6.2), after saying so: the worker serves all the same, and is listed
    once it gets its first job."""
    for stream in streams:
        try:
            await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
    if not make_consumer:
        return False
    try:
        for stream in streams:
            await redis.xgroup_createconsumer(stream, GROUP, consumer)
    except ResponseError as error:
        if not refused_by_acl(error) and "unknown subcommand" not in str(error):
            raise
        logger.warning(
            "worker.consumer_unlisted error=%s: Redis refused XGROUP CREATECONSUMER (add "
            "+xgroup|createconsumer to the user's ACL rules); until this worker gets its first "
            "job, busy workers of a batched model do not see that it has room",
            str(error).strip(),
        )
        return False
    return True


async def delete_consumer(
    redis: Redis, streams: Sequence[str], consumer: str, where: str = "redis"
) -> list[str]:
    """Deletes ``consumer`` from the group of each stream where it owns no pending entry;
    returns the streams where it still does (kept). For a worker that has stopped reading."""
    if not streams:
        return []
    with translate_errors(where):
        pipe = redis.pipeline(transaction=False)
        for stream in streams:
            pipe.xpending_range(stream, GROUP, "-", "+", 1, consumername=consumer)
        owned = await pipe.execute(raise_on_error=False)
        owned = [_unless_nogroup(pending) for pending in owned]
        kept = [s for s, pending in zip(streams, owned, strict=True) if pending]
        free = [s for s, pending in zip(streams, owned, strict=True) if pending == []]
        await _delete(redis, [(stream, consumer) for stream in free])
        return kept


async def delete_dead_consumers(
    redis: Redis,
    keys: Keys,
    streams: Sequence[str],
    idle_s: float,
    spare: str,
    where: str = "redis",
) -> list[tuple[str, str]]:
    """Deletes the consumers of ``streams`` whose worker is gone (no heartbeat key), that own
    no pending entry and were idle ``idle_s`` or more; never ``spare`` (the caller itself).
    Returns the (stream, consumer) pairs deleted."""
    if not streams:
        return []
    idle_ms = int(idle_s * 1000)
    with translate_errors(where):
        pipe = redis.pipeline(transaction=False)
        for stream in streams:
            pipe.xinfo_consumers(stream, GROUP)
        infos = await pipe.execute(raise_on_error=False)
        candidates: list[tuple[str, str]] = []
        for stream, info in zip(streams, infos, strict=True):
            for consumer in _unless_nogroup(info) or ():
                name = _text(consumer.get("name", b""))
                if (
                    name
                    and name != spare
                    and int(consumer.get("pending", 1)) == 0
                    and int(consumer.get("idle", 0)) >= idle_ms
                ):
                    candidates.append((stream, name))
        if not candidates:
            return []
        names = sorted({name for _, name in candidates})
        pipe = redis.pipeline(transaction=False)
        for name in names:
            pipe.execute_command("EXISTS", keys.worker(name))  # cluster pipelines lack exists()
        alive = {name for name, exists in zip(names, await pipe.execute(), strict=True) if exists}
        return await _delete(redis, [(s, name) for s, name in candidates if name not in alive])


async def _delete(redis: Redis, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    if not pairs:
        return []
    pipe = redis.pipeline(transaction=False)
    for stream, consumer in pairs:
        pipe.xgroup_delconsumer(stream, GROUP, consumer)
    dropped = await pipe.execute(raise_on_error=False)
    deleted: list[tuple[str, str]] = []
    for (stream, consumer), count in zip(pairs, dropped, strict=True):
        count = _unless_nogroup(count)
        if count is None:
            continue
        if count:  # it read a job between the check and the delete: it is alive after all
            logger.error(
                "consumer.deleted_with_pending stream=%s consumer=%s pending=%s: it took "
                "jobs between the check and the delete (alive, its heartbeat key gone); they "
                "stay in the stream but are pending nowhere, and run only if it answers them",
                stream,
                consumer,
                count,
            )
        deleted.append((stream, consumer))
    return deleted


# How Redis says a stream (or its group) is gone, by command: XPENDING says NOGROUP, XINFO
# CONSUMERS "no such key", XGROUP DELCONSUMER "... requires the key to exist".
_GONE = ("no such key", "requires the key to exist")


def _unless_nogroup(result: Any) -> Any:
    """A pipelined command's result; None when the stream or its group is gone (so is the
    consumer); any other error is raised."""
    if is_nogroup(result) or (
        isinstance(result, ResponseError) and any(text in str(result) for text in _GONE)
    ):
        return None
    if isinstance(result, Exception):
        raise result
    return result


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
