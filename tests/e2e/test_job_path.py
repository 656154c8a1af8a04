"""End to end: a real Redis, workers as real subprocesses, the client on asyncio and trio."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from uuid import uuid4

import anyio
import anyio.lowlevel
import numpy as np
import pytest
import redis

from conveyor.client import Client
from conveyor.errors import (
    DeadlineExceeded,
    MethodNotAllowed,
    RemoteError,
)
from conveyor.types import InferenceRequest, InferenceResponse
from tests.support.calls import request
from tests.support.fleet import EXAMPLES, MODELS, Fleet, wait_acked

pytestmark = pytest.mark.anyio


def values(response: InferenceResponse) -> np.ndarray:
    output = response.outputs[0]
    return np.asarray(output.data.root).reshape(output.shape)


@pytest.fixture(scope="module")
def shared_prefix() -> str:
    return f"t{uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def shared_fleet(redis_url: str, shared_prefix: str) -> Iterator[Fleet]:
    """Two workers sharing the test models, for the tests that need nothing special."""
    with Fleet(redis_url, shared_prefix) as fleet:
        fleet.start(MODELS, extra=["--concurrency", "8"])
        fleet.start(MODELS, extra=["--concurrency", "8"])
        yield fleet


@pytest.fixture
async def client(redis_url: str, shared_prefix: str, shared_fleet: Fleet) -> AsyncIterator[Client]:
    async with Client(redis_url, prefix=shared_prefix, timeout=20) as client:
        yield client


async def test_predict_round_trips_a_tensor(client: Client) -> None:
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    response = await client.model("echo").predict(request(data))
    assert response.model_name == "echo"
    np.testing.assert_array_equal(values(response), data)


async def test_predict_with_version(client: Client) -> None:
    response = await client.model("echo", version="v1").predict(request([1.0]))
    assert response.model_version == "v1"


async def test_metadata(client: Client) -> None:
    metadata = await client.model("echo").metadata()
    assert metadata.name == "echo"
    assert (
        metadata.versions == [] or metadata.versions is None or isinstance(metadata.versions, list)
    )


async def test_predict_stream_streams_inputs_and_outputs_in_order(client: Client) -> None:
    model = client.model("echo")
    sent: list[int] = []
    got: list[int] = []
    second_may_go = anyio.Event()

    async def inputs() -> AsyncIterator[InferenceRequest]:
        for i in range(5):
            if i == 1:
                # the first output arrives while the inputs are still streaming
                await second_may_go.wait()
            sent.append(i)
            yield request([float(i)])

    async for chunk in model.predict_stream(inputs()):
        got.append(int(values(chunk)[0]))
        second_may_go.set()
    assert got == [0, 1, 2, 3, 4]
    assert sent == got


async def test_custom_method(client: Client) -> None:
    assert await client.model("echo").call("add", 2, b=3) == {"sum": 5}
    assert await client.model("echo").add(4) == {"sum": 4}


async def test_method_not_exposed_is_refused(client: Client) -> None:
    with pytest.raises(MethodNotAllowed, match="does not expose method 'not_exposed'"):
        await client.model("echo").call("not_exposed")
    with pytest.raises(MethodNotAllowed, match="does not expose method '__init__'"):
        await client.model("echo").call("__init__")


async def test_model_exception_reaches_the_caller(client: Client) -> None:
    with pytest.raises(RemoteError, match="ValueError: cannot handle 1 inputs") as caught:
        await client.model("fails").predict(request([1.0]))
    assert caught.value.type_name == "ValueError"
    # the worker keeps serving
    await client.model("echo").predict(request([1.0]))


async def test_stream_error_after_chunks(client: Client) -> None:
    chunks = 0

    async def one() -> AsyncIterator[InferenceRequest]:
        yield request([1.0])

    async def consume() -> None:
        nonlocal chunks
        async for _ in client.model("fails").predict_stream(one()):
            chunks += 1

    with pytest.raises(RemoteError, match="generator broke after 2 chunks"):
        await consume()
    assert chunks == 2


async def test_several_models_in_one_worker(client: Client) -> None:
    echo = await client.model("echo").predict(request([7.0]))
    counter = await client.model("counter").predict(request([7.0]))
    assert values(echo)[0] == 7.0
    assert counter.outputs[0].name == "pid"


async def test_two_workers_share_the_queue(client: Client, shared_fleet: Fleet) -> None:
    pids: set[int] = set()

    async def call() -> None:
        response = await client.model("counter").predict(request([0.0], sleep=0.2))
        pids.add(int(np.asarray(response.outputs[0].data.root).ravel()[0]))

    async with anyio.create_task_group() as tg:
        for _ in range(24):  # more than one worker's 8 slots
            tg.start_soon(call)
    assert pids == {worker.pid for worker in shared_fleet.workers}


async def test_thousand_concurrent_calls_on_few_connections(client: Client, redis_url: str) -> None:
    model = client.model("echo")
    answers: dict[int, float] = {}
    peak = 0
    probe = redis.Redis.from_url(redis_url)

    def our_connections() -> int:
        name = f"conveyor-client-{client.client_id}"
        return sum(1 for c in probe.client_list() if c.get("name") == name)

    async def call(i: int) -> None:
        response = await model.predict(request([float(i)]))
        answers[i] = float(values(response)[0])

    async with anyio.create_task_group() as tg:
        for i in range(1000):
            tg.start_soon(call, i)
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        peak = max(peak, await anyio.to_thread.run_sync(our_connections))
    peak = max(peak, our_connections())
    probe.close()
    assert answers == {i: float(i) for i in range(1000)}
    assert 1 <= peak <= 4


async def test_nothing_left_behind(client: Client, redis_url: str, shared_prefix: str) -> None:
    for i in range(3):
        await client.model("echo").predict(request([float(i)]))
    probe = redis.Redis.from_url(redis_url)
    try:
        jobs = list(probe.scan_iter(f"{shared_prefix}:*:jobs"))
        assert jobs
        # every answered job leaves its stream (acked once its answer is stored): XLEN is
        # the backlog
        await anyio.to_thread.run_sync(lambda: wait_acked(probe, *jobs))
        for key in probe.scan_iter(f"{shared_prefix}:reply:*"):
            assert probe.ttl(key) > 0, key
        for key in probe.scan_iter(f"{shared_prefix}:in:*"):
            assert probe.ttl(key) > 0, key
    finally:
        probe.close()


# -- tests with workers of their own ---------------------------------------------------------


async def test_a_call_made_before_any_worker_is_served_by_the_one_that_starts(
    fleet: Fleet, redis_url: str, prefix: str
) -> None:
    """No worker, no stream yet: the call waits (within client/served.py's grace for a fleet
    that is starting) for the worker started after it, instead of failing as "not served".
    A job sent while that worker loads, before its group exists, is served too: the group is
    made from the stream's start (tests/test_unknown_model.py, the loading case)."""
    async with Client(redis_url, prefix=prefix, timeout=30) as client:
        results: list[InferenceResponse] = []

        async def call() -> None:
            results.append(await client.model("echo").predict(request([3.0])))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await anyio.to_thread.run_sync(lambda: fleet.start(MODELS))
        assert values(results[0])[0] == 3.0


async def test_sigterm_drains_in_flight_jobs(fleet: Fleet, redis_url: str, prefix: str) -> None:
    worker = fleet.start(MODELS, extra=["--concurrency", "4", "--grace-period", "20"])
    async with Client(redis_url, prefix=prefix, timeout=30) as client:
        results: list[InferenceResponse] = []

        async def call() -> None:
            results.append(await client.model("counter").predict(request([0.0], sleep=1.0)))

        probe = redis.Redis.from_url(redis_url)
        # counter's plain `def predict` runs one call at a time: the worker holds 3 of its
        # jobs (worker.call_limit), one running and two waiting, and drains all three
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(call)
            with anyio.fail_after(10):
                pending = f"{prefix}:{{counter}}:jobs", "workers"
                while probe.xpending(*pending)["pending"] < 3:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            worker.signal(signal.SIGTERM)
        probe.close()
        assert len(results) == 3
    assert await anyio.to_thread.run_sync(worker.wait) == 0


async def test_load_and_unload_across_two_workers(
    fleet: Fleet, redis_url: str, prefix: str
) -> None:
    fleet.start(MODELS)
    fleet.start(MODELS)
    async with Client(redis_url, prefix=prefix, timeout=10) as client:
        model = client.model("echo")
        assert await model.unload() is True
        for worker in fleet.workers:
            await anyio.to_thread.run_sync(worker.wait_for_log, "model.unloaded model=echo")
        # a worker blocked in a read while it unloaded may take the job, then requeue it
        with pytest.raises(DeadlineExceeded):
            await model.predict(request([1.0]), timeout=1)
        assert await model.load() is True
        response = await model.predict(request([2.0]))
        assert values(response)[0] == 2.0


async def test_example_models(fleet: Fleet, redis_url: str, prefix: str) -> None:
    fleet.start(EXAMPLES)
    async with Client(redis_url, prefix=prefix, timeout=20) as client:
        linear = client.model("numpy-linear")
        response = await linear.predict(request([[1.0, 1.0], [2.0, 0.0]]))
        np.testing.assert_allclose(values(response).ravel(), [3.5, 2.0])
        sync_model = client.model("echo-sync")
        await sync_model.predict(request([1.0]))
        assert await sync_model.call("stats") == {"calls": 1}
