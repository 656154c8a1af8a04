"""A batched model that stands in for a device (a GPU): each call sleeps a fixed time plus a
little per row, releasing the GIL as a device's kernels do, so several worker processes can
share the "device" without sharing a CPU. A request parameter ``hold_s`` makes its batch's
call that long instead (requests with other parameters never share a batch). Each answer
carries ``rows`` (the size of the batch it ran in) and ``pid`` (the worker process), from
which a test reads the mean batch and each process's share of the work."""

import os
import time

import numpy as np

from conveyor import MLModel
from conveyor.codecs import NumpyCodec
from conveyor.types import InferenceRequest, InferenceResponse

_PER_CALL_S = 0.02
_PER_ROW_S = 0.00005


class Device(MLModel):
    def predict(self, payload: InferenceRequest) -> InferenceResponse:  # type: ignore[override]
        x = NumpyCodec.decode_input(payload.inputs[0])
        rows = x.shape[0]
        asked = (payload.parameters.model_extra or {}) if payload.parameters else {}
        time.sleep(float(asked.get("hold_s", _PER_CALL_S + _PER_ROW_S * rows)))
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                NumpyCodec.encode_output("rows", np.full((rows, 1), rows, dtype=np.int64)),
                NumpyCodec.encode_output("pid", np.full((rows, 1), os.getpid(), dtype=np.int64)),
            ],
        )
