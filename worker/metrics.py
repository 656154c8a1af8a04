"""A worker's Prometheus metrics, in a registry of its own (never the global one)."""

from __future__ import annotations

import functools
import inspect
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import HistogramMetricFamily

from conveyor import metrics as model_metrics
from conveyor.methods import ModelMethods, exposed_methods
from conveyor.model import MLModel

__all__ = ("JobMetrics", "WorkerMetrics", "instrument")

# Seconds: from sub-millisecond no-op models to generations of minutes.
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class JobMetrics:
    """The label children one (model, method) updates for each job, looked up once."""

    __slots__ = ("latency", "ok", "wait")

    def __init__(self, wait: Any, latency: Any, ok: Any) -> None:
        self.wait = wait  # queue wait of the model
        self.latency = latency
        self.ok = ok  # jobs with outcome "ok"


class WorkerMetrics:
    """Jobs by model, method and outcome; latency, queue wait and batch size histograms;
    jobs in flight; reclaimed and dead-lettered jobs."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.jobs = Counter(
            "conveyor_worker_jobs",
            "Jobs finished, by model, method and outcome (ok, error, cancelled, deadline, "
            "refused, dead_letter)",
            ["model", "method", "outcome"],
            registry=self.registry,
        )
        # observed for every job: lock-free histograms (_LoopHistogram)
        self.latency = _LoopHistogram(
            "conveyor_worker_job_seconds",
            "Time from taking a job to writing its answer",
            ("model", "method"),
            _LATENCY_BUCKETS,
            self.registry,
        )
        self.queue_wait = _LoopHistogram(
            "conveyor_worker_queue_wait_seconds",
            "Time from the client sending a job to a worker taking it",
            ("model",),
            _LATENCY_BUCKETS,
            self.registry,
        )
        self.batch_size = Histogram(
            "conveyor_worker_batch_size",
            "Requests merged into one predict call (adaptive batching)",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "conveyor_worker_jobs_in_flight", "Jobs this worker runs now", registry=self.registry
        )
        self.reclaimed = Counter(
            "conveyor_worker_reclaimed_jobs",
            "Jobs taken over from a worker that stopped",
            ["model"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, str], JobMetrics] = {}
        # model calls' run time and the models' own metrics (conveyor.log), process-wide
        self.registry.register(_Chained(_MODEL_CALLS, model_metrics.REGISTRY))
        self.dead_lettered = Counter(
            "conveyor_worker_dead_lettered_jobs",
            "Jobs moved to the dead-letter stream",
            ["model"],
            registry=self.registry,
        )

    def children(self, model: str, method: str) -> JobMetrics:
        """The cached label children of a job of ``model`` and ``method``."""
        children = self._children.get((model, method))
        if children is None:
            children = self._children[(model, method)] = JobMetrics(
                self.queue_wait.labels(model),
                self.latency.labels(model, method),
                self.jobs.labels(model, method, "ok"),
            )
        return children

    def job_taken(self, children: JobMetrics, waited: float) -> None:
        """A job taken after ``waited`` seconds in its queue."""
        children.wait.observe(waited)

    def job_done(
        self, children: JobMetrics, model: str, method: str, outcome: str, seconds: float
    ) -> None:
        """One finished job: its outcome and latency."""
        children.latency.observe(seconds)
        if outcome == "ok":
            children.ok.inc()
        else:
            self.jobs.labels(model, method, outcome).inc()

    def track_in_flight(self, count: Callable[[], int]) -> None:
        self.in_flight.set_function(lambda: float(count()))

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serves ``/metrics`` over HTTP from a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)


class _Series:
    """One label set's observations: a count per bucket (the last one +Inf) and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1  # the first bucket with amount <= le
        self.sum += amount


class _LoopHistogram:
    """A labelled histogram observed only on the worker's loop (one writer), read by the
    scrape thread: plain counts, no lock. prometheus_client's ``Histogram`` takes a lock and
    walks its buckets in Python for every observation (~1 us; two of them a job). A scrape
    may see a sum a few observations ahead of the counts, never counts that disagree."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = list(labelnames)
        self._bounds = tuple(float(bound) for bound in buckets)
        self._series: dict[tuple[str, ...], _Series] = {}
        registry.register(self)

    def labels(self, *values: str) -> _Series:
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = _Series(self._bounds)
        return series

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, series in list(self._series.items()):
            counts, total = list(series.counts), series.sum
            buckets, seen = [], 0
            for bound, count in zip((*self._bounds, float("inf")), counts, strict=True):
                seen += count
                buckets.append((_le(bound), seen))
            family.add_metric(list(values), buckets, total)
        yield family


class _Chained:
    """Collects what other registries hold, as of each scrape."""

    def __init__(self, *registries: CollectorRegistry) -> None:
        self._registries = registries

    def collect(self) -> Iterator[Any]:
        for registry in self._registries:
            yield from registry.collect()


def _le(bound: float) -> str:
    """A bucket's ``le`` label as prometheus_client writes it."""
    if bound == float("inf"):
        return "+Inf"
    return repr(float(bound))


# One model call (a batch's call counts once), in any thread: prometheus_client's Histogram,
# which takes a lock. In this module's registry: each WorkerMetrics serves it.
_MODEL_CALLS = CollectorRegistry()
_RUN = Histogram(
    "conveyor_worker_run_seconds",
    "Time a model's method ran (one call; a batched predict counts once)",
    ["model", "version", "method"],
    buckets=_LATENCY_BUCKETS,
    registry=_MODEL_CALLS,
)
_LOAD_METHODS = (ModelMethods.Load.value, ModelMethods.Unload.value)


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
            timer = None if name in _LOAD_METHODS else _RUN.labels(*labels, name)
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
                    timer.observe(time.perf_counter() - started)

        return awaited

    def called(*args: Any, **kwargs: Any) -> Any:
        token = current.set(labels)
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            current.reset(token)
            if timer is not None:
                timer.observe(time.perf_counter() - started)

    return called
