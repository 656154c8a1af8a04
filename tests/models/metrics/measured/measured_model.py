"""Test model: logs its own metrics (MLServer's custom-metrics API) and says which process ran.

``predict`` (a plain ``def``: it runs in a thread) logs ``measured_value`` = its input and
answers its pid; with the request parameters ``barrier`` (a folder) and ``parties`` it first
waits until that many processes have entered it (a file each), so that each of them runs a call.
``predict_stream`` (async) logs ``measured_chunks`` once per chunk.
"""

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

import conveyor
from conveyor import MLModel, metrics
from conveyor.types import InferenceRequest, InferenceResponse, ResponseOutput


class MeasuredModel(MLModel):
    async def load(self) -> bool:
        metrics.register("measured_value", "The value of each request")
        conveyor.log(measured_loads=1)
        return True

    def predict(self, payload: InferenceRequest) -> InferenceResponse:  # type: ignore[override]
        extra = (payload.parameters.model_extra or {}) if payload.parameters else {}
        if extra.get("barrier"):
            _rendezvous(Path(extra["barrier"]), int(extra["parties"]))
        value = float(np.asarray(payload.inputs[0].data).reshape(-1)[0])
        metrics.log(measured_value=value)
        return _answer(self.name, os.getpid())

    async def predict_stream(
        self, payloads: AsyncIterator[InferenceRequest]
    ) -> AsyncIterator[InferenceResponse]:
        async for _ in payloads:
            conveyor.log(measured_chunks=1)
            yield _answer(self.name, os.getpid())


def _answer(name: str, pid: int) -> InferenceResponse:
    output = ResponseOutput(name="pid", shape=[1], datatype="INT64", data=[pid])
    return InferenceResponse(model_name=name, outputs=[output])


def _rendezvous(folder: Path, parties: int) -> None:
    """Waits (10 s at most) until ``parties`` processes have entered: another process's
    arrival is a file, with no event to await across processes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + 10
    while len(list(folder.iterdir())) < parties and time.monotonic() < deadline:
        time.sleep(0.01)
