"""Benchmark model whose cost is per call, not per row: batching can pay off.

It stands for a device that runs one call at a time with a fixed cost per call (a GPU
kernel launch, a remote service round trip): calls take turns on a lock, each holds it for
``call_ms`` (default 5 ms; a sleep, so the model itself uses no CPU), plus a small matrix
multiply of its rows (``y = x @ w``, ``w`` twice the identity: each row comes back doubled).
A float32 input ``x`` of shape [N, D] gives a float32 output ``y`` of shape [N, D].
"""

from typing import Any

import anyio
import numpy as np

from conveyor import MLModel
from conveyor.codecs import NumpyCodec
from conveyor.types import InferenceRequest, InferenceResponse


class PerCallModel(MLModel):
    async def load(self) -> bool:
        extra: dict[str, Any] = (self.settings.parameters and self.settings.parameters.extra) or {}
        self.call_seconds = float(extra.get("call_ms", 5.0)) / 1e3
        self._lock = anyio.Lock()
        self._weights: dict[int, np.ndarray] = {}
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        if x.ndim != 2 or x.dtype != np.float32:
            raise ValueError(f"expected a float32 input of shape [N, D], got {x.dtype} {x.shape}")
        w = self._weights.get(x.shape[1])
        if w is None:
            w = self._weights[x.shape[1]] = np.eye(x.shape[1], dtype=np.float32) * 2
        async with self._lock:
            await anyio.sleep(self.call_seconds)
            y = x @ w
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("y", y)])
