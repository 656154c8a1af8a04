"""How a worker runs each job (one asyncio task per job): its deadline, its caller's cancel,
and stopping with jobs in flight. Jobs are written and replies read with the wire format
directly, so each reply's error code can be checked."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from uuid import uuid4

import anyio
import pytest
import redis

from conveyor import MLModel
from conveyor.broker.keys import GROUP, Keys
from conveyor.broker.wire import Job, Message, MessageType, decode_message, encode_job
from conveyor.settings import ModelSettings
from conveyor.types import InferenceRequest, InferenceResponse, Parameters, RequestInput
from conveyor.worker import Worker
from conveyor.worker.cancellation import Deadlines, JobScope
from tests.support.fleet import MODELS, Fleet, wait_acked
from tests.support.in_process import in_process_worker

pytestmark = pytest.mark.anyio


class AsyncSleepy(MLModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        await anyio.sleep(_sleep(payload))
        return InferenceResponse(model_name=self.name, outputs=[])


class SwallowsCancel(MLModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        with contextlib.suppress(BaseException):  # a model that ignores its cancellation
            await anyio.sleep(_sleep(payload))
        return InferenceResponse(model_name=self.name, outputs=[])


class SyncSleepy(MLModel):
    def predict(self, payload: InferenceRequest) -> InferenceResponse:  # type: ignore[override]
        time.sleep(_sleep(payload))
        return InferenceResponse(model_name=self.name, outputs=[])


def _sleep(payload: InferenceRequest) -> float:
    assert payload.parameters is not None
    return float((payload.parameters.model_extra or {})["sleep"])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the worker process always runs on asyncio


@pytest.fixture
async def worker(redis_url: str, prefix: str) -> AsyncIterator[Worker]:
    models = [
        ModelSettings(name="async-sleepy", implementation=AsyncSleepy),
        ModelSettings(name="swallows", implementation=SwallowsCancel),
        ModelSettings(name="sync-sleepy", implementation=SyncSleepy),
    ]
    async with in_process_worker(redis_url, prefix, models, concurrency=8, read_block=0.2) as w:
        yield w


def _job(prefix: str, model: str, sleep: float, timeout: float) -> Job:
    keys = Keys(prefix)
    request_id = uuid4().hex
    request = InferenceRequest(
        inputs=[RequestInput(name="x", shape=[1], datatype="FP32", data=[1.0])],
        parameters=Parameters(sleep=sleep),
    )
    now = time.time()
    return Job(
        request_id,
        "predict",
        model,
        None,
        keys.reply("c", request_id),
        keys.bell("c"),
        now + timeout,
        now,
        args=(request,),
    )


def _send(probe: redis.Redis, prefix: str, job: Job) -> None:
    probe.xadd(Keys(prefix).jobs(job.model), encode_job(job))  # type: ignore[arg-type]


async def _reply(probe: redis.Redis, job: Job, timeout: float = 10.0) -> Message:
    with anyio.fail_after(timeout):
        while True:
            entries = probe.xrange(job.reply)
            if entries:
                return decode_message(entries[-1][1])  # type: ignore[arg-type]
            await anyio.sleep(0.01)


async def test_a_job_past_its_deadline_is_stopped_and_says_so(
    worker: Worker, probe: redis.Redis, prefix: str
) -> None:
    job = _job(prefix, "async-sleepy", sleep=30, timeout=0.3)
    started = time.monotonic()
    _send(probe, prefix, job)
    message = await _reply(probe, job)
    assert message.type is MessageType.ERROR
    assert message.error is not None
    assert message.error.code == "deadline"
    assert message.error.type == "DeadlineExceeded"
    assert time.monotonic() - started < 5
    # the worker is free again and keeps serving
    ok = _job(prefix, "async-sleepy", sleep=0, timeout=10)
    _send(probe, prefix, ok)
    assert (await _reply(probe, ok)).type is MessageType.RESULT
    assert not worker.jobs.by_request
    assert not worker.jobs.scopes


async def test_a_job_cancelled_by_its_caller_says_so(
    worker: Worker, probe: redis.Redis, prefix: str
) -> None:
    job = _job(prefix, "async-sleepy", sleep=30, timeout=20)
    _send(probe, prefix, job)
    with anyio.fail_after(10):
        while job.id not in worker.jobs.by_request:  # noqa: ASYNC110
            await anyio.sleep(0.01)
    cancel = job._replace(method="cancel", args=())
    probe.xadd(Keys(prefix).control(job.model), encode_job(cancel))  # type: ignore[arg-type]
    message = await _reply(probe, job)
    assert message.error is not None
    assert message.error.code == "cancelled"
    # a cancel of a job that already ended changes nothing
    probe.xadd(Keys(prefix).control(job.model), encode_job(cancel))  # type: ignore[arg-type]
    ok = _job(prefix, "async-sleepy", sleep=0, timeout=10)
    _send(probe, prefix, ok)
    assert (await _reply(probe, ok)).type is MessageType.RESULT


async def test_a_model_that_swallows_its_cancellation_answers(
    worker: Worker, probe: redis.Redis, prefix: str
) -> None:
    job = _job(prefix, "swallows", sleep=30, timeout=0.3)
    _send(probe, prefix, job)
    assert (await _reply(probe, job)).type is MessageType.RESULT
    # the task is not left cancelled: the next job runs normally
    ok = _job(prefix, "swallows", sleep=0, timeout=10)
    _send(probe, prefix, ok)
    assert (await _reply(probe, ok)).type is MessageType.RESULT


async def test_a_plain_def_job_past_its_deadline_keeps_its_thread_slot(
    worker: Worker, probe: redis.Redis, prefix: str
) -> None:
    # A thread cannot be stopped: the job ends when it returns, and says it overran.
    job = _job(prefix, "sync-sleepy", sleep=1.0, timeout=0.2)
    started = time.monotonic()
    _send(probe, prefix, job)
    with anyio.fail_after(10):
        while job.id not in worker.jobs.by_request:  # noqa: ASYNC110
            await anyio.sleep(0.01)
    await anyio.sleep(0.4)  # past the deadline, the thread still runs and holds its token
    served = worker.registry.find("sync-sleepy", None)
    assert served is not None
    slots = served.calls.threads  # the model instance's call slot (worker.call_limit)
    assert slots.borrowed_tokens == 1
    assert worker.stats.in_flight
    message = await _reply(probe, job)
    assert time.monotonic() - started >= 0.9
    assert message.error is not None
    assert message.error.code == "deadline"
    assert slots.borrowed_tokens == 0


async def test_stop_waits_for_jobs_in_flight(
    worker: Worker, probe: redis.Redis, prefix: str
) -> None:
    job = _job(prefix, "async-sleepy", sleep=0.5, timeout=10)
    _send(probe, prefix, job)
    with anyio.fail_after(10):
        while job.id not in worker.jobs.by_request:  # noqa: ASYNC110
            await anyio.sleep(0.01)
    worker.stop()
    assert (await _reply(probe, job)).type is MessageType.RESULT
    stream = Keys(prefix).jobs(job.model)
    await anyio.to_thread.run_sync(lambda: wait_acked(probe, stream))  # acked after its answer


def _pending(probe: redis.Redis, prefix: str, model: str) -> int:
    return int(probe.xpending(Keys(prefix).jobs(model), GROUP)["pending"])


@pytest.mark.timeout(60)
async def test_a_second_signal_stops_at_once_leaving_jobs_pending(
    fleet: Fleet, redis_url: str, prefix: str, probe: redis.Redis
) -> None:
    worker = fleet.start(MODELS, extra=["--grace-period", "30"])
    jobs = [_job(prefix, "ticker", sleep=0, timeout=60) for _ in range(3)]
    for job in jobs:  # ticker's predict sleeps as long as its first input says
        job.args[0].inputs[0].data.root[0] = 60.0  # type: ignore[union-attr,index]
        _send(probe, prefix, job)
    with anyio.fail_after(10):
        while _pending(probe, prefix, "ticker") < 3:  # noqa: ASYNC110
            await anyio.sleep(0.01)
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    await anyio.to_thread.run_sync(worker.wait_for_log, "worker.stopping ")
    worker.signal(signal.SIGTERM)
    assert await anyio.to_thread.run_sync(worker.wait, 20) == 0
    assert time.monotonic() - started < 10
    assert "worker.stopping_now" in worker.log()
    assert _pending(probe, prefix, "ticker") == 3  # for another worker to reclaim
    assert not any(probe.exists(job.reply) for job in jobs)


@pytest.mark.timeout(60)
async def test_jobs_past_the_grace_period_stay_pending(
    fleet: Fleet, redis_url: str, prefix: str, probe: redis.Redis
) -> None:
    worker = fleet.start(MODELS, extra=["--grace-period", "0.5"])
    job = _job(prefix, "ticker", sleep=0, timeout=60)
    job.args[0].inputs[0].data.root[0] = 60.0  # type: ignore[union-attr,index]
    _send(probe, prefix, job)
    with anyio.fail_after(10):
        while _pending(probe, prefix, "ticker") < 1:  # noqa: ASYNC110
            await anyio.sleep(0.01)
    worker.signal(signal.SIGTERM)
    assert await anyio.to_thread.run_sync(worker.wait, 20) == 0
    assert "worker.grace_expired" in worker.log()
    assert _pending(probe, prefix, "ticker") == 1
    assert not probe.exists(job.reply)


async def _sleeper(index: int, stopped: list[int]) -> None:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        stopped.append(index)
        raise


async def test_deadlines_stop_armed_jobs_in_time_order() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines()
    stopped: list[int] = []
    scopes = []
    for index, delay in enumerate([0.3, 0.1, 0.2, 0.05, 30.0]):
        scope = JobScope()
        scope.task = asyncio.ensure_future(_sleeper(index, stopped))
        scope.armed = True
        deadlines.add(loop, loop.time() + delay, scope, index)
        scopes.append(scope)
    scopes[2].armed = False  # ended before its deadline: left alone
    await asyncio.sleep(0.6)
    assert stopped == [3, 1, 0]
    assert all(scopes[i].reason == "deadline" for i in (0, 1, 3))
    assert scopes[2].reason is None
    assert scopes[4].reason is None
    deadlines.clear()
    for scope in scopes:
        assert scope.task is not None
        scope.task.cancel()
    await asyncio.wait([scope.task for scope in scopes if scope.task is not None])


async def test_deadlines_forget_ended_jobs() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines()
    for _ in range(5000):
        scope = JobScope()
        scope.armed = True
        deadlines.add(loop, loop.time() + 30, scope, 1)
        scope.armed = False  # the job ended
    assert len(deadlines) <= 67  # compacted as it went
    deadlines.clear()
