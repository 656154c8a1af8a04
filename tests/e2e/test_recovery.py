"""A worker that dies mid-job: its jobs are reclaimed, or dead-lettered when they kill every
worker that takes them. Real Redis, workers as real subprocesses."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import numpy as np
import pytest
import redis

from conveyor.client import Client
from conveyor.errors import DeadLettered
from tests.support.calls import request
from tests.support.fleet import MODELS, Fleet, wait_acked
from tests.support.probe import entries

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

CRASH_MODELS = Path(__file__).parents[1] / "models" / "crash"


async def wait_pending(probe: redis.Redis, stream: str, count: int) -> None:
    with anyio.fail_after(15):
        while probe.xpending(stream, "workers")["pending"] < count:  # noqa: ASYNC110
            await anyio.sleep(0.01)  # watching Redis, which has no event to await


@pytest.mark.timeout(60)
async def test_sigkilled_worker_job_is_finished_by_another(
    fleet: Fleet, redis_url: str, prefix: str
) -> None:
    first = fleet.start(MODELS, extra=["--concurrency", "1"])
    probe = redis.Redis.from_url(redis_url)
    try:
        async with Client(redis_url, prefix=prefix, timeout=40) as client:
            answers = []

            async def call() -> None:
                answers.append(await client.model("counter").predict(request(0.0, sleep=3.0)))

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await wait_pending(probe, f"{prefix}:{{counter}}:jobs", 1)
                first.signal(signal.SIGKILL)
                second = await anyio.to_thread.run_sync(lambda: fleet.start(MODELS))
            assert len(answers) == 1
            pid = int(np.asarray(answers[0].outputs[0].data.root).ravel()[0])
            assert pid == second.pid
            reclaimed = await anyio.to_thread.run_sync(second.wait_for_log, "job.reclaimed")
            assert "deliveries=2" in reclaimed
            stream = f"{prefix}:{{counter}}:jobs"
            await anyio.to_thread.run_sync(lambda: wait_acked(probe, stream))
    finally:
        probe.close()


@pytest.mark.timeout(90)
async def test_job_that_kills_every_worker_is_dead_lettered(
    fleet: Fleet, redis_url: str, prefix: str
) -> None:
    fleet.start(CRASH_MODELS, extra=["--processes", "2"], wait=False)
    probe = redis.Redis.from_url(redis_url)
    try:
        async with Client(redis_url, prefix=prefix, timeout=60) as client:
            with pytest.raises(DeadLettered, match="delivered 3 times"):
                await client.model("suicidal").predict(request(0.0, sleep=0))
        [(_, dead)] = entries(probe, f"{prefix}:{{suicidal}}:dead")
        assert b"max_deliveries=2" in dead[b"dead_reason"]
        stream = f"{prefix}:{{suicidal}}:jobs"
        await anyio.to_thread.run_sync(lambda: wait_acked(probe, stream))
    finally:
        probe.close()
