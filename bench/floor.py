"""The floor: the least a request/reply over Redis Streams costs with redis-py asyncio + hiredis.

A caller XADDs a msgpack job (its id and reply stream) with the payload as a raw field of its
own. One worker process reads up to 64 jobs (XREADGROUP BLOCK) and pipelines, per batch, one
XADD per reply, then XACK + XDEL. Each client has one reply stream and one reader task (XREAD
BLOCK COUNT 1000) that resolves the callers' futures: the strongest floor of
shared/reference/anchors-perf.md. No deadlines, retries, fencing, validation or metrics.

Worker: ``python -m bench.floor REDIS_URL``. Client: ``async with FloorClient(url) as c:
await c.call(payload)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from typing import Any

import msgpack
from redis.asyncio import Redis
from redis.exceptions import ResponseError

JOBS, GROUP = "floor:jobs", "floor"
REPLY_MAXLEN = 300  # above the calls in flight: a reply not yet read is never trimmed


async def serve(url: str) -> None:
    redis = Redis.from_url(url, socket_timeout=None)
    with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
        await redis.xgroup_create(JOBS, GROUP, id="0", mkstream=True)
    while True:
        got: Any = await redis.xreadgroup(GROUP, "worker", {JOBS: ">"}, count=64, block=1000)
        entries = got[0][1] if got else []
        if not entries:
            continue
        pipe = redis.pipeline(transaction=False)
        for _, fields in entries:
            job = msgpack.unpackb(fields[b"job"])
            pipe.xadd(job["reply"], {"id": job["id"], "p": fields[b"p"]}, maxlen=REPLY_MAXLEN)
        ids = [entry_id for entry_id, _ in entries]
        pipe.xack(JOBS, GROUP, *ids)
        pipe.xdel(JOBS, *ids)
        await pipe.execute()


class FloorClient:
    def __init__(self, url: str) -> None:
        self.redis = Redis.from_url(url, max_connections=1024)
        self.reader = Redis.from_url(url, socket_timeout=None)
        self.reply = f"floor:reply:{uuid.uuid4().hex}"
        self.waiting: dict[bytes, asyncio.Future[bytes]] = {}

    async def __aenter__(self) -> FloorClient:
        self.task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.redis.delete(self.reply)
        await self.redis.aclose()
        await self.reader.aclose()

    async def _read(self) -> None:
        last = b"0-0"
        while True:
            got: Any = await self.reader.xread({self.reply: last}, count=1000, block=1000)
            for _, entries in got or []:
                for entry_id, fields in entries:
                    last = entry_id
                    future = self.waiting.pop(fields[b"id"], None)
                    if future is not None:
                        future.set_result(fields[b"p"])

    async def call(self, payload: bytes | memoryview) -> bytes:
        request_id = uuid.uuid4().hex
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting[request_id.encode()] = future
        job = msgpack.packb({"id": request_id, "reply": self.reply})
        await self.redis.xadd(JOBS, {"job": job, "p": payload})
        return await future


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
