"""Test model for tests/test_security.py: counts each call of a method, in marker files.

Every call of ``load``, ``unload``, ``_private`` and ``not_exposed`` appends a line to
``$CONVEYOR_TEST_MARKERS/<method>`` (when that variable is set), so a test can show that a
client's job never reached a method the model does not expose.
"""

import os
from pathlib import Path

from conveyor import MLModel
from conveyor.types import InferenceRequest, InferenceResponse, ResponseOutput


def _record(method: str) -> None:
    directory = os.environ.get("CONVEYOR_TEST_MARKERS")
    if directory:
        with open(Path(directory) / method, "a", encoding="utf-8") as marker:
            marker.write(f"{os.getpid()}\n")


class GuardedModel(MLModel):
    async def load(self) -> bool:
        _record("load")
        return True

    async def unload(self) -> bool:
        _record("unload")
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[ResponseOutput(name="served", shape=[1], datatype="BOOL", data=[True])],
        )

    async def _private(self) -> str:
        _record("_private")
        return "a private method ran"

    async def not_exposed(self) -> str:
        _record("not_exposed")
        return "an unexposed method ran"
