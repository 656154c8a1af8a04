"""Benchmark model: a CPU stand-in for a model on a device. A plain ``def predict`` that holds the
GIL for a fixed cost per call plus a smaller cost per row, as tokenization and kernel launches
do for a model whose arithmetic runs on a GPU: ``parameters.extra.call_loops`` and
``row_loops`` turns of a pure-Python loop (``bench.device`` calibrates them to milliseconds on
the machine it runs on). The input ``x`` is FP32 of shape [N, 1]; the output ``y`` echoes it, so
adaptive batching can merge requests along axis 0 and split the answers back."""

from conveyor import MLModel
from conveyor.codecs import NumpyCodec
from conveyor.types import InferenceRequest, InferenceResponse


class DeviceModel(MLModel):
    def load(self) -> bool:  # type: ignore[override]
        parameters = self.settings.parameters
        extra = (parameters.extra if parameters is not None else None) or {}
        self.call_loops = int(extra.get("call_loops", 30_000))
        self.row_loops = int(extra.get("row_loops", 3_000))
        return True

    def predict(self, payload: InferenceRequest) -> InferenceResponse:  # type: ignore[override]
        x = NumpyCodec.decode_input(payload.inputs[0])
        total = 0
        for i in range(self.call_loops + self.row_loops * x.shape[0]):
            total += i * i % 7
        return InferenceResponse(
            model_name=self.name, id=payload.id, outputs=[NumpyCodec.encode_output("y", x)]
        )
