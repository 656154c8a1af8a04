"""A worker's Prometheus metrics, in a registry of its own (never the global one)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import HistogramMetricFamily

__all__ = ("JobMetrics", "WorkerMetrics")

# Seconds: from sub-millisecond no-op models to minute-long generations.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
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


def _le(bound: float) -> str:
    """A bucket's ``le`` label as prometheus_client writes it."""
    if bound == float("inf"):
        return "+Inf"
    return repr(float(bound))
