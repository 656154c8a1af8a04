"""Benchmark model: a no-op. Each request is answered with an empty response."""

from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse


class NoopModel(MLModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        return InferenceResponse(model_name=self.name, outputs=[])
