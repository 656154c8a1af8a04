"""Benchmark model: a plain ``def predict`` that spends about 2 ms of CPU in Python per call.

Python code holds the GIL, so one worker process runs one such call at a time: the case
where more worker processes (on more cores) are what buys throughput.
"""

from conveyor import MLModel
from conveyor.types import InferenceRequest, InferenceResponse, ResponseOutput

_LOOPS = 30_000  # ~2 ms of CPython 3.11 on the development machine


class CpuModel(MLModel):
    def predict(self, payload: InferenceRequest) -> InferenceResponse:
        total = 0
        for i in range(_LOOPS):
            total += i * i % 7
        return InferenceResponse(
            model_name=self.name,
            outputs=[ResponseOutput(name="total", shape=[1], datatype="INT64", data=[total])],
        )
