"""The dashboard's model panel over HTTP (httpx), with a real worker subprocess and a real
Redis: a model's document shows the settings it was loaded with (its secrets redacted), a
failing call's error message among its recent errors, and, with adaptive batching, its batch
sizes, queue wait and run time. Waits read the event stream, never a sleep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from conveyor.client import Client
from conveyor.errors import RemoteError
from conveyor.types import InferenceRequest, RequestInput
from tests.e2e.test_dashboard import Dashboard, _model
from tests.support.fleet import Fleet

PANEL = Path(__file__).parents[1] / "models" / "panel"
SECRETS = (b"tok-never-shown", b"pw-never-shown")


def request(value: float) -> InferenceRequest:
    return InferenceRequest(
        inputs=[RequestInput(name="x", shape=[1, 1], datatype="FP32", data=[value])]
    )


async def calls(redis_url: str, prefix: str) -> str:
    """16 calls at once (batched), then one that fails; returns the failed one's request id."""
    async with Client(redis_url, prefix=prefix, timeout=20) as client:
        model = client.model("panel")
        async with anyio.create_task_group() as group:
            for i in range(16):
                group.start_soon(model.predict, request(float(i)))
        with pytest.raises(RemoteError, match="negative input: -1") as failed:
            await model.predict(request(-1.0))
    assert failed.value.request_id
    return failed.value.request_id


@pytest.mark.timeout(60)
def test_the_model_document_has_settings_recent_errors_and_batches(
    redis_url: str, prefix: str, fleet: Fleet
) -> None:
    fleet.start(PANEL)
    board = Dashboard(redis_url, prefix)
    fleet.workers.append(board)
    failed_id = anyio.run(calls, redis_url, prefix)

    def seen(document: dict[str, Any]) -> bool:
        panel = _model(document, "panel")
        return bool(panel and panel["errors_last_minute"] and panel["batch_mean"])

    pushed = _model(board.wait_for(seen, "the failed call and the batches"), "panel")
    assert pushed is not None
    # pushed with each snapshot: the page draws them over time
    assert pushed["calls_per_s"] > 0
    assert 1 <= pushed["batch_mean"] <= 8
    assert pushed["batches_per_s"] > 0
    for figure in ("p50_s", "p99_s", "wait_p50_s", "wait_p99_s", "run_p50_s", "run_p99_s"):
        assert pushed[figure] is not None, figure

    response = board.get("/api/models/panel")
    assert response.status_code == 200
    doc = response.json()
    [loaded] = doc["settings"]
    assert loaded["version"] == "v3"
    assert len(loaded["workers"]) == 1
    values = loaded["values"]
    assert values["implementation"] == "panel_model.Panel"
    assert (values["max_batch_size"], values["max_batch_time"]) == (8, 0.05)
    extra = values["parameters"]["extra"]
    assert extra["threshold"] == 0.5
    assert extra["api_token"] == "<redacted>"
    assert extra["store"] == {"url": "redis://cache:6379", "password": "<redacted>"}
    [error] = [e for e in doc["recent_errors"] if e["request_id"] == failed_id]
    assert error["kind"] == "model_error"
    assert error["type"] == "ValueError"
    assert error["message"] == "negative input: -1"
    assert error["worker"] == loaded["workers"][0]
    assert 0 <= error["age_s"] < 60
    for body in board.bodies:
        for secret in SECRETS:
            assert secret not in body
