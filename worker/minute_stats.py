"""What a worker did over the last minute, per model: the heartbeat's ``last_minute`` field
(documented in ``broker/fleet.py``).

Read once a beat from the metrics the jobs update anyway (no work nor Redis command per job):
the jobs counter, the job-time, queue-wait and run-time histograms, and the batch-size one,
as the difference between their totals now and those of the beat a minute ago.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from conveyor.worker.model_calls import RUN

__all__ = ("BATCH_BUCKETS", "WINDOW_S", "LastMinute", "ModelTotals", "model_totals")

WINDOW_S = 60.0  # the span of the heartbeat's `last_minute` figures
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # adaptive batches' sizes (worker.metrics)


@dataclass
class ModelTotals:
    """One model's jobs since the worker started: finished, failed, and per histogram the
    count per bucket (not cumulative; the last one is +Inf): job time (``counts``), queue
    wait, model-call run time, and adaptive batches' sizes with their rows summed."""

    calls: int = 0
    errors: int = 0
    counts: list[int] = field(default_factory=list)
    wait: list[int] = field(default_factory=list)
    run: list[int] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)
    batch_rows: float = 0.0


class _Collector(Protocol):
    def collect(self) -> Iterable[Any]: ...


class _Counted(Protocol):
    """A worker.histograms.LoopHistogram: its per-bucket counts, by label values."""

    def counts(self) -> dict[tuple[str, ...], list[int]]: ...


class _Metrics(Protocol):
    """The parts of worker.metrics.WorkerMetrics read here."""

    @property
    def jobs(self) -> _Collector: ...
    @property
    def latency(self) -> _Counted: ...
    @property
    def queue_wait(self) -> _Counted: ...
    @property
    def batch_size(self) -> _Collector: ...


def _add(into: list[int], counts: list[int]) -> list[int]:
    # another label set of the same model (a method, a version): its buckets are the same
    return [a + b for a, b in zip(into, counts, strict=True)] if into else list(counts)


def model_totals(metrics: _Metrics) -> dict[str, ModelTotals]:
    """Each model's totals, from the worker's metrics (summed over methods and versions).
    Outcomes other than ok and duplicate count as errors."""
    totals: dict[str, ModelTotals] = {}

    def of(model: str) -> ModelTotals:
        return totals.setdefault(model, ModelTotals())

    for family in metrics.jobs.collect():
        for sample in getattr(family, "samples", ()):
            outcome = sample.labels.get("outcome")
            if not sample.name.endswith("_total") or outcome in (None, "duplicate"):
                continue
            one = of(sample.labels["model"])
            one.calls += int(sample.value)
            one.errors += 0 if outcome == "ok" else int(sample.value)
    for (model, *_), counts in metrics.latency.counts().items():
        one = of(model)
        one.counts = _add(one.counts, counts)
    for (model, *_), counts in metrics.queue_wait.counts().items():
        one = of(model)
        one.wait = _add(one.wait, counts)
    for (model, *_), counts in RUN.counts().items():
        one = of(model)
        one.run = _add(one.run, counts)
    for family in metrics.batch_size.collect():
        cumulative: dict[str, list[int]] = {}
        for sample in getattr(family, "samples", ()):
            model = sample.labels.get("model")
            if sample.name.endswith("_bucket"):
                cumulative.setdefault(model, []).append(int(sample.value))
            elif sample.name.endswith("_sum"):
                of(model).batch_rows = float(sample.value)
        for model, seen in cumulative.items():
            of(model).batches = [b - a for a, b in zip([0, *seen], seen, strict=False)]
    return totals


def _less(now: list[int], before: list[int]) -> list[int]:
    if not before or len(before) != len(now):
        return now
    return [a - b for a, b in zip(now, before, strict=True)]


class LastMinute:
    """The heartbeat's ``last_minute`` field: totals now minus those of a minute ago."""

    def __init__(
        self, bounds: Iterable[float], started: float, batch_bounds: Iterable[float] = ()
    ) -> None:
        self._bounds = [float(bound) for bound in bounds]
        self._batch_bounds = [float(bound) for bound in batch_bounds]
        self._past: deque[tuple[float, Mapping[str, ModelTotals]]] = deque([(started, {})])

    def field(self, now: float, totals: dict[str, ModelTotals]) -> str:
        past = self._past
        while len(past) > 1 and past[1][0] <= now - WINDOW_S:  # keep one a minute old or older
            past.popleft()
        since, before = past[0]
        past.append((now, totals))
        models = {}
        for model, one in totals.items():
            old = before.get(model, ModelTotals())
            calls, errors = one.calls - old.calls, one.errors - old.errors
            wait, run = _less(one.wait, old.wait), _less(one.run, old.run)
            batches = _less(one.batches, old.batches)
            if calls <= 0 and errors <= 0 and not any(wait) and not any(run):
                continue
            figures: dict[str, object] = {
                "calls": calls,
                "errors": errors,
                "counts": _less(one.counts, old.counts),
            }
            if any(wait):
                figures["wait"] = wait
            if any(run):
                figures["run"] = run
            if any(batches):
                figures["batches"] = batches
                figures["batch_rows"] = round(one.batch_rows - old.batch_rows, 3)
            models[model] = figures
        window: dict[str, object] = {
            "s": round(max(now - since, 0.001), 3),
            "le": self._bounds,
            "models": models,
        }
        if self._batch_bounds:
            window["batch_le"] = self._batch_bounds
        return json.dumps(window, separators=(",", ":"))
