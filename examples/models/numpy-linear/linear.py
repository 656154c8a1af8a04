"""A linear model y = x @ W + b whose weights load from a file in its folder."""

import json
from pathlib import Path

import numpy as np

from conveyor import MLModel
from conveyor.codecs import NumpyCodec
from conveyor.types import InferenceRequest, InferenceResponse


class LinearModel(MLModel):
    async def load(self) -> bool:
        # `uri` is resolved against the model folder, as MLServer does.
        weights = json.loads(Path(self.settings.parameters.uri).read_text())  # noqa: ASYNC240
        self._weights = np.asarray(weights["weights"], dtype=np.float32)
        self._bias = np.asarray(weights["bias"], dtype=np.float32)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).reshape(-1, self._weights.shape[0])
        y = x.astype(np.float32) @ self._weights + self._bias
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output("y", y)],
        )
