"""Benchmark model: ``predict_stream`` yields N tiny chunks, N being the first request's input."""

from collections.abc import AsyncIterator

from conveyor import MLModel
from conveyor.types import InferenceRequest, InferenceResponse, ResponseOutput


class ChunksModel(MLModel):
    async def predict_stream(
        self, payloads: AsyncIterator[InferenceRequest]
    ) -> AsyncIterator[InferenceResponse]:
        count = 0
        async for payload in payloads:
            count = int(payload.inputs[0].data[0])
            break
        for i in range(count):
            yield InferenceResponse(
                model_name=self.name,
                outputs=[ResponseOutput(name="i", shape=[1], datatype="INT64", data=[i])],
            )
