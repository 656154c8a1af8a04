"""The typed floor: the floor's worker loop doing the V2 work every Conveyor job needs, no more.

It serves Conveyor's own job stream and wire format, so it drains what ``conveyor worker``
drains (``bench.drain``): one XREADGROUP of up to 64 jobs; each job decoded as the worker
decodes it (``JobDecoder``: the read's layout, a ``Job`` with its ``InferenceRequest``), the
model's ``predict`` awaited, the answer encoded as the worker encodes it (``encode_result``)
and rung into the client's bell as the worker rings a small answer (``pack_inline``); then,
per read, one pipeline of an LPUSH and an EXPIRE per bell, an XACK and an XDEL.

What it leaves out is what the Conveyor worker adds around that work: admission checks,
deadlines, claims, fencing, metrics, slots, one task per job, the answers' retries and their
acks after the answers are stored. Conveyor's worker CPU per job less this one's is the cost
of those, which the issue's floor (``bench/floor.py``: raw bytes, no V2 types) cannot tell
apart from the V2 work. A reference for measuring only: it never refuses, retries or times out.

``python -m bench.typed_floor REDIS_URL PREFIX MODEL_FOLDER`` logs ``worker.started`` once it
reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from conveyor.broker.keys import GROUP, Keys
from conveyor.broker.wire import JobDecoder, encode_result, pack_inline
from conveyor.repository import load_model_settings
from conveyor.types import InferenceRequest

_BELL_TTL_S = 90


async def serve(url: str, prefix: str, folder: str) -> None:
    settings = load_model_settings(folder)
    model = settings.implementation(settings)
    await model.load()
    stream = Keys(prefix).jobs(settings.name)
    redis = Redis.from_url(url, socket_timeout=None)
    with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
        await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    print("worker.started", file=sys.stderr, flush=True)
    decoder = JobDecoder()
    while True:
        got: Any = await redis.xreadgroup(GROUP, "typed", {stream: ">"}, count=64, block=1000)
        entries = got[0][1] if got else []
        if not entries:
            continue
        decoder = decoder.next_read()
        bells: dict[str, list[bytes]] = {}
        for entry_id, fields in entries:
            job = decoder.decode(fields)
            request = job.args[0]
            assert isinstance(request, InferenceRequest)
            response = await model.predict(request)
            response.id = request.id or job.id
            answer = encode_result(job.id, 1, entry_id.decode(), response)
            bells.setdefault(job.bell, []).append(pack_inline(answer))
        pipe = redis.pipeline(transaction=False)
        for bell, answers in bells.items():
            pipe.lpush(bell, *answers)
            pipe.expire(bell, _BELL_TTL_S)
        ids = [entry_id for entry_id, _ in entries]
        pipe.xack(stream, GROUP, *ids)
        pipe.xdel(stream, *ids)
        await pipe.execute()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2], sys.argv[3]))
