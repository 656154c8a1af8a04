"""The worker process's garbage collector: young collections rarer than CPython's default.

A read of many jobs allocates their objects (fields, requests, tasks, answers) before any of
them is freed, so with the default first threshold (700 container allocations) every read
of 64 set off 3-4 young collections, each walking the in-flight jobs' objects and moving
them to an older generation, where later collections walked them again. The job path leaves
no reference cycles (checked with ``gc.DEBUG_SAVEALL`` while draining: none), so its objects
are freed by their reference counts, and a higher first threshold only makes collections
rarer. Measured with ``gc.callbacks`` (bench/README.md, "The per-job path, one read at a
time"): draining 100,000 jobs, 5,882 young collections took 0.65 s (~6.5 us a job, a tenth of
the worker's CPU); with this threshold none ran after the start. Cyclic garbage a model makes
waits at most :data:`FIRST_THRESHOLD` container allocations longer than it would.

Set by ``conveyor worker`` (and so in every process a supervisor starts), not by
:class:`~conveyor.worker.Worker` itself: a program that embeds a worker keeps its own settings.
"""

from __future__ import annotations

import gc

__all__ = ("FIRST_THRESHOLD", "tune_collector")

FIRST_THRESHOLD = 20_000


def tune_collector() -> None:
    """Raises the collector's first threshold to :data:`FIRST_THRESHOLD` (never lowers it;
    a collector turned off stays off)."""
    first, second, third = gc.get_threshold()
    if 0 < first < FIRST_THRESHOLD:
        gc.set_threshold(FIRST_THRESHOLD, second, third)
