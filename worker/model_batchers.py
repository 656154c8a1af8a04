"""The adaptive batchers of a worker's models: one a served model, made on its first batchable job.

A job qualifies when its model batches (``max_batch_size`` above 1) and it is a ``predict`` of
one request (an ``InferenceRequest``, or the batch path's ``LaidRequest``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine
from typing import Any

from conveyor.broker.wire import Job
from conveyor.laid_requests import LaidRequest
from conveyor.logging import JobContext, job_context
from conveyor.methods import ModelMethods
from conveyor.tracing import timing_batches
from conveyor.types import InferenceRequest, InferenceResponse
from conveyor.worker import execution
from conveyor.worker.batcher import AdaptiveBatcher
from conveyor.worker.metrics import WorkerMetrics
from conveyor.worker.registry import ServedModel

__all__ = ("ModelBatchers", "batch_context")

_PREDICT = ModelMethods.Predict.value


def batch_context() -> None:
    """A batch's lines carry a batch id (set in the batch's task, as ``on_batch`` runs): one
    run serves several requests. Its requests run again one by one (a failed batch) keep it."""
    current = job_context.get()
    if current is None or not current.batch_id:  # else one of its requests' re-runs
        job_context.set(JobContext(batch_id=secrets.token_hex(6)))


class ModelBatchers:
    """The batchers, by ``id()`` of their ``ServedModel``; each runs for the worker's life."""

    def __init__(
        self,
        metrics: WorkerMetrics,
        start_soon: Callable[[Callable[[], Coroutine[Any, Any, None]]], object],
        *,
        timed: bool,
    ) -> None:
        self._metrics = metrics
        self._start_soon = start_soon
        self._timed = timed  # tracing is on: each batch's time is recorded (timing_batches)
        self._batchers: dict[int, AdaptiveBatcher] = {}

    def for_job(self, served: ServedModel, job: Job) -> AdaptiveBatcher | None:
        """The model's adaptive batcher, for a ``predict`` of one request (made on first use)."""
        settings = served.settings
        if (
            settings.max_batch_size <= 1
            or job.method != _PREDICT
            or len(job.args) != 1
            or job.kwargs
            or not isinstance(job.args[0], (InferenceRequest, LaidRequest))  # the batch path's
        ):
            return None
        batcher = self._batchers.get(id(served))
        if batcher is None:

            async def predict(request: InferenceRequest) -> InferenceResponse:
                model = served.model
                if model is None:
                    raise RuntimeError(f"model {served.name!r} was unloaded")
                calls = served.calls
                if "predict" in served.coroutines:
                    async with calls.for_coroutine():  # the batcher's own bound is the same
                        response = await model.predict(request)
                else:
                    response = await execution.call_plain(model.predict, calls, request)
                if not isinstance(response, InferenceResponse):
                    raise TypeError(f"predict returned {type(response).__name__}")
                return response

            observe = self._metrics.batch_size.labels(served.name).observe

            def batch_started(size: int) -> None:
                batch_context()
                observe(size)

            batcher = AdaptiveBatcher(
                predict,
                settings.max_batch_size,
                settings.max_batch_time,
                on_batch=timing_batches(batch_started) if self._timed else batch_started,
                concurrent_batches=served.calls.batches,
            )
            self._batchers[id(served)] = batcher
            self._start_soon(batcher.run)
        return batcher
