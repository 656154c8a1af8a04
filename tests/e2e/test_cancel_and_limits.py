"""A caller that gives up leaves no work running; limits are enforced with clear errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path
from uuid import uuid4

import anyio
import numpy as np
import pytest
import redis

from conveyor.client import Client
from conveyor.errors import DeadlineExceeded, PayloadTooLarge, QueueFull
from conveyor.types import InferenceRequest
from tests.support.calls import generator, request
from tests.support.fleet import MODELS, Fleet, WorkerProcess
from tests.support.probe import last_entries

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def module_prefix() -> str:
    return f"t{uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def worker(redis_url: str, module_prefix: str) -> Iterator[WorkerProcess]:
    fleet = Fleet(redis_url, module_prefix)
    yield fleet.start(MODELS)
    fleet.stop()


@pytest.fixture
async def client(
    redis_url: str, module_prefix: str, worker: WorkerProcess
) -> AsyncIterator[Client]:
    async with Client(redis_url, prefix=module_prefix, timeout=20) as client:
        yield client


@pytest.mark.timeout(30)
async def test_leaving_a_stream_stops_the_generator(client: Client, worker: WorkerProcess) -> None:
    start = len(worker.lines)

    async def one() -> AsyncIterator[InferenceRequest]:
        yield request([0.0])

    ticks = []
    async with aclosing(generator(client.model("ticker").predict_stream(one()))) as chunks:
        async for chunk in chunks:
            ticks.append(chunk.outputs[0].data[0])
            if len(ticks) == 3:
                break
    assert ticks == [0, 1, 2]
    line = await anyio.to_thread.run_sync(worker.wait_for_log, "reason=cancelled", 10.0, start)
    assert "model=ticker method=predict_stream" in line


@pytest.mark.timeout(30)
async def test_a_cancelled_call_cancels_the_running_job(
    client: Client, worker: WorkerProcess
) -> None:
    start = len(worker.lines)
    with anyio.move_on_after(1):
        await client.model("ticker").predict(request([60.0]))
    line = await anyio.to_thread.run_sync(worker.wait_for_log, "reason=cancelled", 10.0, start)
    assert "model=ticker method=predict " in line + " "


@pytest.mark.timeout(30)
async def test_a_timed_out_call_cancels_the_running_job(
    client: Client, worker: WorkerProcess
) -> None:
    start = len(worker.lines)
    with pytest.raises(DeadlineExceeded, match="taken by a worker"):
        await client.model("ticker").predict(request([60.0]), timeout=1)
    # stopped by its own deadline (the caller's timeout) or by the caller's cancel
    line = await anyio.to_thread.run_sync(worker.wait_for_log, "job.stopped", 10.0, start)
    assert "model=ticker method=predict" in line


@pytest.mark.timeout(30)
async def test_client_refuses_an_oversized_payload_before_sending(
    redis_url: str, module_prefix: str, worker: WorkerProcess
) -> None:
    async with Client(redis_url, prefix=module_prefix, max_payload_bytes=1000) as client:
        with pytest.raises(
            PayloadTooLarge, match=r"payload of \d+ bytes is over the limit of 1000"
        ):
            await client.model("echo").predict(request(np.zeros(1000)))


@pytest.mark.timeout(30)
async def test_worker_dead_letters_a_payload_over_the_model_limit(
    client: Client, redis_url: str, module_prefix: str
) -> None:
    with pytest.raises(PayloadTooLarge, match="over the limit of 4096 bytes"):
        await client.model("small-limit").predict(request(np.zeros(4096)))
    probe = redis.Redis.from_url(redis_url)
    try:
        [(_, dead)] = last_entries(probe, f"{module_prefix}:{{small-limit}}:dead")
        assert b"max_payload_bytes" in dead[b"dead_reason"]
    finally:
        probe.close()
    # the worker keeps serving
    await client.model("small-limit").predict(request([1.0]))


@pytest.mark.timeout(30)
async def test_a_slow_stream_reader_pauses_the_worker(
    redis_url: str, module_prefix: str, worker: WorkerProcess
) -> None:
    probe = redis.Redis.from_url(redis_url)

    client = Client(redis_url, prefix=module_prefix, stream_window=4)

    def written() -> int:
        keys = list(probe.scan_iter(f"{module_prefix}:reply:{{{client.client_id}}}:*"))
        # entries ever added: the client trims the chunks it has read (XTRIM MINID)
        return sum(probe.xinfo_stream(key)["entries-added"] for key in keys)

    async def wait_written(at_least: int) -> int:
        with anyio.fail_after(10):
            while (count := written()) < at_least:  # noqa: ASYNC110 - watching Redis
                await anyio.sleep(0.01)
        return count

    async def one() -> AsyncIterator[InferenceRequest]:
        yield request([0.0])

    try:
        async with client:
            chunks = generator(client.model("ticker").predict_stream(one()))
            async with aclosing(chunks):
                await chunks.__anext__()  # take one chunk, then stop reading a while
                assert await wait_written(4) == 4
                # ticks come every 20 ms: 25 would have been written without the window
                await anyio.sleep(0.5)
                assert written() == 4
                for _ in range(3):
                    await chunks.__anext__()
                # Coming back for the 3rd chunk, the caller credited the 2 it had taken
                # (credits go every half window): the worker may now write 2 more.
                assert await wait_written(6) == 6
    finally:
        probe.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_full_queue_fails_fast_or_waits(fleet: Fleet, redis_url: str, prefix: str) -> None:
    limited = Path(__file__).parents[1] / "models" / "limited"
    fleet.start(limited, extra=["--concurrency", "1"])
    async with Client(redis_url, prefix=prefix, timeout=30) as client:
        model = client.model("bounded")
        async with anyio.create_task_group() as tg:
            for _ in range(3):  # one runs, two wait: the backlog (XLEN) is 3
                tg.start_soon(model.predict, request([1.0]))
            probe = redis.Redis.from_url(redis_url)
            with anyio.fail_after(10):
                while probe.xlen(f"{prefix}:{{bounded}}:jobs") < 3:  # noqa: ASYNC110
                    await anyio.sleep(0.01)  # watching Redis: no event to await
            probe.close()
            with pytest.raises(QueueFull, match=r"3 jobs waiting, limit 3"):
                await model.predict(request([0.0]))
            # asked to wait, the call goes in once there is room, and is answered
            await model.predict(request([0.0]), wait_when_full=True)
