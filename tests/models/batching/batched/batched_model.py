"""Test model for adaptive batching: doubles its input, reports the batch size it ran with,
and fails the whole call when any row is negative."""

import numpy as np

from conveyor import MLModel
from conveyor.codecs import NumpyCodec
from conveyor.types import InferenceRequest, InferenceResponse


class Batched(MLModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        if (x < 0).any():
            raise ValueError("negative input")
        rows = np.full((x.shape[0], 1), x.shape[0], dtype=np.int64)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("y", x * 2), NumpyCodec.encode_output("rows", rows)],
        )
