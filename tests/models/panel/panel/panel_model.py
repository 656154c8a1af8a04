"""Test model for the dashboard's model panel: batched (doubles its input), a whole batch fails
when a row is negative, and its settings hold secrets that must never be published."""

from conveyor import MLModel
from conveyor.codecs import NumpyCodec
from conveyor.types import InferenceRequest, InferenceResponse


class Panel(MLModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        if (x < 0).any():
            raise ValueError(f"negative input: {float(x.min()):g}")
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output("y", x * 2)]
        )
