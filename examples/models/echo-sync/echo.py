"""A model written with plain ``def`` methods: the worker runs them in a thread pool."""

import time

from conveyor import MLModel, custom_handler
from conveyor.types import InferenceRequest, InferenceResponse, ResponseOutput


class EchoModel(MLModel):
    def load(self) -> bool:  # type: ignore[override]
        self.calls = 0
        return True

    def predict(self, payload: InferenceRequest) -> InferenceResponse:  # type: ignore[override]
        self.calls += 1
        delay = (
            float((payload.parameters.model_extra or {}).get("sleep", 0))
            if payload.parameters
            else 0.0
        )
        if delay:
            time.sleep(delay)  # a blocking model: it never stalls the worker's loop
        outputs = [
            ResponseOutput(name=i.name, shape=i.shape, datatype=i.datatype, data=i.data)
            for i in payload.inputs
        ]
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=outputs)

    @custom_handler(rest_path="/stats")
    def stats(self) -> dict[str, int]:
        return {"calls": self.calls}
