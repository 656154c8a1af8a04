"""Adaptive batching: many jobs' ``predict`` requests run as one call of the model.

MLServer's ``max_batch_size`` / ``max_batch_time``, across clients: requests are merged along
the first axis, ``predict`` runs once, and its outputs are split back so each job gets its own
response, with its own id. A batch starts when the model can take it: as soon as it is full
or ``max_batch_time`` after its first request, and, while the model is busy with earlier
batches, not before a call slot is free (arriving requests keep joining it meanwhile).
Requests whose inputs cannot merge (other names, datatypes, trailing shapes or parameters)
run as separate batches.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

# Merging and splitting live in the core, beside MLServer's BatchedRequests, which shares them.
from conveyor.batching import merge_requests, split_response
from conveyor.types import InferenceRequest, InferenceResponse

__all__ = (
    "AdaptiveBatcher",
    "default_concurrent_batches",
    "jobs_to_hold",
    "merge_requests",
    "split_response",
)

logger = logging.getLogger(__name__)

Predict = Callable[[InferenceRequest], Awaitable[InferenceResponse]]


def default_concurrent_batches() -> int:
    """Model calls a batcher runs at once unless told otherwise: one per CPU this process
    may use (a CPU-bound model gains nothing from more; the next batch fills meanwhile)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def jobs_to_hold(max_batch_size: int, concurrent_batches: int | None = None) -> int:
    """Jobs a worker must be able to hold at once for a model's batches to fill: every
    running batch, and a full one forming behind them."""
    if concurrent_batches is None:
        concurrent_batches = default_concurrent_batches()
    return (concurrent_batches + 1) * max(1, max_batch_size)


@dataclass(eq=False)
class _Item:
    request: InferenceRequest
    key: str  # requests with the same key can merge
    arrived: float  # anyio.current_time() when predict was called
    done: anyio.Event = field(default_factory=anyio.Event)
    response: InferenceResponse | None = None
    error: BaseException | None = None
    taken: bool = False  # in a batch that started


def _answer(
    item: _Item, response: InferenceResponse | None = None, error: BaseException | None = None
) -> None:
    item.response, item.error = response, error
    item.done.set()


def _batch_key(request: InferenceRequest) -> str:
    """Requests with the same key can merge: same inputs but for the first dimension."""

    def params(p: Any) -> Any:
        return p.model_dump(mode="json") if p is not None else None

    return json.dumps(
        [
            params(request.parameters),
            [o.model_dump(mode="json") for o in request.outputs or []],
            [(i.name, i.datatype, i.shape[1:], params(i.parameters)) for i in request.inputs],
        ],
        sort_keys=True,
        default=str,
    )


class AdaptiveBatcher:
    """Collects ``predict`` requests for one model and runs them in batches.

    ``predict`` waits for the request's own response (or raises its own error). ``run``
    must run in a task group for as long as the model serves.

    A batch is formed when the model can take it. At most ``concurrent_batches`` model calls
    run at once (by default one per CPU); while they all run, arriving requests keep joining
    the open batch, up to ``max_batch_size`` (a full batch is closed at once and the next one
    opens behind it). Once a call slot is free, the oldest open batch starts as soon as it is
    full or ``max_batch_time`` has passed since its first request arrived (at once if that
    time has already passed). So a lone request on an idle model waits ``max_batch_time`` and
    no longer, and under load batches fill while the model is busy instead of leaving a
    ``max_batch_time`` after their first request. Requests whose inputs cannot merge wait in
    separate batches, one per batch key.
    """

    def __init__(
        self,
        predict: Predict,
        max_batch_size: int,
        max_batch_time: float,
        on_batch: Callable[[int], None] | None = None,
        *,
        concurrent_batches: int | None = None,
    ) -> None:
        if concurrent_batches is None:
            concurrent_batches = default_concurrent_batches()
        if concurrent_batches < 1:
            raise ValueError(f"concurrent_batches must be at least 1, not {concurrent_batches}")
        self._predict = predict
        self._on_batch = on_batch
        self.max_batch_size = max(1, max_batch_size)
        self.max_batch_time = max_batch_time
        self.concurrent_batches = concurrent_batches
        # Requests not yet in a running batch, by batch key, oldest first. The head of each
        # queue is the first request of that key's open batch.
        self._queues: dict[str, deque[_Item]] = {}
        self._running = 0  # model calls (batches) running
        self._wake: anyio.Event | None = None  # set when the serving loop may have work
        self._stopped = False

    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        if self._stopped:
            raise RuntimeError("the model's batcher has stopped")
        item = _Item(request, _batch_key(request), anyio.current_time())
        queue = self._queues.get(item.key)
        if queue is None:
            queue = self._queues[item.key] = deque()
        queue.append(item)
        # While every slot is busy nothing can start, so arrivals need not wake the loop.
        if self._wake is not None and self._running < self.concurrent_batches:
            self._wake.set()
        try:
            await item.done.wait()
        except BaseException:  # the caller gave up: a request not yet batched is dropped
            if not item.taken:
                self._drop(item)
            raise
        if item.error is not None:
            raise item.error
        assert item.response is not None
        return item.response

    def _drop(self, item: _Item) -> None:
        queue = self._queues.get(item.key)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(item)
            if not queue:
                del self._queues[item.key]

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                await self._serve(tg)
        finally:
            self._stopped = True
            stopped = RuntimeError("the model's batcher stopped")
            for queue in self._queues.values():
                for item in queue:
                    _answer(item, error=stopped)
            self._queues.clear()

    def _next_batch(self) -> tuple[str | None, float]:
        """The batch key to run next, and when: its oldest request's arrival when the batch
        is full, else that arrival + ``max_batch_time``. (None, inf) when nothing waits."""
        best: str | None = None
        due = math.inf
        for key, queue in self._queues.items():
            at = queue[0].arrived
            if len(queue) < self.max_batch_size:
                at += self.max_batch_time
            if at < due:
                best, due = key, at
        return best, due

    async def _serve(self, tg: anyio.abc.TaskGroup) -> None:
        while True:
            due = math.inf
            if self._running < self.concurrent_batches:
                key, due = self._next_batch()
                if key is not None and due <= anyio.current_time():
                    self._start(tg, key)
                    continue
            # Wait for a request, a free slot, or the open batch's time: whichever comes first.
            self._wake = anyio.Event()
            with anyio.CancelScope(deadline=due):
                await self._wake.wait()

    def _start(self, tg: anyio.abc.TaskGroup, key: str) -> None:
        queue = self._queues[key]
        items = [queue.popleft() for _ in range(min(len(queue), self.max_batch_size))]
        if not queue:
            del self._queues[key]
        for item in items:
            item.taken = True
        self._running += 1
        tg.start_soon(self._run_batch, items)

    async def _run_batch(self, items: list[_Item]) -> None:
        """One batch in one call slot; if the batch fails, its requests run one by one."""
        try:
            if not await self._call(items):
                # Which request broke the batch? Run each alone: each gets its own answer.
                async with anyio.create_task_group() as tg:
                    for item in items:
                        tg.start_soon(self._call, [item])
        finally:
            self._running -= 1
            if self._wake is not None:
                self._wake.set()
            for item in items:  # cancelled (the batcher stopping): nobody waits forever
                if not item.done.is_set():
                    _answer(item, error=RuntimeError("the model's batcher stopped"))

    async def _call(self, items: list[_Item]) -> bool:
        """One model call for ``items``; False when a batch of several failed (nobody told)."""
        requests = [item.request for item in items]
        if self._on_batch is not None:
            self._on_batch(len(items))
        try:
            if len(items) == 1:
                responses = [await self._predict(requests[0])]
            else:
                responses = split_response(await self._predict(merge_requests(requests)), requests)
        except Exception as error:
            if len(items) == 1:
                _answer(items[0], error=error)
                return True
            logger.info(
                "batch.failed size=%d error=%s; running its jobs one by one",
                len(items),
                type(error).__name__,
            )
            return False
        for item, response in zip(items, responses, strict=True):
            _answer(item, response=response)
        return True
