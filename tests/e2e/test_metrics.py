"""Prometheus metrics of a worker (scraped over HTTP) and of a client, after known traffic."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import AsyncIterator

import anyio
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conveyor.client import Client
from conveyor.errors import RemoteError
from conveyor.types import InferenceRequest
from tests.support.calls import request
from tests.support.fleet import MODELS, Fleet

IN_FLIGHT = ("conveyor_worker_jobs_in_flight", ())

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return samples(response.read().decode())


def scrape_settled(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Scrape once the worker has finished its jobs. A caller gets its answer before the worker
    counts the job done (its answer is stored first, then counted, when it leaves the in-flight
    gauge: tests/e2e/test_in_flight_gauge.py), and nothing signals that moment to the test:
    poll under a deadline."""
    deadline = time.monotonic() + 10
    while True:
        found = scrape(port)
        if found.get(IN_FLIGHT, 1.0) == 0 or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.mark.timeout(60)
async def test_worker_and_client_metrics_after_known_traffic(
    fleet: Fleet, redis_url: str, prefix: str
) -> None:
    port = fleet.start(MODELS, extra=["--metrics-port", "0"]).metrics_port()
    async with Client(redis_url, prefix=prefix, timeout=20) as client:
        for i in range(5):
            await client.model("echo").predict(request(float(i)))
        with pytest.raises(RemoteError):
            await client.model("fails").predict(request(0.0))

        async def one() -> AsyncIterator[InferenceRequest]:
            yield request(1.0)

        chunks = [c async for c in client.model("echo").predict_stream(one())]
        assert len(chunks) == 1
        mine = samples(generate_latest(client.metrics.registry).decode())
    worker = await anyio.to_thread.run_sync(scrape_settled, port)

    def jobs(model: str, method: str, outcome: str) -> float:
        labels = (("method", method), ("model", model), ("outcome", outcome))
        return worker.get(("conveyor_worker_jobs_total", labels), 0.0)

    assert jobs("echo", "predict", "ok") == 5
    assert jobs("fails", "predict", "error") == 1
    assert jobs("echo", "predict_stream", "ok") == 1
    latency = ("conveyor_worker_job_seconds_count", (("method", "predict"), ("model", "echo")))
    assert worker[latency] == 5
    assert worker[("conveyor_worker_queue_wait_seconds_count", (("model", "echo"),))] == 6
    assert worker[IN_FLIGHT] == 0

    def calls(model: str, method: str, outcome: str) -> float:
        labels = (("method", method), ("model", model), ("outcome", outcome))
        return mine.get(("conveyor_client_calls_total", labels), 0.0)

    assert calls("echo", "predict", "ok") == 5
    assert calls("fails", "predict", "RemoteError") == 1
    assert calls("echo", "predict_stream", "ok") == 1
    assert mine[("conveyor_client_calls_in_flight", ())] == 0
