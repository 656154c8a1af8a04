"""Histograms observed on the worker's loop without a lock (one writer), read by the scrape
thread, and written to prometheus-client's multiprocess files on demand (:meth:`flush`)."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import values as prometheus_values
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

__all__ = ("LoopHistogram",)


class _Series:
    """One label set's observations: a count per bucket (the last one +Inf) and their sum."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1  # the first bucket with amount <= le
        self.sum += amount


class _LockedSeries(_Series):
    """A series observed from several threads (a plain ``def`` model's calls)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        super().__init__(bounds)
        self.lock = threading.Lock()

    def observe(self, amount: float) -> None:
        with self.lock:
            super().observe(amount)


class LoopHistogram:
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
        self._written: dict[tuple[str, ...], list[Any]] = {}  # multiprocess values, by series
        registry.register(self)

    def labels(self, *values: str, threads: bool = False) -> _Series:
        """The series of ``values``; with ``threads``, one that several threads may observe
        (under a lock of its own)."""
        series = self._series.get(values)
        if series is None:
            made = _LockedSeries(self._bounds) if threads else _Series(self._bounds)
            series = self._series[values] = made
        return series

    def counts(self) -> dict[tuple[str, ...], list[int]]:
        """Each series' count per bucket (not cumulative; the last one +Inf), by label values:
        copies, read from another thread (the heartbeat's) without a lock, as a scrape does."""
        return {values: list(series.counts) for values, series in list(self._series.items())}

    def flush(self) -> None:
        """Writes each series' counts and sum to prometheus-client's multiprocess values
        (this process's files), as its own Histogram would hold them."""
        for values, series in list(self._series.items()):
            written = self._written.get(values)
            if written is None:
                written = self._written[values] = self._values(values)
            counts, total = list(series.counts), series.sum
            for value, count in zip(written, (*counts, total), strict=True):
                value.set(count)

    def _values(self, values: tuple[str, ...]) -> list[Any]:
        """One value per bucket (not cumulative, as prometheus-client stores them), then the sum."""
        make, name, doc = prometheus_values.ValueClass, self._name, self._documentation
        labels = (*self._labelnames, "le")
        bounds = [floatToGoString(b) for b in (*self._bounds, float("inf"))]  # type: ignore[no-untyped-call]
        buckets = [
            make("histogram", name, f"{name}_bucket", labels, (*values, bound), doc)
            for bound in bounds
        ]
        return [*buckets, make("histogram", name, f"{name}_sum", self._labelnames, values, doc)]

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
