"""Benchmark model: a stand-in for a blocking model, a plain ``def predict`` that holds the GIL
for a fixed cost per call (a pure-Python loop, ``parameters.extra.loops`` turns; the benchmark
sets it to about 2 ms on the machine it runs on) and answers with its process id."""

import os

from conveyor import MLModel
from conveyor.types import InferenceRequest, InferenceResponse, ResponseOutput


class BlockingModel(MLModel):
    def load(self) -> bool:  # type: ignore[override]
        parameters = self.settings.parameters
        extra = (parameters.extra if parameters is not None else None) or {}
        self.loops = int(extra.get("loops", 30_000))
        return True

    def predict(self, payload: InferenceRequest) -> InferenceResponse:  # type: ignore[override]
        total = 0
        for i in range(self.loops):
            total += i * i % 7
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[
                ResponseOutput(name="total", shape=[1], datatype="INT64", data=[total]),
                ResponseOutput(name="pid", shape=[1], datatype="INT64", data=[os.getpid()]),
            ],
        )
