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
none (its model is held as an async one, see :meth:`CallLimit.jobs_to_hold`).

A worker holds only the jobs its models can run soon (see :meth:`CallLimit.jobs_to_hold`): a job
held by a busy process is one that another process could be running.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext

import anyio

__all__ = ("CallLimit", "streams_with_room")

# Jobs held per call slot of an unbatched bounded model: the one running, the next (decoded and
# claimed, so the model never waits for a Redis round trip between two calls), and one being
# read meanwhile. bench/blocking.py (2 ms GIL-holding model, 2 shared cores, noisy): 2 processes
# made 1.34-1.63x one process's calls/s over 3 runs with 3, 1.07-1.58x over 4 runs with 2.
_HELD_PER_SLOT = 3

_NOTHING: AbstractAsyncContextManager[object] = nullcontext()


class CallLimit:
    """The call slots of one loaded model instance (made at load, dropped with the instance)."""

    __slots__ = (
        "_async_limiter",
        "concurrent",
        "limit",
        "max_batch_size",
        "stream_slots",
        "threads",
    )

    def __init__(
        self,
        limit: int | None,
        max_batch_size: int,
        *,
        concurrent: bool = False,
        default_stream: bool = False,
    ) -> None:
        """``limit``: the model's ``max_concurrent_calls`` (None: unset). ``concurrent``: the
        model's ``predict``, or a ``predict_stream`` of its own, is async (many calls at once
        on the loop when ``limit`` is unset). ``default_stream``: its ``predict_stream`` is
        MLModel's, which calls a plain ``def predict`` in a thread of its own."""
        self.limit = limit
        self.max_batch_size = max_batch_size
        self.concurrent = concurrent and limit is None
        # Threads of plain `def` methods; shared with async methods when the limit is set.
        self.threads = anyio.CapacityLimiter(limit or 1)
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

    def jobs_to_hold(self, worker_concurrency: int) -> int:
        """The most jobs of this instance's model its worker should hold at once.

        Batched: every batch that may run, and a full one forming behind them (two batches'
        worth by default). Unbatched: three per call slot (the running call, the next one and
        one being read), or the worker's ``--concurrency`` for an async model with no limit.
        """
        if self.max_batch_size > 1:
            return (self.batches + 1) * self.max_batch_size
        if self.concurrent:
            return worker_concurrency
        return min(worker_concurrency, _HELD_PER_SLOT * (self.limit or 1))


def streams_with_room(
    streams: Sequence[str],
    model_of: Mapping[str, str],
    holds: Mapping[str, int],
    held: Mapping[str, int],
    free: int,
) -> tuple[list[str], int]:
    """The job ``streams`` worth reading now, and how many jobs to take from them at most.

    ``model_of`` maps a stream to its model, ``holds`` a model to the most jobs its worker
    should hold (absent: no limit but ``free``), ``held`` a model to the jobs held now. A
    stream whose model holds its fill is left out; the count is the least room of those read
    (XREADGROUP's COUNT is per stream), so no model is sent more than it can run soon.
    """
    room = free
    readable: list[str] = []
    for stream in streams:
        model = model_of[stream]
        hold = holds.get(model)
        if hold is None:
            readable.append(stream)
            continue
        left = hold - held.get(model, 0)
        if left > 0:
            readable.append(stream)
            room = min(room, left)
    return readable, room if readable else 0
