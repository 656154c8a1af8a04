"""Test model with plain `def` methods: reports which worker process answered."""

import os
import time

from conveyor import MLModel
from conveyor.types import InferenceRequest, InferenceResponse, ResponseOutput


class CounterModel(MLModel):
    def predict(self, payload: InferenceRequest) -> InferenceResponse:  # type: ignore[override]
        extra = (payload.parameters.model_extra or {}) if payload.parameters else {}
        if extra.get("sleep"):
            time.sleep(float(extra["sleep"]))
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[ResponseOutput(name="pid", shape=[1], datatype="INT64", data=[os.getpid()])],
        )
