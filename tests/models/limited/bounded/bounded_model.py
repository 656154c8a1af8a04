"""Test model with a queue limit of 3; predict sleeps as long as asked."""

import anyio

from conveyor import MLModel
from conveyor.types import InferenceRequest, InferenceResponse


class Bounded(MLModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        await anyio.sleep(float(payload.inputs[0].data[0]))
        return InferenceResponse(model_name=self.name, outputs=[])
