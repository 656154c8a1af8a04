"""Test model that accepts payloads of at most 4 KiB."""

from conveyor import MLModel
from conveyor.types import InferenceRequest, InferenceResponse


class SmallLimit(MLModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        return InferenceResponse(model_name=self.name, outputs=[])
