"""The client's side of the protocol: send jobs, wait on the doorbell, read reply streams."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from redis import exceptions as redis_errors
from redis.asyncio.client import Pipeline, Redis

from conveyor.broker.entries import entries_by_stream, id_tuple, next_id
from conveyor.broker.keys import GROUP, Keys
from conveyor.broker.pipelining import PipelineBatcher, Settle
from conveyor.broker.wire import Fields, RawFields, Rung, read_rung

__all__ = ("ClientStreams",)

logger = logging.getLogger(__name__)

# XADD only while the stream holds fewer than ARGV[1] entries (answered jobs are deleted,
# so XLEN is the backlog); else return the backlog. One key: fine on Redis Cluster.
_BOUNDED_XADD = """
local backlog = redis.call('XLEN', KEYS[1])
if backlog >= tonumber(ARGV[1]) then return backlog end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
"""


class ClientStreams:
    """The client's side: send jobs, wait on the doorbell, read reply streams."""

    def __init__(self, redis: Redis, blocking: Redis, keys: Keys, client_id: str) -> None:
        self.redis = redis
        self.blocking = blocking  # one connection's worth, for BLMPOP
        self.keys = keys
        self.client_id = client_id
        self.bell = keys.bell(client_id)
        self.batcher = PipelineBatcher(redis)

    async def send_job(
        self, stream: str, fields: Fields, max_backlog: int | None = None
    ) -> bytes | int:
        """XADDs one job (pipelined with other callers' jobs) and returns its entry id; with
        ``max_backlog``, only if the stream's backlog is below it, else returns the backlog."""

        def add(pipe: Pipeline) -> None:
            if max_backlog is None:
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
                return
            args: list[Any] = [max_backlog]
            for name, value in fields.items():
                args += (name, value)
            pipe.eval(_BOUNDED_XADD, 1, stream, *args)

        results = await self.batcher.run(add)
        entry_id = results[-1]
        assert isinstance(entry_id, bytes | int)
        return entry_id

    def submit_job(
        self, stream: str, fields: Fields, sent: Callable[[bytes | BaseException], None]
    ) -> None:
        """As :meth:`send_job` (no queue limit) without waiting: the XADD rides with the next
        round trip, and ``sent`` gets its entry id, or its error (a refusal, the round trip's,
        or the batcher's, closed)."""

        def add(pipe: Pipeline) -> Settle:
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
            return settle

        def settle(results: list[Any] | BaseException) -> None:
            sent(results if isinstance(results, BaseException) else results[-1])

        try:
            self.batcher.submit(add)
        except RuntimeError as error:  # closed: nothing goes any more
            sent(error)

    async def model_limits(self, model: str) -> int | None:
        """The queue limit workers published for ``model`` (None: unbounded)."""
        value = await self.redis.hget(self.keys.limits(model), "max_queue_length")
        return int(value) if value else None

    async def send_control(self, stream: str, fields: Fields) -> None:
        """XADDs a load/unload request to a model's control stream (kept short)."""

        def add(pipe: Pipeline) -> None:
            pipe.xadd(stream, fields, maxlen=1000, approximate=True)  # type: ignore[arg-type]

        await self.batcher.run(add)

    async def send_inputs(self, key: str, entries: Sequence[Fields], ttl_s: float) -> None:
        def add(pipe: Pipeline) -> None:
            for entry in entries:
                pipe.xadd(key, entry)  # type: ignore[arg-type]
            pipe.expire(key, max(1, int(ttl_s)))

        await self.batcher.run(add)

    async def wait_bell(
        self, block_s: float, unlink: Sequence[str] = (), trim: Mapping[str, bytes] | None = None
    ) -> Rung:
        """Deletes finished reply streams and the entries read of open ones (``trim``: key ->
        the last entry read), then waits up to ``block_s`` for the bell: the request ids whose
        reply streams have news, and the answers that came inline."""
        if unlink or trim:
            pipe = self.blocking.pipeline(transaction=False)
            if unlink:
                pipe.execute_command("UNLINK", *unlink)  # one slot; cluster pipelines lack it
            for key, last in (trim or {}).items():
                pipe.execute_command("XTRIM", key, "MINID", next_id(last))
            pipe.blmpop(block_s, 1, self.bell, direction="RIGHT", count=1000)
            results = await pipe.execute(raise_on_error=False)
            # a trim refused (an ACL without XTRIM) only leaves read entries to their TTL
            for result in (results[0], results[-1]) if unlink else results[-1:]:
                if isinstance(result, Exception):
                    raise result
            popped = results[-1]
        else:
            popped = await self.blocking.blmpop(
                block_s, 1, self.bell, direction="RIGHT", count=1000
            )
        return read_rung(popped[1] if popped else [])

    async def drain_bell(self) -> Rung:
        """Everything on the bell now, hardly waiting (after an outage). BLMPOP with a short
        timeout rather than RPOP: the ACL of a client needs no other command."""
        rung = Rung([], [])
        while True:
            popped = await self.blocking.blmpop(0.01, 1, self.bell, direction="RIGHT", count=1000)
            if not popped:
                return rung
            more = read_rung(cast("list[bytes]", popped[1]))
            rung.ids.extend(more.ids)
            rung.messages.extend(more.messages)

    async def read_replies(
        self, cursors: Mapping[str, bytes]
    ) -> list[tuple[str, list[tuple[bytes, RawFields]]]]:
        """Reads every reply stream after its cursor, in one XREAD (all in one slot)."""
        try:
            response = await self.blocking.xread(dict(cursors), count=1000)  # type: ignore[arg-type]
        except redis_errors.ResponseError as error:
            if not str(error).startswith("WRONGTYPE"):
                raise
            # A key of another type (a name clash, or written by hand) fails the whole XREAD:
            # read the streams one by one and skip it, so the others' callers get answers.
            pipe = self.blocking.pipeline(transaction=False)
            for key, cursor in cursors.items():
                pipe.xread({key: cursor}, count=1000)
            results = await pipe.execute(raise_on_error=False)
            bad = [key for key, r in zip(cursors, results, strict=True) if isinstance(r, Exception)]
            logger.warning("client.reply_not_a_stream keys=%s: skipped", bad)
            response = [r[0] for r in results if r and not isinstance(r, Exception)]
        return list(entries_by_stream(response))

    async def job_was_taken(self, stream: str, entry_id: bytes) -> bool | None:
        """Whether the workers' consumer group has been handed the entry (None: cannot
        tell, e.g. an ACL without XINFO)."""
        try:
            groups = await self.redis.xinfo_groups(stream)
        except redis_errors.NoPermissionError:
            return None
        except redis_errors.ResponseError:
            return False  # no stream: nobody ever created the group
        for group in groups:
            if group.get("name") in (GROUP, GROUP.encode()):
                last = group.get("last-delivered-id") or b"0-0"
                return id_tuple(last) >= id_tuple(entry_id)
        return False

    async def send_credit(self, key: str, taken: int, ttl_s: float) -> None:
        """Tells the worker of a predict_stream how many chunks the caller has taken."""

        def add(pipe: Pipeline) -> None:
            pipe.lpush(key, taken)
            pipe.expire(key, max(1, int(ttl_s)))

        await self.batcher.run(add)

    async def jobs_present(self, jobs: Sequence[tuple[str, bytes]]) -> list[bool]:
        """Whether each (stream, entry id) is still in its stream: queued or running."""
        if not jobs:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for stream, entry_id in jobs:
            pipe.xrange(stream, entry_id, entry_id, count=1)
        return [bool(found) for found in await pipe.execute()]

    async def withdraw_job(self, stream: str, entry_id: bytes) -> None:
        """Deletes a job that the caller gave up on, so no worker runs it later."""
        await self.redis.xdel(stream, entry_id)

    async def delete(self, *keys: str) -> None:
        if keys:
            await self.redis.unlink(*keys)

    async def ping(self) -> None:
        await self.redis.ping()
