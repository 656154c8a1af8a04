"""The worker's lock-free histograms expose what prometheus_client's own Histogram would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from conveyor.multiprocess_metrics import LATENCY_BUCKETS
from conveyor.worker.metrics import WorkerMetrics

_VALUES = (0.0, 0.0004, 0.001, 0.0010001, 0.003, 0.5, 1, 59.9, 60, 61, 1e9)


def _lines(registry: CollectorRegistry, name: str) -> list[str]:
    text = generate_latest(registry).decode()
    return [
        line for line in text.splitlines() if line.startswith(name + "_") and "_created" not in line
    ]


def test_a_loop_histogram_exposes_what_prometheus_clients_would() -> None:
    metrics = WorkerMetrics()
    children = metrics.children("echo", "predict")
    reference = CollectorRegistry()
    wait = Histogram(
        "conveyor_worker_queue_wait_seconds",
        "doc",
        ["model"],
        buckets=LATENCY_BUCKETS,
        registry=reference,
    )
    for value in _VALUES:
        metrics.job_taken(children, value)
        wait.labels("echo").observe(value)
    name = "conveyor_worker_queue_wait_seconds"
    assert _lines(metrics.registry, name) == _lines(reference, name)
    assert any(line.endswith(f"{len(_VALUES)}.0") for line in _lines(reference, name))
