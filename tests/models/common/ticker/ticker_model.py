"""Test model: streams a tick every 20 ms until cancelled; predict sleeps as long as asked."""

from collections.abc import AsyncIterator

import anyio

from conveyor import MLModel
from conveyor.types import InferenceRequest, InferenceResponse, ResponseOutput


class Ticker(MLModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        await anyio.sleep(float(payload.inputs[0].data[0]))
        return InferenceResponse(model_name=self.name, outputs=[])

    async def predict_stream(
        self, payloads: AsyncIterator[InferenceRequest]
    ) -> AsyncIterator[InferenceResponse]:
        async for _ in payloads:
            break
        for tick in range(100_000):
            await anyio.sleep(0.02)
            yield InferenceResponse(
                model_name=self.name,
                outputs=[ResponseOutput(name="tick", shape=[1], datatype="INT64", data=[tick])],
            )
