"""Test model: answers each request with its inputs; streams each input back as a chunk."""

from collections.abc import AsyncIterator

import anyio

from conveyor import MLModel, custom_handler
from conveyor.types import InferenceRequest, InferenceResponse, ResponseOutput


class EchoModel(MLModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        extra = (payload.parameters.model_extra or {}) if payload.parameters else {}
        if extra.get("sleep"):
            await anyio.sleep(float(extra["sleep"]))
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                ResponseOutput(name=i.name, shape=i.shape, datatype=i.datatype, data=i.data)
                for i in payload.inputs
            ],
        )

    async def predict_stream(
        self, payloads: AsyncIterator[InferenceRequest]
    ) -> AsyncIterator[InferenceResponse]:
        async for payload in payloads:
            yield await self.predict(payload)

    @custom_handler(rest_path="/add")
    async def add(self, a: int, b: int = 0) -> dict[str, int]:
        return {"sum": a + b}

    async def not_exposed(self) -> str:
        return "should never run"
