"""How many calls one model instance takes at once, and how many jobs its worker holds.

A model instance takes one call at a time unless its ``max_concurrent_calls`` setting says it
can take more: concurrency comes from worker processes, as Triton's instance count gives it.
Without the setting:

- a plain ``def`` method runs in a thread, one call at a time per instance. Many threads
  inside one instance fight over the GIL and the model's own thread pools: 16 concurrent calls
  into one MiniLM instance ran at a tenth of its one-at-a-time speed (issue 14);
- an ``async def`` method is awaited on the worker's loop with no limit: its author wrote it
  to take many calls at once (it awaits I/O, another service), as MLServer's event loop runs
  it; the setting bounds it when given;
- adaptive batching runs ``max_concurrent_calls`` batches at once (one by default), for
  either kind: a batch is one call.

With the setting N every exposed method of the instance, plain or async, shares N slots. A
``predict_stream`` that is a plain generator takes a slot for each step; MLModel's default one,
calling a plain ``predict``, one for the whole stream; an async generator of the model's own
none (its model is held as an async one, see :meth:`CallLimit.hold`).

A worker holds only the jobs its models can run soon (:class:`Hold`): a job held by a busy
process is one that another process could be running. For a batched model that means two
rules, one for each half of what it holds:

- *the batches it runs*: while it holds fewer than ``max_batch_size`` jobs for each batch it
  may run, a worker waits on the model's stream (a blocking XREADGROUP). Redis hands each
  arriving job to the reader that has waited longest, so arrivals go to the processes with a
  batch to fill, and a process that holds its batches' worth stops waiting, leaving the rest
  to the others;
- *the batch forming behind them*: once its batches' worth is held, a worker only looks, every
  ``max_batch_time`` (at most 5 ms), for jobs no worker with room would take
  (``broker.waiting_jobs``: every other consumer holds its batches' worth, or the job has
  waited ``max_batch_time`` in the stream), and takes up to one more batch of those. So a lone
  process, or a fleet with more work than batch slots, still gathers and decodes its next
  batch while the model runs; a fleet with idle processes never holds a backlog one of them
  could run.

Holding two batches' worth, all waited for (the rule before), let a running process take part
of every other process's next batch, and a busy process take new work an idle one was waiting
for. Measured (tests/models/device: 20 ms + 0.05 ms a row, max_batch_size 32, max_batch_time
0.1 s; 4 processes, 4 x 32 single-item calls in flight; 2 loaded shared cores, two runs each):
mean batch 28.7 and 31.1 before, 32.0 and 32.0 now; jobs per process 372-729 and 405-584 of
512 before, 511-513 and 512 now; 1,386 and 1,826 calls/s before, 1,799 and 2,997 now.

An unbatched model keeps one rule: three jobs per call slot (the running call, the next one
decoded and claimed, one being read), all waited for. A job stops counting once its answer is
stored, so the next read goes out without a round trip of its own for the acks, which ride
with the next answer (``worker.slots``). Measured (a plain ``def`` model of 0.5 ms, 16
single-item calls in flight, one process, 8 runs alternated with the rule before;
bench/README.md): round trips a call 1.34 -> 1.02, the worker's CPU a call beyond the model's
0.56 -> 0.52 ms (medians).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass

import anyio

from conveyor.worker.inline_calls import InlineCalls

__all__ = ("CallLimit", "Hold", "Reads", "plan_reads")

# Jobs held per call slot of an unbatched bounded model: the one running, the next (decoded and
# claimed, so the model never waits for a Redis round trip between two calls), and one being
# read meanwhile. bench/blocking.py (2 ms GIL-holding model, 2 shared cores, noisy): 2 processes
# made 1.34-1.63x one process's calls/s over 3 runs with 3, 1.07-1.58x over 4 runs with 2.
_HELD_PER_SLOT = 3

# Longest pause between two looks for a batched model's forming batch (see the module head): a
# longer max_batch_time is the callers' patience, not a sign that the model runs that long.
_MAX_LOOK_S = 0.005
_MIN_LOOK_S = 0.001

_NOTHING: AbstractAsyncContextManager[object] = nullcontext()


@dataclass(frozen=True)
class Hold:
    """How many jobs of one model a worker holds at once, and how it takes them.

    Below ``wait_for`` it waits on the model's streams (a call slot has room); from there up
    to ``most`` it only looks, every ``look_s``, for jobs no worker with room would take: every
    other worker holds ``wait_for`` too, or they waited ``min_age_s`` (none when
    ``most == wait_for``).
    """

    wait_for: int
    most: int
    look_s: float = 0.0
    min_age_s: float = 0.0

    def __add__(self, other: Hold) -> Hold:
        """Two ready folders of one model: room for both, looked at as often as either asks."""
        looks = [hold for hold in (self, other) if hold.most > hold.wait_for]
        return Hold(
            self.wait_for + other.wait_for,
            self.most + other.most,
            min((hold.look_s for hold in looks), default=0.0),
            min((hold.min_age_s for hold in looks), default=0.0),
        )


class CallLimit:
    """The call slots of one loaded model instance (made at load, dropped with the instance)."""

    def __init__(
        self,
        limit: int | None,
        max_batch_size: int,
        *,
        max_batch_time: float = 0.0,
        concurrent: bool = False,
        default_stream: bool = False,
        label: str = "",
        inline: bool = True,
    ) -> None:
        """``limit``: the model's ``max_concurrent_calls`` (None: unset). ``concurrent``: the
        model's ``predict``, or a ``predict_stream`` of its own, is async (many calls at once
        on the loop when ``limit`` is unset). ``default_stream``: its ``predict_stream`` is
        MLModel's, which calls a plain ``def predict`` in a thread of its own. ``label``: the
        model, for log lines. ``inline``: its ``inline_calls`` setting."""
        self.limit = limit
        self.max_batch_size = max_batch_size
        self.max_batch_time = max_batch_time
        self.concurrent = concurrent and limit is None
        # Threads of plain `def` methods; shared with async methods when the limit is set.
        self.threads = anyio.CapacityLimiter(limit or 1)
        # Where its plain `def` calls run (worker.inline_calls): one call at a time may run on
        # the loop; more at once need threads.
        self.inline = InlineCalls(label) if inline and (limit or 1) == 1 else None
        self._async_limiter = self.threads if limit is not None else None
        # What a predict_stream runs under, whole: MLModel's default runs the plain predict
        # once, in a thread the worker does not start, so it takes a slot for the stream.
        self.stream_slots: AbstractAsyncContextManager[object] = (
            self.threads if default_stream else _NOTHING
        )

    @property
    def batches(self) -> int:
        """Adaptive batches run at once: a batch is one call of the model."""
        return self.limit or 1

    def for_coroutine(self) -> AbstractAsyncContextManager[object]:
        """What an ``async def`` call runs under: the instance's slots when its limit is set,
        else nothing (async models run concurrently on the loop)."""
        limiter = self._async_limiter
        return limiter if limiter is not None else _NOTHING

    @property
    def coroutines_unbounded(self) -> bool:
        return self._async_limiter is None

    def hold(self, worker_concurrency: int) -> Hold:
        """How many jobs of this instance's model its worker should hold (module head).

        Batched: a full batch for each batch that may run, waited for, and one more batch
        forming behind them, of jobs nobody idle waits for. Unbatched: three per call slot
        (the running call, the next one and one being read), or the worker's
        ``--concurrency`` for an async model with no limit, all waited for.
        """
        if self.max_batch_size > 1:
            running = self.batches * self.max_batch_size
            # a job left waiting max_batch_time would have missed a waiting worker's batch
            age = max(self.max_batch_time, _MIN_LOOK_S)
            return Hold(running, running + self.max_batch_size, min(age, _MAX_LOOK_S), age)
        if self.concurrent:
            return Hold(worker_concurrency, worker_concurrency)
        held = min(worker_concurrency, _HELD_PER_SLOT * (self.limit or 1))
        return Hold(held, held)

    def jobs_to_hold(self, worker_concurrency: int) -> int:
        """The most jobs of this instance's model its worker should hold at once."""
        return self.hold(worker_concurrency).most


@dataclass
class Reads:
    """What the worker reads next (:func:`plan_reads`)."""

    wait: list[str]  # streams to wait on (their models have a call slot to fill)
    wait_count: int  # the most jobs to take from them
    look: list[str]  # streams only to look at for jobs no worker with room would take
    look_count: int
    look_s: float = 0.0  # how often to look (the least of their models' pauses)
    min_age_s: float = 0.0  # how long a job waits before it is anyone's
    busy: int = 0  # jobs another worker holds when it has no room (the least of the models')
    # a waited stream's model also looks (batched): its answered jobs' acks should not wait
    # for the next answer, as other workers read this worker's pending count as its load
    acks_now: bool = False


def plan_reads(
    streams: Sequence[str],
    model_of: Mapping[str, str],
    holds: Mapping[str, Hold],
    held: Mapping[str, int],
    free: int,
) -> Reads:
    """The job ``streams`` worth reading now, how, and how many jobs to take from each kind.

    ``model_of`` maps a stream to its model, ``holds`` a model to its :class:`Hold` (absent:
    no limit but ``free``), ``held`` a model to the jobs held now. A stream whose model holds
    its fill is left out; one whose model holds what it runs is only looked at; each count is
    the least room of its kind (XREADGROUP's COUNT is per stream), so no model is sent more
    than it can run soon.
    """
    reads = Reads([], free, [], free)
    looked: list[Hold] = []
    for stream in streams:
        model = model_of[stream]
        hold = holds.get(model)
        if hold is None:
            reads.wait.append(stream)
            continue
        now = held.get(model, 0)
        if now < hold.wait_for:
            reads.wait.append(stream)
            reads.wait_count = min(reads.wait_count, hold.wait_for - now)
            reads.acks_now |= hold.most > hold.wait_for
        elif now < hold.most:
            reads.look.append(stream)
            reads.look_count = min(reads.look_count, hold.most - now)
            looked.append(hold)
    if not reads.wait:
        reads.wait_count = 0
    if looked:
        reads.look_s = min(hold.look_s for hold in looked)
        reads.min_age_s = min(hold.min_age_s for hold in looked)
        reads.busy = min(hold.wait_for for hold in looked)
    else:
        reads.look_count = 0
    return reads
