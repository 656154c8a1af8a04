"""A serving process's garbage collector: young collections rarer than CPython's default.

A process with many calls in flight (a worker reading jobs, a gateway or a client program
waiting for answers) allocates each call's objects (fields, requests, tasks, answers) long
before any of them is freed, so with the default first threshold (700 container
allocations) young collections came every few calls, each walking the calls in flight and
moving them to older generations, where later and full collections walked them again. The
worker's job path leaves no reference cycles (checked with ``gc.DEBUG_SAVEALL`` while
draining: none) and a client's calls almost none, so their objects are freed by their
reference counts; the gateway's web servers leave about one cyclic object a call, which young
collections still free, only less often. Measured with ``gc.callbacks`` (bench/README.md):

- a worker draining 100,000 jobs: 5,882 young collections took 0.65 s (~6.5 us a job, a tenth
  of its CPU); with this threshold none ran after the start;
- a client keeping 1,024 calls in flight: 17-21% of its CPU in the collector (14-17 us a
  call); with this threshold, 0.1-0.2%;
- a ``conveyor gateway`` under load: 6% of its CPU; with this threshold and the freeze
  (:func:`freeze_survivors`), 0.2-1%.

Cyclic garbage a program makes waits at most :data:`FIRST_THRESHOLD` container allocations
longer than it would. Set by ``conveyor worker`` and ``conveyor gateway`` (and so in every
process they start), not by :class:`~conveyor.worker.Worker` or
:class:`~conveyor.client.Client` themselves: a program that embeds them keeps its own
settings, and may call these itself (README, "Performance").
"""

from __future__ import annotations

import gc

__all__ = ("FIRST_THRESHOLD", "freeze_survivors", "tune_collector")

FIRST_THRESHOLD = 20_000


def tune_collector() -> None:
    """Raises the collector's first threshold to :data:`FIRST_THRESHOLD` (never lowers it;
    a collector turned off stays off)."""
    first, second, third = gc.get_threshold()
    if 0 < first < FIRST_THRESHOLD:
        gc.set_threshold(FIRST_THRESHOLD, second, third)


def freeze_survivors() -> None:
    """Moves everything alive now out of the collector's reach (``gc.freeze()``), after a
    collection: for a process whose start-up objects (modules, servers, models) live as long
    as it does, so that full collections stop walking them again and again."""
    gc.collect()
    gc.freeze()
