"""Test models that count the calls inside one instance at once.

Each answer carries ``peak`` (the most calls this instance has seen inside it at once, this
one included) and ``pid`` (the worker process). With ``parameters.extra.wait_for`` N, a call
waits (at most 10 s) until N calls are inside together before it leaves, so a test sees
N calls at once for certain when the worker lets them in, without timing. Otherwise a call
stays inside ``hold_s`` seconds (the request's parameter, else ``extra.hold_s``, else 20 ms).
"""

import asyncio
import contextlib
import os
import threading
import time
from typing import Any

from conveyor import MLModel
from conveyor.types import InferenceRequest, InferenceResponse, ResponseOutput

_WAIT_S = 10.0  # bound on a call's wait for its company: a worker that never lets it in


def _answer(model: MLModel, payload: InferenceRequest, peak: int) -> InferenceResponse:
    return InferenceResponse(
        model_name=model.name,
        id=payload.id,
        outputs=[
            ResponseOutput(name="peak", shape=[1], datatype="INT64", data=[peak]),
            ResponseOutput(name="pid", shape=[1], datatype="INT64", data=[os.getpid()]),
        ],
    )


def _extra(model: MLModel) -> dict[str, Any]:
    parameters = model.settings.parameters
    return (parameters.extra if parameters is not None else None) or {}


class InsideModel(MLModel):
    """Plain ``def predict``: the worker runs it in a thread."""

    def load(self) -> bool:  # type: ignore[override]
        self._inside = 0
        self._peak = 0
        self._changed = threading.Condition()
        extra = _extra(self)
        self._wait_for = int(extra.get("wait_for", 0))
        self._hold_s = float(extra.get("hold_s", 0.02))
        return True

    def predict(self, payload: InferenceRequest) -> InferenceResponse:  # type: ignore[override]
        with self._changed:
            self._inside += 1
            self._peak = max(self._peak, self._inside)
            self._changed.notify_all()
            if self._wait_for:
                self._changed.wait_for(lambda: self._peak >= self._wait_for, _WAIT_S)
        if not self._wait_for:
            asked = (payload.parameters.model_extra or {}) if payload.parameters else {}
            # inside long enough for others to come in, if let
            time.sleep(float(asked.get("hold_s", self._hold_s)))
        with self._changed:
            self._inside -= 1
            return _answer(self, payload, self._peak)


class GatheringModel(MLModel):
    """``async def predict``: awaited on the worker's loop."""

    async def load(self) -> bool:
        self._inside = 0
        self._peak = 0
        self._changed = asyncio.Condition()
        self._wait_for = int(_extra(self).get("wait_for", 0))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        async with self._changed:
            self._inside += 1
            self._peak = max(self._peak, self._inside)
            self._changed.notify_all()
            waited = self._changed.wait_for(lambda: self._peak >= self._wait_for)
            with contextlib.suppress(TimeoutError):  # alone after all: answer anyway
                await asyncio.wait_for(waited, _WAIT_S)
            self._inside -= 1
            return _answer(self, payload, self._peak)
