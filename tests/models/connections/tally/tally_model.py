"""Test model: echoes its input and records every run, so a test can count double runs.

Each run appends a line to the file named by ``TALLY_FILE`` (``p <value>`` for predict,
``s <value>`` for predict_stream): one O_APPEND write per line, whole even across processes.
A stream's chunks carry a token of their run, so a caller can tell two runs' chunks apart.
"""

import os
import uuid
from collections.abc import AsyncIterator

import anyio
import numpy as np

from conveyor import MLModel
from conveyor.types import InferenceRequest, InferenceResponse, ResponseOutput


def _record(kind: str, value: float) -> None:
    path = os.environ.get("TALLY_FILE")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{kind} {value!r}\n".encode())
        finally:
            os.close(fd)


def _value(payload: InferenceRequest) -> float:
    return float(np.asarray(payload.inputs[0].data.root).ravel()[0])


class Tally(MLModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        value = _value(payload)
        _record("p", value)
        await anyio.sleep(0.005)  # a little work, so calls overlap
        return InferenceResponse(
            model_name=self.name,
            outputs=[ResponseOutput(name="x", shape=[1], datatype="FP64", data=[value])],
        )

    async def predict_stream(
        self, payloads: AsyncIterator[InferenceRequest]
    ) -> AsyncIterator[InferenceResponse]:
        run = uuid.uuid4().hex
        async for payload in payloads:
            value = _value(payload)
            _record("s", value)
            for seq in range(5):
                await anyio.sleep(0.005)
                yield InferenceResponse(
                    model_name=self.name,
                    outputs=[
                        ResponseOutput(name="x", shape=[1], datatype="FP64", data=[value]),
                        ResponseOutput(name="seq", shape=[1], datatype="INT64", data=[seq]),
                        ResponseOutput(name="run", shape=[1], datatype="BYTES", data=[run]),
                    ],
                )
            break
