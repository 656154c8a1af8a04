"""A model's calls as the worker makes them: each in its model's context (what ``conveyor.log``
labels values with), timed (``conveyor_worker_run_seconds``), and its end marked on the job it
runs for (``conveyor_worker_reply_seconds``, in worker.metrics)."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from conveyor import metrics as model_metrics
from conveyor.methods import ModelMethods, exposed_methods
from conveyor.model import MLModel
from conveyor.multiprocess_metrics import LATENCY_BUCKETS
from conveyor.worker.histograms import LoopHistogram

__all__ = ("MODEL_CALLS", "current_job", "instrument")


class RunMark(Protocol):
    """A job's timing (worker.metrics.JobMetrics): when its model call ended."""

    ran_until: float
    done: bool


# The job a task runs (set when the job is taken): its model call marks its end there. A
# batched call runs for several jobs in a task of its batcher, where none is set.
current_job: ContextVar[RunMark | None] = ContextVar("conveyor_current_job", default=None)

# One model call (a batch's call counts once). Lock-free for an ``async def`` method (observed
# on the loop: ~0.2 us, prometheus_client's Histogram ~0.8 us), locked for a plain ``def`` one
# (observed in threads). In this module's registry: each WorkerMetrics serves and flushes it.
MODEL_CALLS = CollectorRegistry()
RUN = LoopHistogram(
    "conveyor_worker_run_seconds",
    "Time a model's method ran (one call; a batched predict counts once)",
    ("model", "version", "method"),
    LATENCY_BUCKETS,
    MODEL_CALLS,
)
_LOAD_METHODS = (ModelMethods.Load.value, ModelMethods.Unload.value)


def _ended(started: float, timer: Any) -> None:
    now = time.perf_counter()
    timer.observe(now - started)
    job = current_job.get()
    if job is not None and not job.done:
        job.ran_until = now


def instrument(model: MLModel) -> None:
    """Runs each method of ``model`` a job may call (and ``load``/``unload``) in its model
    context (what ``conveyor.log`` labels values with), timing each call of the exposed ones
    (``conveyor_worker_run_seconds``; a stream's whole run is its job's time).

    The instance's attributes shadow its class's methods; each wrapper is of the same kind as
    the method (``async def``, ``def``, generator, async generator), so the worker runs it as
    it would the method."""
    labels = (model.name, model.version or "")
    for name in (*exposed_methods(model), *_LOAD_METHODS):
        method = getattr(model, name, None)
        if callable(method):
            threads = not inspect.iscoroutinefunction(method)  # a def runs in threads
            timer = None if name in _LOAD_METHODS else RUN.labels(*labels, name, threads=threads)
            setattr(model, name, functools.wraps(method)(_in_context(method, labels, timer)))


def _in_context(
    method: Callable[..., Any], labels: tuple[str, str], timer: Any
) -> Callable[..., Any]:
    current = model_metrics.current_model
    if inspect.isasyncgenfunction(method):

        async def async_steps(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            steps = method(*args, **kwargs)
            try:
                while True:
                    token = current.set(labels)  # per step: no context held across a yield
                    try:
                        item = await steps.__anext__()
                    except StopAsyncIteration:
                        return
                    finally:
                        current.reset(token)
                    yield item
            finally:
                await steps.aclose()

        return async_steps
    if inspect.isgeneratorfunction(method):

        def steps(*args: Any, **kwargs: Any) -> Iterator[Any]:
            generator = method(*args, **kwargs)
            try:
                while True:
                    # each step may run in another thread (execution.iterate)
                    token = current.set(labels)
                    try:
                        item = next(generator)
                    except StopIteration:
                        return
                    finally:
                        current.reset(token)
                    yield item
            finally:
                generator.close()

        return steps
    if inspect.iscoroutinefunction(method):

        async def awaited(*args: Any, **kwargs: Any) -> Any:
            token = current.set(labels)
            started = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            finally:
                current.reset(token)
                if timer is not None:
                    _ended(started, timer)

        return awaited

    def called(*args: Any, **kwargs: Any) -> Any:
        token = current.set(labels)
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            current.reset(token)
            if timer is not None:
                _ended(started, timer)

    return called
