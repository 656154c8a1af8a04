"""Test model for adaptive batching of text: upper-cases each sentence of its BYTES input
``text`` and reports the batch size it ran with. A plain ``def``, as a tokenizer-bound model is."""

import numpy as np

from conveyor import MLModel
from conveyor.codecs import NumpyCodec, StringCodec
from conveyor.types import InferenceRequest, InferenceResponse


class BatchedText(MLModel):
    def predict(self, payload: InferenceRequest) -> InferenceResponse:  # type: ignore[override]
        sentences = StringCodec.decode_input(payload.inputs[0])
        rows = np.full((len(sentences), 1), len(sentences), dtype=np.int64)
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                StringCodec.encode_output("upper", [s.upper() for s in sentences]),
                NumpyCodec.encode_output("rows", rows),
            ],
        )
