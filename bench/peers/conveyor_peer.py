"""Conveyor on the peers' two cases, measured by the same driver (bench/peers/_driver.py).

Runs in the project's environment. The model is bench/peers/models/bench-noop (an async
``predict`` returning an empty ``InferenceResponse``), each request one FP32 input of shape
[1] (what the MLServer driver sends too).

- drain: the jobs are ``predict`` jobs as ``Client`` sends them (``encode_job`` of a ``Job``
  with a reply stream and a doorbell), XADDed in pipelines of 1,000 before any worker exists;
  nobody reads the replies. The backlog is ``XLEN`` of the job stream: a worker XACKs and
  XDELs each job once answered. A drain that dead-letters anything is an error.
- rpc: ``Client(...).model("bench-noop").predict(request)``, on asyncio.

Worker: ``python -m conveyor.cli worker bench/peers/models/bench-noop --redis URL --prefix P
--concurrency N --log-level warning``. Driver: ``python -m bench.peers.conveyor_peer drain|rpc``.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

from redis.asyncio import Redis

from bench.peers import _driver
from conveyor.broker.keys import Keys
from conveyor.broker.wire import Job, encode_job
from conveyor.client import Client
from conveyor.client.model import ParallelModel
from conveyor.types import InferenceRequest, RequestInput

MODEL = "bench-noop"
MODEL_DIR = Path(__file__).resolve().parent / "models" / MODEL
PREFIX = "bench-peers"
ENQUEUE_AT_ONCE = 1000
DRAIN_DEADLINE_S = 3600.0  # far: a job queued behind 20,000 others must not expire


def request() -> InferenceRequest:
    return InferenceRequest(inputs=[RequestInput(name="x", shape=[1], datatype="FP32", data=[0.0])])


class ConveyorPeer:
    def __init__(self, opts: _driver.Options) -> None:
        self.opts = opts
        self.keys = Keys(PREFIX)
        self.redis = Redis.from_url(opts.url)
        self.client = Client(opts.url, prefix=PREFIX)
        self.model: ParallelModel | None = None
        self.request = request()

    async def __aenter__(self) -> ConveyorPeer:
        await self.client.__aenter__()
        self.model = self.client.model(MODEL)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        await self.redis.aclose()

    def worker_argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "conveyor.cli",
            "worker",
            str(MODEL_DIR),
            "--redis",
            self.opts.url,
            "--prefix",
            PREFIX,
            "--concurrency",
            str(self.opts.concurrency),
            "--log-level",
            "warning",
        ]

    def worker_env(self) -> dict[str, str]:
        return {}

    async def enqueue(self, count: int) -> None:
        client_id = uuid.uuid4().hex[:12]  # a client that never reads its replies
        stream = self.keys.jobs(MODEL)
        for start in range(0, count, ENQUEUE_AT_ONCE):
            pipe = self.redis.pipeline(transaction=False)
            for _ in range(min(ENQUEUE_AT_ONCE, count - start)):
                request_id = uuid.uuid4().hex
                now = time.time()
                job = Job(
                    id=request_id,
                    method="predict",
                    model=MODEL,
                    version=None,
                    reply=self.keys.reply(client_id, request_id),
                    bell=self.keys.bell(client_id),
                    deadline=now + DRAIN_DEADLINE_S,
                    sent_at=now,
                    args=(self.request,),
                )
                pipe.xadd(stream, encode_job(job))  # type: ignore[arg-type,unused-ignore]
            await pipe.execute()

    async def backlog(self) -> int:
        left = int(await self.redis.xlen(self.keys.jobs(MODEL)))
        if left == 0:
            dead = int(await self.redis.xlen(self.keys.dead(MODEL)))
            if dead:
                raise RuntimeError(f"{dead} jobs were dead-lettered")
        return left

    async def call(self) -> None:
        assert self.model is not None
        await self.model.predict(self.request, timeout=60)


if __name__ == "__main__":
    _driver.main(ConveyorPeer, ("conveyor", "redis", "hiredis", "pydantic", "msgpack", "anyio"))
