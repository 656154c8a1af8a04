"""Models' own metrics (MLServer's ``register`` / ``log``) on the worker's metrics endpoint."""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conveyor.client import Client
from conveyor.embedded import free_port
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


@pytest.mark.timeout(30)
async def test_a_models_logged_values_show_with_its_name_and_version(
    fleet: Fleet, redis_url: str, prefix: str
) -> None:
    port = free_port()
    fleet.start(MEASURED, extra=["--metrics-port", str(port)])
    async with Client(redis_url, prefix=prefix, timeout=20) as client:
        model = client.model("measured")
        await model.predict(request(2.0))
        await model.predict(request(3.0))

        async def two() -> AsyncIterator[InferenceRequest]:
            yield request(1.0)
            yield request(1.0)

        assert len([chunk async for chunk in model.predict_stream(two())]) == 2
    found = await anyio.to_thread.run_sync(scrape, port)
    assert found[("measured_value_count", LABELS)] == 2  # from a plain def, in a thread
    assert found[("measured_value_sum", LABELS)] == 5.0
    assert found[("measured_loads_count", LABELS)] == 1  # logged in load()
    assert found[("measured_chunks_count", LABELS)] == 2  # from an async generator
    run = (("method", "predict"), ("model", "measured"), ("version", "v2"))
    assert found[("conveyor_worker_run_seconds_count", run)] == 2
