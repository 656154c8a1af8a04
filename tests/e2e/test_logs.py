"""Logs: one line per event with its fields; `--log-format json` for collectors."""

from __future__ import annotations

import json
import logging

import anyio
import numpy as np
import pytest

from conveyor.cli.logs import JsonFormatter
from conveyor.client import Client
from conveyor.errors import RemoteError
from conveyor.types import InferenceRequest, RequestInput
from tests.support.fleet import MODELS, Fleet


def test_json_formatter_turns_event_fields_into_keys() -> None:
    record = logging.LogRecord(
        "conveyor.worker",
        logging.INFO,
        __file__,
        1,
        "job.failed request=%s model=%s",
        ("r1", "m"),
        None,
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["event"] == "job.failed"
    assert entry["request"] == "r1"
    assert entry["model"] == "m"
    assert entry["level"] == "info"
    assert entry["logger"] == "conveyor.worker"


@pytest.mark.anyio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_worker_logs_json_lines_with_request_model_and_worker(
    fleet: Fleet, redis_url: str, prefix: str
) -> None:
    worker = fleet.start(MODELS, extra=["--log-format", "json"])
    async with Client(redis_url, prefix=prefix, timeout=20) as client:
        data = np.zeros(1, "f4")
        request = InferenceRequest(
            inputs=[RequestInput(name="x", shape=[1], datatype="FP32", data=data)]
        )
        with pytest.raises(RemoteError) as caught:
            await client.model("fails").predict(request)
    request_id = caught.value.request_id
    line = await anyio.to_thread.run_sync(worker.wait_for_log, '"event": "job.failed"')
    started = json.loads(worker.wait_for_log('"event": "worker.started"'))
    assert started["level"] == "info"
    entry = json.loads(line)
    assert entry["request"] == request_id
    assert entry["model"] == "fails"
    assert entry["worker"] == started["worker"]
    assert all(json.loads(text) for text in worker.lines if text.startswith("{"))
