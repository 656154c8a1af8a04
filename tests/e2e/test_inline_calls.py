"""A plain ``def`` model whose calls are short and hold the GIL runs them on the worker's event
loop; at the first long call, or one that releases the GIL, they go back to threads
(``worker.inline_calls``). Real Redis, the worker a real subprocess; the model
(tests/models/inline/busy) answers whether it ran on the loop's thread.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import numpy as np
import pytest

from conveyor.client import Client, ParallelModel
from conveyor.embedded import RedisServer
from conveyor.errors import RemoteError
from conveyor.types import InferenceResponse
from tests.support.calls import request
from tests.support.fleet import Fleet, WorkerProcess

BUSY = Path(__file__).parents[1] / "models" / "inline" / "busy"
# Calls made before a model that qualifies must be on the loop: far more than the 8 in a row
# it needs, as a loaded machine may stretch a few calls' wall time past their CPU time.
ENOUGH = 200


def output(response: InferenceResponse, name: str) -> int:
    (found,) = (o for o in response.outputs if o.name == name)
    return int(np.asarray(found.data.root).ravel()[0])


@asynccontextmanager
async def busy_model(fleet: Fleet) -> AsyncIterator[tuple[ParallelModel, WorkerProcess]]:
    """A worker serving tests/models/inline/busy, and the model as a client sees it."""
    worker = fleet.start(BUSY)
    async with Client(fleet.redis_url, prefix=fleet.prefix, timeout=30) as client:
        yield client.model("busy"), worker


async def until_on_loop(busy: ParallelModel, worker: WorkerProcess) -> list[int]:
    """Calls ``busy`` with short GIL-holding calls until one ran on the loop; where each ran
    (1: on the loop)."""
    places: list[int] = []
    for _ in range(ENOUGH):
        places.append(output(await busy.predict(request(busy_ms=1.0)), "on_loop"))
        if places[-1]:
            return places
    raise AssertionError(f"never on the loop in {ENOUGH} calls:\n{worker.log()}")


@pytest.mark.anyio
async def test_short_gil_holding_calls_move_to_the_loop_and_a_long_one_moves_them_back(
    fleet: Fleet,
) -> None:
    async with busy_model(fleet) as (busy, worker):
        with anyio.fail_after(120):
            assert (await until_on_loop(busy, worker))[0] == 0, "the first calls: a thread"
            worker.wait_for_log("model.calls_inline model=busy")
            # a concurrent burst while on the loop: one call at a time still, every one answered
            responses: list[InferenceResponse] = []

            async def one() -> None:
                responses.append(await busy.predict(request(busy_ms=1.0)))

            async with anyio.create_task_group() as tg:
                for _ in range(16):
                    tg.start_soon(one)
            assert [output(r, "peak") for r in responses] == [1] * 16
            # (a busy machine may have stretched one of them and sent the calls back: the loop
            # again, then) a long call (40 ms of CPU: past INLINE_MAX_S) runs on the loop
            await until_on_loop(busy, worker)
            assert output(await busy.predict(request(busy_ms=40.0)), "on_loop") == 1
            worker.wait_for_log("model.calls_threaded model=busy reason=long_call")
            assert output(await busy.predict(request(busy_ms=1.0)), "on_loop") == 0


async def answer_or_error(call: Awaitable[InferenceResponse]) -> InferenceResponse | RemoteError:
    try:
        return await call
    except RemoteError as error:
        return error


@pytest.mark.anyio
async def test_a_call_that_raises_on_the_loop_sends_the_next_ones_to_a_thread(
    fleet: Fleet,
) -> None:
    async with busy_model(fleet) as (busy, worker):
        with anyio.fail_after(120):
            for _ in range(5):
                start = len(worker.lines)
                await until_on_loop(busy, worker)
                ran = await answer_or_error(busy.predict(request(busy_ms=1.0, fail_on_loop=1)))
                if isinstance(ran, RemoteError):
                    assert "called on the event loop's thread" in str(ran)
                    break
                # A busy machine stretched (or preempted) the call before it, and the calls
                # went back to threads, as the worker said: on the loop again, then.
                assert output(ran, "on_loop") == 0
                await worker.wait_for_log_async("model.calls_threaded model=busy", 10, start)
            else:
                raise AssertionError(f"no call raised on the loop:\n{worker.log()}")
            worker.wait_for_log("model.calls_threaded model=busy reason=raised")
            response = await busy.predict(request(busy_ms=1.0, fail_on_loop=1))
    assert output(response, "on_loop") == 0


@pytest.mark.anyio
async def test_a_call_on_the_loop_sees_no_running_loop_as_in_a_thread(fleet: Fleet) -> None:
    """A sync model that runs a coroutine of its own with ``asyncio.run()`` (as sync wrappers
    over async libraries do) works in a thread; on the loop too, and its calls stay there."""
    async with busy_model(fleet) as (busy, worker):
        with anyio.fail_after(120):
            await until_on_loop(busy, worker)
            places = [
                output(await busy.predict(request(busy_ms=1.0, asyncio_run=1)), "on_loop")
                for _ in range(5)
            ]
    assert places[0] == 1, "the first call after the move: on the loop"
    assert worker.count("reason=raised") == 0, worker.log()


async def assert_stay_in_threads(fleet: Fleet, busy_ms: float = 0.0, sleep_ms: float = 0.0) -> None:
    """40 calls (each busy, then asleep, so long) all run in a thread, and none moves."""
    async with busy_model(fleet) as (busy, worker):
        with anyio.fail_after(60):
            places = [
                output(await busy.predict(request(busy_ms=busy_ms, sleep_ms=sleep_ms)), "on_loop")
                for _ in range(40)
            ]
    assert places == [0] * 40
    assert worker.count("model.calls_inline") == 0


@pytest.mark.anyio
async def test_calls_that_release_the_gil_stay_in_threads(fleet: Fleet) -> None:
    await assert_stay_in_threads(fleet, sleep_ms=2.0)


@pytest.mark.anyio
async def test_a_model_whose_settings_say_no_keeps_every_call_in_a_thread(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the field as any model setting is given without its folder's file: CONVEYOR_MODEL_*
    monkeypatch.setenv("CONVEYOR_MODEL_INLINE_CALLS", "false")
    await assert_stay_in_threads(fleet, busy_ms=1.0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_calls_on_the_loop_survive_a_redis_crash_and_restart(
    redis_server_factory: Callable[..., RedisServer], prefix: str
) -> None:
    server = redis_server_factory(args=["--appendonly", "yes", "--appendfsync", "everysec"])
    fleet = Fleet(server.url, prefix)
    try:
        async with busy_model(fleet) as (busy, worker):
            await until_on_loop(busy, worker)
            calls, answered = 300, 0
            third = anyio.Event()
            limiter = anyio.Semaphore(16)

            async def call() -> None:
                nonlocal answered
                async with limiter:
                    await busy.predict(request(busy_ms=1.0))
                answered += 1
                if answered == calls // 3:
                    third.set()

            async with anyio.create_task_group() as tg:
                for _ in range(calls):
                    tg.start_soon(call)
                await third.wait()
                crashed_pid = server.pid
                await anyio.to_thread.run_sync(lambda: server.restart(kill=True))
                assert server.pid != crashed_pid
            assert answered == calls
            assert worker.process.poll() is None  # the worker lived through it
            await until_on_loop(busy, worker)  # and still runs the calls on its loop
    finally:
        fleet.stop()
