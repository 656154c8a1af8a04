"""Test model whose predict raises, and whose stream breaks after two chunks."""

from collections.abc import AsyncIterator

from conveyor import MLModel
from conveyor.types import InferenceRequest, InferenceResponse


class FailingModel(MLModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        raise ValueError(f"cannot handle {len(payload.inputs)} inputs")

    async def predict_stream(
        self, payloads: AsyncIterator[InferenceRequest]
    ) -> AsyncIterator[InferenceResponse]:
        yield InferenceResponse(model_name=self.name, outputs=[])
        yield InferenceResponse(model_name=self.name, outputs=[])
        raise RuntimeError("generator broke after 2 chunks")
