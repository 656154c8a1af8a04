"""How the worker stops its work: the one cancellation model, and a job's deadline.

The worker runs on asyncio (redis.asyncio drives its Redis), and stops work two ways:

- **Its own tasks** (the pipeline flusher and acker, the control readers, the signal handler,
  the model batchers) live in the anyio task group that ``Worker.run`` opens, and end when that
  group's scope is cancelled, as the worker stops. Cleanup that must still talk to Redis runs
  under ``anyio.CancelScope(shield=True)`` bounded by ``anyio.move_on_after``.
- **Each job** runs in a plain asyncio task (``loop.create_task``, see ``worker.consumer``) and
  is stopped only by ``task.cancel()``, through its :class:`JobScope`: an anyio task group's
  ``start_soon`` and a cancel scope per job cost ~25 us of CPU per job, a ``task.cancel()``
  about a tenth of it. :class:`RunningJobs` holds every job's scope.

A job is stopped for one of three reasons, recorded on its scope before the cancel is sent:
its deadline (:class:`Deadlines`: one loop timer for all jobs), its caller's cancel request
(``worker.control``), or another copy of its job entry holding the claim (``broker.claims``).
Each is sent once, and only while the job runs its model's method (the scope is *armed*).
The runner (``worker.runner``) catches the ``CancelledError``, asks
:meth:`RunningJobs.taken_back` for the reason (which ``uncancel()``\\s the task) and answers
the caller with it. A cancellation without a reason (or while the worker aborts) propagates:
the job stays pending, for another worker to reclaim. A job whose model swallowed its
cancellation keeps its answer (:meth:`RunningJobs.swallowed`).

The worker stopping now (a second SIGTERM, or ``run`` ending past the grace period):
:meth:`RunningJobs.cancel_all` sets ``aborting`` and cancels every job that has started; one
not started yet sees ``aborting`` on its first step and ends at once (a task cancelled before
its first step would never run its cleanup). :meth:`RunningJobs.abort` then waits, shielded,
until every job task has ended.

Inside a job, anyio is used freely (a stream's inputs are closed under a shielded scope,
``execution`` runs threads through anyio): those scopes nest inside the job's task, and on
asyncio anyio's cancellation is the same ``CancelledError``. No anyio scope ever wraps a job's
task from outside.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

__all__ = ("CANCELLED", "DEADLINE", "DUPLICATE", "Deadlines", "JobScope", "RunningJobs")

CANCELLED = "cancelled"  # why a job was stopped: its caller cancelled it
DUPLICATE = "duplicate"  # ... or another copy of its job entry runs it
DEADLINE = "deadline"  # ... or it ran past its deadline


class JobScope:
    """A running job's task, and why it was stopped: its deadline (see :class:`Deadlines`)
    and a caller's cancel request both end in one ``task.cancel()``, ~10x cheaper than an
    anyio cancel scope per job."""

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.started = False  # its task has taken its first step
        self.armed = False  # the job runs its method: its deadline and a cancel may stop it
        self.reason: str | None = None
        self.held: str | None = None  # the copy of the job entry that holds its claim
        self.ack_pending = False  # answered: its slot is freed once its ack is done

    def claimed(self, held: str | None) -> None:
        """The claim's outcome (see broker.claims): another copy holds it, stop this one."""
        self.held = held
        if held is not None and self.armed:
            self.cancel(DUPLICATE)

    def cancel(self, reason: str) -> None:
        """Stops the job (once); a caller's cancel names the reason even after the deadline."""
        first = self.reason is None
        if first or reason == CANCELLED:
            self.reason = reason
        if first and self.task is not None:
            self.task.cancel()


class RunningJobs:
    """Every job task of the worker, by scope and (while armed) by request id."""

    def __init__(self) -> None:
        self.scopes: set[JobScope] = set()
        self.by_request: dict[str, JobScope] = {}  # request id -> its armed job
        self.deadlines = Deadlines()
        self.aborting = False  # the running jobs are being cancelled: they stay pending
        # The consumer reads again at the end of this loop turn: answers given now wait to
        # ride in that read's round trip.
        self.read_follows = False
        self._on_abort: list[Callable[[], None]] = []  # see on_abort

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        scope: JobScope,
        job: Coroutine[Any, Any, None],
    ) -> None:
        """Runs ``job`` (which takes ``scope``) in a task of its own."""
        scope.task = loop.create_task(job)
        self.scopes.add(scope)

    def ended(self, scope: JobScope) -> None:
        """The job's task is about to end."""
        self.scopes.discard(scope)
        scope.task = None  # the scope may wait in deadlines until its deadline: not the task

    def arm(
        self, loop: asyncio.AbstractEventLoop, scope: JobScope, request_id: str, when: float
    ) -> None:
        """The job runs its method from now: stopped at loop time ``when``, or on a cancel."""
        scope.armed = True
        self.deadlines.add(loop, when, scope, len(self.by_request))
        self.by_request[request_id] = scope

    def disarm(self, scope: JobScope, request_id: str) -> None:
        self.by_request.pop(request_id, None)
        scope.armed = False

    def cancel_request(self, request_id: str) -> None:
        """A caller's cancel: stops its job if it runs its method here."""
        scope = self.by_request.get(request_id)
        if scope is not None and scope.armed:
            scope.cancel(CANCELLED)

    def taken_back(self, scope: JobScope, task: asyncio.Task[None]) -> str | None:
        """In a job's ``except CancelledError``: why the job was stopped, its cancellation
        taken back; None when the cancellation must propagate (the worker stops now, or the
        cancel was no job scope's): the job then stays pending, for another worker."""
        if scope.reason is None or self.aborting:
            return None
        task.uncancel()
        return scope.reason

    def swallowed(self, task: asyncio.Task[None]) -> None:
        """After a job's method returned: a cancellation it swallowed is taken back (its
        answer stands), unless the worker stops now."""
        if task.cancelling():
            if self.aborting:
                raise asyncio.CancelledError
            task.uncancel()

    def cancel_all(self) -> None:
        """Cancels every running job; each stays pending, for another worker to reclaim."""
        self.aborting = True
        for scope in self.scopes:
            # A task cancelled before its first step would never run its cleanup: one not
            # started yet sees `aborting` when it starts, and ends at once.
            if scope.started and scope.task is not None:
                scope.task.cancel()
        for stop in self._on_abort:
            stop()

    def on_abort(self, stop: Callable[[], None]) -> None:
        """Calls ``stop`` when the worker stops now (:meth:`cancel_all`): jobs without a task
        of their own (``worker.batch_jobs``) let go of theirs, which stay pending."""
        self._on_abort.append(stop)

    async def abort(self) -> None:
        """Cancels the jobs still running and waits until they have ended."""
        self.cancel_all()
        with anyio.CancelScope(shield=True):
            while self.scopes:
                await asyncio.wait([scope.task for scope in self.scopes if scope.task is not None])
        self.deadlines.clear()


class Deadlines:
    """Stops jobs that run past their deadline, with one loop timer for the earliest.

    A ``loop.call_at`` per job would put a TimerHandle per job in the loop's heap, whose
    ``__lt__`` is Python (~7 comparisons a push), and cancelled handles stay there until their
    time. Here entries are (time, seq, scope) tuples, compared in C; a job that ended (disarmed)
    stays until it reaches the top or the heap is compacted.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, JobScope]] = []
        self._seq = itertools.count()  # ties never compare scopes
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf  # when the timer fires

    def add(
        self, loop: asyncio.AbstractEventLoop, when: float, scope: JobScope, running: int
    ) -> None:
        """Stops ``scope``'s job at loop time ``when`` unless it has ended (disarmed) by then;
        ``running`` is how many jobs are armed, to know when to drop the ended ones."""
        heap = self._heap
        if len(heap) > 64 + 2 * running:  # ended ones would reach the oldest GC generation
            heap[:] = [entry for entry in heap if entry[2].armed]
            heapq.heapify(heap)
        heapq.heappush(heap, (when, next(self._seq), scope))
        if when < self._at:
            self._schedule(loop, when)

    def clear(self) -> None:
        """Forgets every deadline (no job runs any more)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._at = math.inf
        self._heap.clear()

    def __len__(self) -> int:
        return len(self._heap)

    def _schedule(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at = when
        self._timer = loop.call_at(when, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._at = math.inf
        heap = self._heap
        now = loop.time()
        while heap and (heap[0][0] <= now or not heap[0][2].armed):
            scope = heapq.heappop(heap)[2]
            if scope.armed:
                scope.cancel(DEADLINE)
        if heap:
            self._schedule(loop, heap[0][0])
