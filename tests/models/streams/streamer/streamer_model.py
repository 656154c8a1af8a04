"""Test model: a slow ``predict_stream`` whose chunks say which process wrote them.

The first request's parameters set the pace: ``chunks`` (default 50), ``interval`` seconds
between chunks (default 0.1) and ``first_delay`` seconds before the first one (default 0).
Chunk ``i`` has the outputs ``index`` = i and ``pid`` = the worker's process id.
"""

import os
from collections.abc import AsyncIterator

import anyio

from conveyor import MLModel
from conveyor.types import InferenceRequest, InferenceResponse, ResponseOutput


class Streamer(MLModel):
    async def predict_stream(
        self, payloads: AsyncIterator[InferenceRequest]
    ) -> AsyncIterator[InferenceResponse]:
        params: dict[str, object] = {}
        async for payload in payloads:
            params = (payload.parameters.model_extra or {}) if payload.parameters else {}
            break
        chunks = int(str(params.get("chunks", 50)))
        interval = float(str(params.get("interval", 0.1)))
        await anyio.sleep(float(str(params.get("first_delay", 0.0))))
        for index in range(chunks):
            if index:
                await anyio.sleep(interval)
            yield InferenceResponse(
                model_name=self.name,
                outputs=[
                    ResponseOutput(name="index", shape=[1], datatype="INT64", data=[index]),
                    ResponseOutput(name="pid", shape=[1], datatype="INT64", data=[os.getpid()]),
                ],
            )
