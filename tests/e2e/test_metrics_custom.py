"""Models' own metrics (MLServer's ``register`` / ``log``) on the worker's metrics endpoint."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conveyor.client import Client
from conveyor.types import InferenceRequest
from tests.support.calls import request
from tests.support.fleet import Fleet

MEASURED = Path(__file__).parents[1] / "models" / "metrics"
LABELS = (("model_name", "measured"), ("model_version", "v2"))

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def answered(found: Samples) -> bool:
    """Every job's answer stored: the worker counts a job once its answer is, a moment after
    the caller has it."""
    return found.get(("conveyor_worker_jobs_in_flight", ()), 1.0) == 0


@pytest.mark.timeout(30)
async def test_a_models_logged_values_show_with_its_name_and_version(
    fleet: Fleet, redis_url: str, prefix: str
) -> None:
    port = fleet.start(MEASURED, extra=["--metrics-port", "0"]).metrics_port()
    async with Client(redis_url, prefix=prefix, timeout=20) as client:
        model = client.model("measured")
        await model.predict(request(2.0))
        await model.predict(request(3.0))

        async def two() -> AsyncIterator[InferenceRequest]:
            yield request(1.0)
            yield request(1.0)

        assert len([chunk async for chunk in model.predict_stream(two())]) == 2
    found = await anyio.to_thread.run_sync(lambda: scrape_until(port, answered))
    assert found[("measured_value_count", LABELS)] == 2  # from a plain def, in a thread
    assert found[("measured_value_sum", LABELS)] == 5.0
    assert found[("measured_loads_count", LABELS)] == 1  # logged in load()
    assert found[("measured_chunks_count", LABELS)] == 2  # from an async generator
    run = (("method", "predict"), ("model", "measured"), ("version", "v2"))
    assert found[("conveyor_worker_run_seconds_count", run)] == 2
    reply = ("conveyor_worker_reply_seconds_count", (("method", "predict"), ("model", "measured")))
    assert found.get(reply) == 2  # the call's end, marked on each job's timing


def scrape_until(port: int, wanted: Callable[[Samples], bool]) -> Samples:
    """Scrapes until ``wanted`` holds (10 s at most): a process writes its loop's histograms
    to the shared files once a second, and no event says it did."""
    deadline = time.monotonic() + 10
    while True:
        found = scrape(port)
        if wanted(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.mark.timeout(40)
async def test_two_processes_one_endpoint_sums_both_processes_values(
    fleet: Fleet, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    # one job at a time each: a process inside the barrier leaves the other job to the other
    extra = ["--processes", "2", "--concurrency", "1", "--metrics-port", "0"]
    supervisor = fleet.start(MEASURED, extra=extra, wait=False)
    await anyio.to_thread.run_sync(
        lambda: supervisor.output.wait(
            lambda lines: sum("worker.started" in line for line in lines) >= 2 or None,
            "two worker.started lines",
            30,
        )
    )
    port = supervisor.metrics_port()  # the supervisor's line, logged before its children start
    barrier = str(tmp_path / "barrier")
    pids = []
    async with Client(redis_url, prefix=prefix, timeout=20) as client:
        model = client.model("measured")

        async def call(value: float) -> None:
            response = await model.predict(request(value, barrier=barrier, parties=2))
            pids.append(int(np.asarray(response.outputs[0].data).reshape(-1)[0]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, 2.0)
            tg.start_soon(call, 3.0)
    assert len(set(pids)) == 2, pids  # each process ran one
    ok = (("method", "predict"), ("model", "measured"), ("outcome", "ok"))
    run = (("method", "predict"), ("model", "measured"), ("version", "v2"))
    expected = {
        ("measured_value_count", LABELS): 2,
        ("measured_value_sum", LABELS): 5.0,
        ("measured_loads_count", LABELS): 2,  # each process's load()
        ("conveyor_worker_jobs_total", ok): 2,
        ("conveyor_worker_queue_wait_seconds_count", (("model", "measured"),)): 2,
        ("conveyor_worker_run_seconds_count", run): 2,
        ("conveyor_worker_jobs_in_flight", ()): 0,
    }

    def settled(found: Samples) -> bool:
        # each process writes its histograms and its gauge once a second: one may have
        # written its job's queue wait, taken at its start, but not yet its run
        return all(found.get(key) == value for key, value in expected.items())

    found = await anyio.to_thread.run_sync(lambda: scrape_until(port, settled))
    assert {key: found.get(key) for key in expected} == expected
