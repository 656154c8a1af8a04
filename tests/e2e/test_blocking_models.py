"""Blocking models run as their authors expect (issue 14, item 1): a model instance takes one
call at a time unless its ``max_concurrent_calls`` says more; ``async def`` models run
concurrently on the loop; a worker holds only the jobs its model can run soon, so a second
worker process gets the rest.

Real Redis, workers as real subprocesses. The models (tests/models_blocking) answer with the
most calls their instance saw inside at once, and their process id.
"""

from __future__ import annotations

from collections import Counter
from contextlib import aclosing
from pathlib import Path

import anyio
import numpy as np
import pytest

from conveyor.client import Client
from conveyor.types import InferenceResponse
from conveyor.worker.call_limit import CallLimit, Hold, plan_reads
from tests.support.calls import generator, one, request
from tests.support.fleet import Fleet

MODELS = Path(__file__).parents[1] / "models" / "blocking"
CALLS = 16


def output(response: InferenceResponse, name: str) -> int:
    (found,) = (o for o in response.outputs if o.name == name)
    return int(np.asarray(found.data.root).ravel()[0])


async def call_at_once(fleet: Fleet, model: str, calls: int = CALLS) -> list[InferenceResponse]:
    """``calls`` concurrent predicts of ``model``; their responses."""
    responses: list[InferenceResponse] = []
    async with Client(fleet.redis_url, prefix=fleet.prefix, timeout=30) as client:
        served = client.model(model)

        async def one() -> None:
            responses.append(await served.predict(request(0.0)))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for _ in range(calls):
                    tg.start_soon(one)
    return responses


@pytest.mark.anyio
async def test_a_plain_def_model_gets_one_call_at_a_time_by_default(fleet: Fleet) -> None:
    fleet.start(MODELS / "serial", extra=["--concurrency", "16"])
    responses = await call_at_once(fleet, "serial")
    assert [output(r, "peak") for r in responses] == [1] * CALLS


@pytest.mark.anyio
async def test_streams_and_calls_of_a_plain_def_model_share_its_one_slot(fleet: Fleet) -> None:
    # MLModel's own predict_stream calls the plain predict in a thread of its own: it takes
    # the instance's slot too
    fleet.start(MODELS / "serial", extra=["--concurrency", "16"])
    peaks: list[int] = []
    async with Client(fleet.redis_url, prefix=fleet.prefix, timeout=30) as client:
        served = client.model("serial")

        async def stream() -> None:
            async with aclosing(generator(served.predict_stream(one(request(0.0))))) as chunks:
                async for chunk in chunks:
                    peaks.append(output(chunk, "peak"))

        async def unary() -> None:
            peaks.append(output(await served.predict(request(0.0)), "peak"))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(CALLS):
                    tg.start_soon(stream if i % 2 else unary)
    assert peaks == [1] * CALLS


@pytest.mark.anyio
async def test_max_concurrent_calls_lets_that_many_calls_in(fleet: Fleet) -> None:
    # each call waits until 4 are inside together: only a worker that lets 4 in answers
    # these promptly, and none ever sees a fifth
    fleet.start(MODELS / "four", extra=["--concurrency", "16"])
    responses = await call_at_once(fleet, "four")
    assert max(output(r, "peak") for r in responses) == 4


@pytest.mark.anyio
async def test_an_async_model_takes_many_calls_at_once(fleet: Fleet) -> None:
    # each call waits until 8 are inside together (no max_concurrent_calls set)
    fleet.start(MODELS / "gathering", extra=["--concurrency", "16"])
    responses = await call_at_once(fleet, "gathering", calls=8)
    assert max(output(r, "peak") for r in responses) == 8


@pytest.mark.anyio
async def test_a_one_at_a_time_model_spreads_its_jobs_over_worker_processes(
    fleet: Fleet,
) -> None:
    # --concurrency 16 each: what bounds the jobs a worker takes is the model's one slot
    # (it holds the running job and two more), not the process's concurrency
    workers = [fleet.start(MODELS / "serial", extra=["--concurrency", "16"]) for _ in range(2)]
    responses = await call_at_once(fleet, "serial", calls=4 * CALLS)
    ran = Counter(output(r, "pid") for r in responses)
    assert set(ran) == {w.pid for w in workers}, ran
    # Each holds at most 3 of the 64 20 ms jobs: one process would run most of them only if
    # the other got no CPU for about a second.
    assert min(ran.values()) >= 8, ran
    assert {output(r, "peak") for r in responses} == {1}


@pytest.mark.anyio
async def test_a_busy_worker_leaves_the_jobs_it_cannot_run_soon_to_a_later_one(
    fleet: Fleet,
) -> None:
    # One worker, 12 jobs of 0.5 s: it takes the one it runs and two more, no more, so a
    # worker started once the first answer is in still finds jobs waiting (~5 s of them).
    first = fleet.start(MODELS / "serial", extra=["--concurrency", "16"])
    ran: Counter[int] = Counter()
    answered = anyio.Event()
    async with Client(fleet.redis_url, prefix=fleet.prefix, timeout=30) as client:
        served = client.model("serial")

        async def one() -> None:
            response = await served.predict(request(0.0, hold_s=0.5))
            ran[output(response, "pid")] += 1
            answered.set()

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for _ in range(12):
                    tg.start_soon(one)
                await answered.wait()
                second = await anyio.to_thread.run_sync(
                    lambda: fleet.start(MODELS / "serial", extra=["--concurrency", "16"])
                )
    assert set(ran) == {first.pid, second.pid}, ran


def test_only_models_with_room_are_read_and_no_more_than_the_least_room() -> None:
    model_of = {"a:jobs": "a", "a:v1:jobs": "a", "b:jobs": "b", "c:jobs": "c"}
    holds = {"a": Hold(2, 2), "b": Hold(4, 4)}  # c: bounded by the worker's free slots alone
    streams = list(model_of)

    def waited(held: dict[str, int], free: int, *of: str) -> tuple[list[str], int]:
        reads = plan_reads(list(of or streams), model_of, holds, held, free)
        assert reads.look == []
        return reads.wait, reads.wait_count

    assert waited({}, 16) == (streams, 2)
    assert waited({"a": 2, "b": 1}, 16) == (["b:jobs", "c:jobs"], 3)
    assert waited({"a": 2}, 16, "a:jobs") == ([], 0)
    assert waited({}, 5, "c:jobs") == (["c:jobs"], 5)


def test_a_batched_model_waits_for_its_batches_and_only_looks_for_the_next() -> None:
    # max_batch_size 32, one batch at a time: waited on below 32 held, looked at up to 64
    hold = CallLimit(None, 32, max_batch_time=0.05).hold(128)
    assert (hold.wait_for, hold.most) == (32, 64)
    assert hold.min_age_s == 0.05  # a job left waiting that long missed any waiting batch
    assert hold.look_s == 0.005  # but looked for often, so the next batch forms in time
    assert CallLimit(2, 32).hold(128).wait_for == 64  # two batches at once
    model_of = {"m:jobs": "m", "e:jobs": "e"}
    holds = {"m": hold}
    reads = plan_reads(["m:jobs", "e:jobs"], model_of, holds, {"m": 20}, 100)
    assert (reads.wait, reads.wait_count, reads.look, reads.acks_now) == (
        ["m:jobs", "e:jobs"],
        12,
        [],
        True,
    )
    reads = plan_reads(["m:jobs", "e:jobs"], model_of, holds, {"m": 40}, 100)
    assert (reads.wait, reads.wait_count) == (["e:jobs"], 100)
    assert (reads.look, reads.look_count, reads.busy) == (["m:jobs"], 24, 32)
    reads = plan_reads(["m:jobs"], model_of, holds, {"m": 64}, 100)
    assert (reads.wait, reads.look) == ([], [])
    # unbatched: three jobs per call slot, all waited for
    assert CallLimit(None, 1).hold(16) == Hold(3, 3)
