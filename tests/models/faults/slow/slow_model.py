"""Test model for fault injection: takes its time in one of three ways, then answers with
the pid of the worker process that ran it and the inputs it was given.

Request parameters (seconds):

- ``sleep``: ``await anyio.sleep`` (the event loop keeps running);
- ``spin``: a pure-Python busy loop inside ``async def``: blocks the event loop and holds
  the GIL except at the interpreter's switch interval;
- ``block``: ``time.sleep`` inside ``async def``: blocks the event loop (GIL released).
"""

import os
import time

import anyio

from conveyor import MLModel
from conveyor.types import InferenceRequest, InferenceResponse, ResponseOutput


class SlowModel(MLModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        extra = (payload.parameters.model_extra or {}) if payload.parameters else {}
        if extra.get("sleep"):
            await anyio.sleep(float(extra["sleep"]))
        if extra.get("spin"):
            end = time.monotonic() + float(extra["spin"])
            while time.monotonic() < end:
                pass
        if extra.get("block"):
            time.sleep(float(extra["block"]))  # noqa: ASYNC251  # blocking on purpose
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[
                ResponseOutput(name="pid", shape=[1], datatype="INT64", data=[os.getpid()]),
                *(
                    ResponseOutput(name=i.name, shape=i.shape, datatype=i.datatype, data=i.data)
                    for i in payload.inputs
                ),
            ],
        )
