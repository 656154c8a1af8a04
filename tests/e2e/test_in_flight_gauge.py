"""The worker's in-flight gauge and its job counts agree at every turn of its loop: a job
leaves the gauge only once it is counted done, so a scrape that sees no job in flight sees
every job counted (``tests/e2e/test_metrics.scrape_settled`` waits on that). A worker runs
in this process, and a watcher checks each loop turn while real callers go through Redis."""

from __future__ import annotations

import asyncio

import anyio
import numpy as np
import pytest

from conveyor import MLModel
from conveyor.client import Client
from conveyor.codecs import NumpyCodec
from conveyor.settings import ModelSettings
from conveyor.types import InferenceRequest, InferenceResponse
from conveyor.worker import Worker
from tests.support.in_process import in_process_worker

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

CALLS = 40


class Echo(MLModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("y", x)])


MODELS = [
    ModelSettings(name="alone", implementation=Echo),
    ModelSettings(name="batched", implementation=Echo, max_batch_size=8, max_batch_time=0.01),
]


def _counted(worker: Worker) -> float:
    registry = worker.metrics.registry
    return sum(
        registry.get_sample_value(
            "conveyor_worker_jobs_total",
            {"model": model, "method": "predict", "outcome": "ok"},
        )
        or 0.0
        for model in ("alone", "batched")
    )


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the worker's loop
@pytest.mark.parametrize("model", ["alone", "batched"])
async def test_a_job_leaves_the_gauge_only_once_counted(
    redis_url: str, prefix: str, model: str
) -> None:
    async with in_process_worker(redis_url, prefix, MODELS, concurrency=16) as worker:
        await _check_the_gauge(worker, redis_url, prefix, model)


async def _check_the_gauge(worker: Worker, redis_url: str, prefix: str, model: str) -> None:
    registry = worker.metrics.registry
    seen: set[bytes] = set()  # every job the worker took (a job stays held for a round trip)
    broken: list[str] = []
    done = anyio.Event()

    async def watch() -> None:
        while not done.is_set():
            seen.update(worker.stats.in_flight)
            gauge = registry.get_sample_value("conveyor_worker_jobs_in_flight") or 0.0
            counted = _counted(worker)
            if gauge + counted != len(seen):
                broken.append(f"in flight {gauge:g} + counted {counted:g} != taken {len(seen)}")
            await asyncio.sleep(0)  # each loop turn

    before = _counted(worker)
    client = Client(redis_url, prefix=prefix, timeout=20)
    async with client, anyio.create_task_group() as tg:
        tg.start_soon(watch)
        handle = client.model(model)

        async def call(i: int) -> None:
            x = np.array([[float(i)]], dtype=np.float32)
            request = InferenceRequest(inputs=[NumpyCodec.encode_input("x", x)])
            await handle.predict(request)

        async with anyio.create_task_group() as callers:
            for i in range(CALLS):
                callers.start_soon(call, i)
        with anyio.fail_after(10):  # the last acks
            while worker.stats.in_flight:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        done.set()
    assert before == 0
    assert _counted(worker) == len(seen) == CALLS
    assert broken == []
