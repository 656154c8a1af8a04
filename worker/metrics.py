"""A worker's Prometheus metrics, in a registry of its own (never the global one).

Per job: its queue wait (sent -> taken), its model call's run time (worker.model_calls; a
batch's call counts once), its reply time (the call's end -> the answer stored; jobs that run
alone) and its whole time (taken -> answer stored). Under ``--processes N`` (``multiprocess``)
every value goes to prometheus-client's files in ``PROMETHEUS_MULTIPROC_DIR``, which the
supervisor serves summed (worker.supervisor): the loop's own histograms are written there
every second and when the worker stops (:meth:`WorkerMetrics.flush`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from conveyor import metrics as model_metrics
from conveyor.multiprocess_metrics import LATENCY_BUCKETS, start_serving
from conveyor.worker.health import listening
from conveyor.worker.histograms import LoopHistogram
from conveyor.worker.minute_stats import BATCH_BUCKETS
from conveyor.worker.model_calls import MODEL_CALLS, RUN, current_job

__all__ = ("JobMetrics", "WorkerMetrics")

FLUSH_EVERY_S = 1.0  # multiprocess mode: how stale a scrape of the loop's histograms may be


class _Children:
    """The label children one (model, method) updates for each job, looked up once."""

    def __init__(self, wait: Any, latency: Any, ok: Any, reply: Any) -> None:
        self.wait = wait  # queue wait of the model
        self.latency = latency
        self.ok = ok  # jobs with outcome "ok"
        self.reply = reply


class JobMetrics:
    """One job's metrics: its (model, method)'s label children, and when its model call
    ended (marked by worker.model_calls while the job is the task's current one)."""

    def __init__(self, children: _Children) -> None:
        self.children = children
        self.ran_until = 0.0  # time.perf_counter() at the end of its model call; 0: not known
        self.done = False


class WorkerMetrics:
    """Jobs by model, method and outcome; queue wait, run, reply, job and batch size
    histograms; jobs in flight; reclaimed and dead-lettered jobs."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, multiprocess: bool = False
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.multiprocess = multiprocess
        self.jobs = Counter(
            "conveyor_worker_jobs",
            "Jobs finished, by model, method and outcome (ok, error, cancelled, deadline, "
            "refused, dead_letter)",
            ["model", "method", "outcome"],
            registry=self.registry,
        )
        # observed for every job: lock-free histograms (worker.histograms)
        self.latency = LoopHistogram(
            "conveyor_worker_job_seconds",
            "Time from taking a job to storing its answer",
            ("model", "method"),
            LATENCY_BUCKETS,
            self.registry,
        )
        self.queue_wait = LoopHistogram(
            "conveyor_worker_queue_wait_seconds",
            "Time from the client sending a job to a worker taking it",
            ("model",),
            LATENCY_BUCKETS,
            self.registry,
        )
        self.reply = LoopHistogram(
            "conveyor_worker_reply_seconds",
            "Time from the end of a job's model call to its answer stored (jobs run alone)",
            ("model", "method"),
            LATENCY_BUCKETS,
            self.registry,
        )
        self.batch_size = Histogram(
            "conveyor_worker_batch_size",
            "Requests merged into one predict call (adaptive batching)",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "conveyor_worker_jobs_in_flight",
            "Jobs this worker runs now",
            registry=self.registry,
            multiprocess_mode="livesum",  # the processes alive now, summed
        )
        self._in_flight: Callable[[], int] | None = None
        self.reclaimed = Counter(
            "conveyor_worker_reclaimed_jobs",
            "Jobs taken over from a worker that stopped",
            ["model"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, str], _Children] = {}
        # model calls' run time and the models' own metrics (conveyor.log), process-wide
        self.registry.register(_Chained(MODEL_CALLS, model_metrics.REGISTRY))
        self.dead_lettered = Counter(
            "conveyor_worker_dead_lettered_jobs",
            "Jobs moved to the dead-letter stream",
            ["model"],
            registry=self.registry,
        )

    def children(self, model: str, method: str) -> JobMetrics:
        """The metrics of one job of ``model`` and ``method`` (a new one for each job)."""
        children = self._children.get((model, method))
        if children is None:
            children = self._children[(model, method)] = _Children(
                self.queue_wait.labels(model),
                self.latency.labels(model, method),
                self.jobs.labels(model, method, "ok"),
                self.reply.labels(model, method),
            )
        return JobMetrics(children)

    def job_taken(self, job: JobMetrics, waited: float) -> None:
        """A job taken after ``waited`` seconds in its queue; the task's current job."""
        job.children.wait.observe(waited)
        current_job.set(job)  # in the job's own task: its model call marks its end here

    def job_done(
        self, job: JobMetrics, model: str, method: str, outcome: str, seconds: float
    ) -> None:
        """One finished job: its outcome and latency."""
        job.done = True
        children = job.children
        children.latency.observe(seconds)
        if job.ran_until:
            children.reply.observe(max(time.perf_counter() - job.ran_until, 0.0))
        if outcome == "ok":
            children.ok.inc()
        else:
            self.jobs.labels(model, method, outcome).inc()

    def track_in_flight(self, count: Callable[[], int]) -> None:
        if self.multiprocess:
            self._in_flight = count  # a gauge's function is not seen in the files: flushed
        else:
            self.in_flight.set_function(lambda: float(count()))

    def flush(self) -> None:
        """Multiprocess mode: writes the loop's histograms and the jobs in flight to this
        process's files (a scrape reads them there). Call it on the loop."""
        if not self.multiprocess:
            return
        for histogram in (self.latency, self.queue_wait, self.reply, RUN):
            histogram.flush()
        if self._in_flight is not None:
            self.in_flight.set(self._in_flight())

    async def flush_every(self, period: float = FLUSH_EVERY_S) -> None:
        """Multiprocess mode: :meth:`flush` every ``period`` seconds, until cancelled."""
        while self.multiprocess:
            await anyio.sleep(period)
            self.flush()

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serves ``/metrics`` over HTTP from a daemon thread; port 0: a free one, logged
        (``metrics.serving address=ADDR:PORT``)."""
        with listening("--metrics-port", port):
            start_serving(port, addr, self.registry)


class _Chained:
    """Collects what other registries hold, as of each scrape."""

    def __init__(self, *registries: CollectorRegistry) -> None:
        self._registries = registries

    def collect(self) -> Iterator[Any]:
        for registry in self._registries:
            yield from registry.collect()
