"""A plain ``def predict`` that holds the GIL (``busy_ms`` of its thread's CPU, a request
parameter) or releases it (``sleep_ms``), and answers whether it ran on the worker's main
thread (the event loop's: ``worker.inline_calls``) as ``on_loop``, and the most calls it saw
inside at once as ``peak``. With ``fail_on_loop`` it raises when called on that thread. With
``asyncio_run`` it runs a coroutine of its own with ``asyncio.run()``, as a sync wrapper over an
async library does: that works in a thread, and must work on the loop too."""

import asyncio
import threading
import time

from conveyor import MLModel
from conveyor.types import InferenceRequest, InferenceResponse, ResponseOutput


class BusyModel(MLModel):
    def load(self) -> bool:  # type: ignore[override]
        self._inside = 0
        self._peak = 0
        self._lock = threading.Lock()
        return True

    def predict(self, payload: InferenceRequest) -> InferenceResponse:  # type: ignore[override]
        with self._lock:
            self._inside += 1
            self._peak = max(self._peak, self._inside)
        asked = (payload.parameters.model_extra or {}) if payload.parameters else {}
        busy_s = float(asked.get("busy_ms", 0.0)) / 1e3
        started = time.thread_time()
        while time.thread_time() - started < busy_s:  # Python holding the GIL
            pass
        time.sleep(float(asked.get("sleep_ms", 0.0)) / 1e3)  # released meanwhile
        if asked.get("asyncio_run"):
            asyncio.run(asyncio.sleep(0))
        on_loop = threading.current_thread() is threading.main_thread()
        if on_loop and asked.get("fail_on_loop"):  # as anyio.from_thread.run() there would
            with self._lock:
                self._inside -= 1
            raise RuntimeError("called on the event loop's thread")
        with self._lock:
            self._inside -= 1
            peak = self._peak
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[
                ResponseOutput(name="on_loop", shape=[1], datatype="INT64", data=[int(on_loop)]),
                ResponseOutput(name="peak", shape=[1], datatype="INT64", data=[peak]),
            ],
        )
