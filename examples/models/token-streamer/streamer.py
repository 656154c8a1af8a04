"""A token-streaming generator: each input prompt comes back word by word, as it is made."""

from collections.abc import AsyncIterator

from conveyor import MLModel
from conveyor.codecs import StringCodec
from conveyor.types import InferenceRequest, InferenceResponse


class TokenStreamer(MLModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        words = StringCodec.decode_input(payload.inputs[0])
        return self._response(" ".join(words).upper())

    async def predict_stream(
        self, payloads: AsyncIterator[InferenceRequest]
    ) -> AsyncIterator[InferenceResponse]:
        async for payload in payloads:
            for prompt in StringCodec.decode_input(payload.inputs[0]):
                for word in prompt.split():
                    yield self._response(word.upper())

    def _response(self, text: str) -> InferenceResponse:
        return InferenceResponse(
            model_name=self.name, outputs=[StringCodec.encode_output("token", [text])]
        )
