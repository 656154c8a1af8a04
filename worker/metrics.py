"""A worker's Prometheus metrics, in a registry of its own (never the global one)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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
        self.latency = Histogram(
            "conveyor_worker_job_seconds",
            "Time from taking a job to writing its answer",
            ["model", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "conveyor_worker_queue_wait_seconds",
            "Time from the client sending a job to a worker taking it",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
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
