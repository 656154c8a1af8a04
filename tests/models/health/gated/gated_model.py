"""Test model: ``load()`` returns once the file named by ``parameters.extra.gate`` exists (the
test creates it), so the test sees the worker while it loads."""

import time
from pathlib import Path

from conveyor import MLModel
from conveyor.types import InferenceRequest, InferenceResponse


class GatedModel(MLModel):
    def load(self) -> bool:  # type: ignore[override]
        extra = self.settings.parameters.extra if self.settings.parameters else None
        gate = Path(str((extra or {})["gate"]))
        deadline = time.monotonic() + 20
        # another process's file: no event to await (polled, bounded; in a thread: a plain def)
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        return InferenceResponse(model_name=self.name, outputs=[])
