"""Redis itself dies (SIGKILL) and comes back with its append-only file: every call still
gets its one correct answer. Real Redis, workers as real subprocesses; the client on asyncio
and on trio (whose calls' jobs go without waiting for Redis, and are sent again when the
crash fails their round trip)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import numpy as np
import pytest

from conveyor.client import Client
from conveyor.embedded import RedisServer
from conveyor.errors import BrokerConnectionError
from tests.support.calls import request
from tests.support.fleet import MODELS, Fleet

pytestmark = [pytest.mark.anyio]


@pytest.mark.timeout(120)
async def test_calls_survive_a_redis_crash_and_restart(
    redis_server_factory: Callable[..., RedisServer], prefix: str
) -> None:
    server = redis_server_factory(args=["--appendonly", "yes", "--appendfsync", "everysec"])
    fleet = Fleet(server.url, prefix)
    worker = fleet.start(MODELS, extra=["--concurrency", "16"])
    calls = 300
    answers: dict[int, float] = {}
    half = anyio.Event()
    try:
        async with Client(server.url, prefix=prefix, timeout=60) as client:
            model = client.model("echo")
            limiter = anyio.Semaphore(32)

            async def call(i: int) -> None:
                async with limiter:
                    response = await model.predict(request(float(i), sleep=0.01))
                answers[i] = float(np.asarray(response.outputs[0].data.root).ravel()[0])
                if len(answers) == calls // 3:
                    half.set()

            async with anyio.create_task_group() as tg:
                for i in range(calls):
                    tg.start_soon(call, i)
                await half.wait()
                crashed_pid = server.pid
                await anyio.to_thread.run_sync(lambda: server.restart(kill=True))
                assert server.pid != crashed_pid
        assert answers == {i: float(i) for i in range(calls)}
        assert worker.process.poll() is None  # the worker lived through it
    finally:
        fleet.stop()


@pytest.mark.timeout(30)
async def test_unreachable_redis_fails_within_the_timeout_naming_the_url(
    redis_server_factory: Callable[..., Any],
) -> None:
    server = redis_server_factory(password="s3cret-pw")
    url = server.url
    await anyio.to_thread.run_sync(server.kill)
    async with Client(url, timeout=3) as client:
        with anyio.fail_after(20), pytest.raises(BrokerConnectionError) as caught:
            await client.model("echo").predict(request(1.0, sleep=0))
    assert "127.0.0.1" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)
