"""Nothing lost, nothing doubled: answers under memory pressure, streams that lose chunks, job
entries that exist twice, and the Redis footprint of a slow stream reader.

Real Redis servers (private ones where a test changes a server's settings) and workers as
real subprocesses. Every wait is on an event (a chunk, an answer, a worker's log line) or on
Redis state polled under a deadline (Redis has no event to await).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import redis
from fleet import Fleet, WorkerProcess

from conveyor.client import Client
from conveyor.errors import BrokerOutOfMemory
from conveyor.types import InferenceRequest, InferenceResponse, Parameters, RequestInput

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

TESTS = Path(__file__).parent
COUNTER = TESTS / "models_delivery"  # `counter`: records each run's pid in a file
STREAMER = TESTS / "models_streams"  # `streamer`: chunks carry their index and the pid
WORKER_ARGS = ("--heartbeat-ttl", "3", "--grace-period", "1")
GROUP = "workers"


# -- helpers ---------------------------------------------------------------------------------


def counter_request(value: float, **params: float | str) -> InferenceRequest:
    return InferenceRequest(
        parameters=Parameters(**params),
        inputs=[RequestInput(name="x", shape=[1], datatype="FP32", data=[value])],
    )


def output(response: InferenceResponse, name: str) -> float:
    for out in response.outputs:
        if out.name == name:
            return float(np.asarray(out.data.root).ravel()[0])
    raise AssertionError(f"no output {name!r} in {[o.name for o in response.outputs]}")


def stream_request(**params: float) -> InferenceRequest:
    return InferenceRequest(
        parameters=Parameters(**params),
        inputs=[RequestInput(name="x", shape=[1], datatype="FP32", data=[0.0])],
    )


async def one(request: InferenceRequest) -> AsyncIterator[InferenceRequest]:
    yield request


def chunk_of(response: InferenceResponse) -> tuple[int, int]:
    """(index, pid) of a ``streamer`` chunk."""
    return int(output(response, "index")), int(output(response, "pid"))


async def wait_until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Polls Redis state (which has no event to await) until ``check`` holds."""
    with anyio.move_on_after(timeout):
        while not check():  # noqa: ASYNC110
            await anyio.sleep(0.02)
        return
    raise TimeoutError(f"{what}: not true after {timeout:.0f}s")


async def wait_log(worker: WorkerProcess, line: str, timeout: float = 15.0) -> str:
    return await anyio.to_thread.run_sync(lambda: worker.wait_for_log(line, timeout))


def log_count(worker: WorkerProcess, text: str) -> int:
    return sum(text in line for line in list(worker.lines))


def pending_count(probe: redis.Redis, stream: str) -> int:
    try:
        return int(probe.xpending(stream, GROUP)["pending"])
    except redis.ResponseError:
        return 0


def reply_streams(probe: redis.Redis, prefix: str) -> list[str]:
    return [
        key.decode() if isinstance(key, bytes) else key
        for key in probe.scan_iter(f"{prefix}:reply:*", _type="stream")
    ]


@pytest.fixture
def fleet(redis_url: str, prefix: str) -> Iterator[Fleet]:
    fleet = Fleet(redis_url, prefix)
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def probe(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


# -- 1. out of memory: no ack without an answer ---------------------------------------------------


def fill_to_maxmemory(probe: redis.Redis, prefix: str) -> list[str]:
    """Writes until Redis refuses a write for want of memory, then lowers maxmemory 1 MB below
    what it holds: connection buffers come and go, and a Redis just at its limit would take
    some small writes again. Returns the keys written, to free the memory later."""
    keys: list[str] = []
    with contextlib.suppress(redis.exceptions.OutOfMemoryError):
        while True:
            key = f"{prefix}:filler:{len(keys)}"
            probe.set(key, b"x" * (256 * 1024))
            keys.append(key)
    used = int(probe.info("memory")["used_memory"])
    probe.config_set("maxmemory", used - 1024 * 1024)
    return keys


@pytest.mark.timeout(90)
async def test_out_of_memory_never_acks_a_job_without_its_answer(
    redis_server_factory: Callable[..., Any], prefix: str
) -> None:
    """Four jobs run while Redis reaches maxmemory (noeviction): each answer is refused, and
    each job stays in its stream and pending (before: the XACK and XDEL in the reply's pipeline
    went through, and the answer was gone for good). A new call fails at once with
    BrokerOutOfMemory, which says what to do; a call whose timeout comes first gets it too, not
    a raw redis error. Once memory frees, the worker's retries store the other answers, each
    caller gets its own, and nothing is left pending."""
    server = redis_server_factory(args=["--maxmemory", "16mb", "--maxmemory-policy", "noeviction"])
    fleet = Fleet(server.url, prefix)
    probe = redis.Redis.from_url(server.url)
    stream = f"{prefix}:{{counter}}:jobs"
    answers: dict[int, float] = {}
    outcome: dict[str, BaseException] = {}
    try:
        worker = fleet.start(COUNTER, extra=WORKER_ARGS)
        async with Client(server.url, prefix=prefix, timeout=40) as client:
            model = client.model("counter")

            async def patient(value: int) -> None:
                answers[value] = output(await model.predict(counter_request(value, sleep=1.5)), "x")

            async def hasty() -> None:
                try:
                    await model.predict(counter_request(99, sleep=1.5), timeout=6)
                except Exception as error:
                    outcome["hasty"] = error

            async with anyio.create_task_group() as tg:
                for value in range(3):
                    tg.start_soon(patient, value)
                tg.start_soon(hasty)
                await wait_until(lambda: pending_count(probe, stream) == 4, "4 jobs running")
                filler = fill_to_maxmemory(probe, prefix)
                # the models end 1.5 s after they started; their answers are refused
                await wait_until(
                    lambda: (
                        log_count(worker, "job.answer_refused") == 4
                        or pending_count(probe, stream) < 4
                    ),
                    "4 answers refused",
                )
                assert pending_count(probe, stream) == 4, "a job was acked without its answer"
                assert probe.xlen(stream) == 4

                with pytest.raises(BrokerOutOfMemory) as refused:
                    await model.predict(counter_request(7), timeout=20)
                assert "maxmemory" in str(refused.value)

                await wait_until(lambda: "hasty" in outcome, "the hasty call timed out", 20)
                assert isinstance(outcome["hasty"], BrokerOutOfMemory), repr(outcome["hasty"])
                assert not answers  # nobody got an answer while Redis was full
                assert pending_count(probe, stream) >= 3  # ... nor lost one

                probe.delete(*filler)  # memory frees: the answers kept are stored now
            assert answers == {value: float(value) for value in range(3)}
        await wait_until(lambda: pending_count(probe, stream) == 0, "nothing left pending", 20)
    finally:
        fleet.stop()
        probe.close()
