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
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from operator import itemgetter
from typing import Any, cast

import anyio
import anyio.abc

# Merging and splitting live in the core, beside MLServer's BatchedRequests, which shares them.
from conveyor.batching import Rows, merge_requests, split_response, split_rows
from conveyor.laid_requests import LaidRequest
from conveyor.types import InferenceRequest, InferenceResponse, Parameters

__all__ = ("AdaptiveBatcher", "Answered", "Submitted", "merge_requests", "split_response")

logger = logging.getLogger(__name__)

Predict = Callable[[InferenceRequest], Awaitable[InferenceResponse]]


class Answered:
    """A submitted request's answer (see :meth:`AdaptiveBatcher.submit`): its ``token``, and
    its ``response`` (alone in its batch), its ``rows`` of the batch's response (not built:
    the wire encodes them as they are, ``encode_rows``) or the ``error`` it raised."""

    def __init__(
        self,
        token: object,
        response: InferenceResponse | None,
        error: BaseException | None,
        rows: Rows | None = None,
    ) -> None:
        self.token = token
        self.response = response
        self.error = error
        self.rows = rows


class Submitted(Answered):
    """A request :meth:`AdaptiveBatcher.submit` queued: :meth:`AdaptiveBatcher.withdraw` takes
    it back while its batch has not started."""


class _Item(Submitted):
    """One caller's request, and its answer once its batch ran (a submitted one is handed
    over as it is, as its ``Submitted`` and its ``Answered``: no object of those per request)."""

    def __init__(
        self, request: InferenceRequest | LaidRequest, group: _Group, token: object = None
    ) -> None:
        self.token = token  # a submitted request's (see AdaptiveBatcher.submit), else None
        self.response: InferenceResponse | None = None
        self.error: BaseException | None = None
        self.rows: Rows | None = None  # a submitted request's answer, not built
        self.request = request
        self.group = group
        self.taken = False  # in a batch that started


class _Group:
    """Requests of one batch key that will run together: at most ``max_batch_size``, all
    woken by one event when their batch has run (an event per request cost ~2% of a batched
    worker's CPU)."""

    def __init__(self, key: Hashable, arrived: float) -> None:
        self.key = key
        self.arrived = arrived  # anyio.current_time() when its first request came
        self.items: list[_Item] = []
        self.done = anyio.Event()


def _answer_all(items: list[_Item], error: BaseException) -> None:
    for item in items:
        if item.response is None and item.rows is None and item.error is None:
            item.error = error


def _wake_all(group: _Group, on_answers: Callable[[list[Answered]], None] | None) -> None:
    """Wakes the group's callers, each of whom holds its own item, and hands the submitted
    requests' answers to ``on_answers`` in one call. The group lets go of its items: an item
    points to its group, so keeping both ways would make a reference cycle per request, left
    to the garbage collector (measured: its full collections then took ~10% of a batched
    worker's CPU)."""
    group.done.set()
    items, group.items = group.items, []
    if on_answers is None:
        return
    answered: list[Answered] = [item for item in items if item.token is not None]
    if answered:
        try:
            on_answers(answered)
        except Exception:  # its own bug: the batcher keeps serving the others
            logger.exception("batch.answers_failed size=%d", len(answered))


# Parameter values that can go into a batch key as they are: (name, type, value) tells
# apart what their JSON would (1, 1.0 and True), and is hashable.
_PLAIN = frozenset((str, int, float, bool))


def _parameters_key(parameters: Parameters | None) -> Hashable:
    """What of ``parameters`` decides whether two requests can merge: the values a dump would
    carry (set, not None), as a tuple when they are plain values, else as their JSON."""
    if parameters is None:
        return None
    fields_set = parameters.__pydantic_fields_set__
    items = [
        (name, type(value), value)
        for name, value in parameters.__dict__.items()
        if value is not None and name in fields_set
    ]
    extra = parameters.__pydantic_extra__
    if extra:
        items.extend(
            (name, type(value), value) for name, value in extra.items() if value is not None
        )
    if all(kind in _PLAIN for _, kind, _ in items):
        return tuple(sorted(items, key=itemgetter(0)))
    return json.dumps(parameters.model_dump(mode="json"), sort_keys=True, default=str)


def _batch_key(request: InferenceRequest) -> Hashable:
    """Requests with the same key can merge: same inputs but for the first dimension.

    A tuple, built without a dump for the common request (no request parameters or outputs:
    a JSON dump of every request cost ~7% of a batched worker's CPU); any other request's
    key is its JSON, which never equals a tuple.
    """
    if request.parameters is None and request.outputs is None:
        return tuple(
            [
                (i.name, i.datatype, tuple(i.shape[1:]), _parameters_key(i.parameters))
                for i in request.inputs
            ]
        )

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
    run at once (one by default, as ``CallLimit.batches``); while they all run, arriving
    requests keep joining the open batch, up to ``max_batch_size`` (a full batch is closed at
    once and the next one opens behind it). Once a call slot is free, the oldest open batch
    starts as soon as it is full or ``max_batch_time`` has passed since its first request
    arrived (at once if that time has already passed). So a lone request on an idle model
    waits ``max_batch_time`` and no longer, and under load batches fill while the model is
    busy instead of leaving a ``max_batch_time`` after their first request. Requests whose
    inputs cannot merge wait in separate batches, one per batch key.
    """

    def __init__(
        self,
        predict: Predict,
        max_batch_size: int,
        max_batch_time: float,
        on_batch: Callable[[int], None] | None = None,
        *,
        concurrent_batches: int = 1,
    ) -> None:
        if concurrent_batches < 1:
            raise ValueError(f"concurrent_batches must be at least 1, not {concurrent_batches}")
        self._predict = predict
        self._on_batch = on_batch
        self.max_batch_size = max(1, max_batch_size)
        self.max_batch_time = max_batch_time
        self.concurrent_batches = concurrent_batches
        # Requests not yet in a running batch, by batch key, in groups of at most
        # max_batch_size, oldest first. The head group of each key is its open batch.
        self._queues: dict[Hashable, deque[_Group]] = {}
        self._running = 0  # model calls (batches) running
        self._wake: anyio.Event | None = None  # set when the serving loop may have work
        self._stopped = False
        # Where the answers of submitted requests go, a batch's at once (see submit).
        self.on_answers: Callable[[list[Answered]], None] | None = None

    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        item = self._enqueue(request, None)
        try:
            await item.group.done.wait()
        except BaseException:  # the caller gave up: a request not yet batched is dropped
            if not item.taken:
                self._drop(item)
            raise
        if item.error is not None:
            raise item.error
        assert item.response is not None
        return item.response

    def submit(
        self, request: InferenceRequest | LaidRequest, token: object, key: Hashable | None = None
    ) -> Submitted:
        """Queues ``request`` without waiting for it: once its batch has run, its answer goes
        to ``on_answers`` (which must be set), with the other submitted requests of its batch,
        as an :class:`Answered` holding ``token``. No task or coroutine per request (the batch
        path, ``worker.batch_jobs``). ``key`` is the request's :meth:`key_of`, if the caller
        has it. A :class:`LaidRequest` is built only if it runs alone (merging takes its bytes).
        Raises RuntimeError once the batcher has stopped."""
        assert self.on_answers is not None
        return self._enqueue(request, token, key)

    @staticmethod
    def key_of(request: InferenceRequest) -> Hashable:
        """What decides which requests may merge (the same key: all but their rows agree)."""
        return _batch_key(request)

    def _enqueue(
        self, request: InferenceRequest | LaidRequest, token: object, key: Hashable = None
    ) -> _Item:
        if self._stopped:
            raise RuntimeError("the model's batcher has stopped")
        if key is None:
            key = _batch_key(request.build() if isinstance(request, LaidRequest) else request)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        if queue and len(queue[-1].items) < self.max_batch_size:
            group = queue[-1]
        else:
            group = _Group(key, anyio.current_time())
            queue.append(group)
        item = _Item(request, group, token)
        group.items.append(item)
        # While every slot is busy nothing can start, so arrivals need not wake the loop.
        if self._wake is not None and self._running < self.concurrent_batches:
            self._wake.set()
        return item

    def withdraw(self, submitted: Submitted) -> bool:
        """Takes a submitted request back, if its batch has not started (then its answer never
        comes); False once it has (its answer comes with its batch's)."""
        item = cast("_Item", submitted)
        if item.taken or self._stopped:
            return False
        item.token = None  # no answer for it, even if it was already in a batch's list
        self._drop(item)
        return True

    def _drop(self, item: _Item) -> None:
        group = item.group
        with contextlib.suppress(ValueError):
            group.items.remove(item)
        if group.items:
            return
        queue = self._queues.get(group.key)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(group)
            if not queue:
                del self._queues[group.key]

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                await self._serve(tg)
        finally:
            self._stopped = True
            stopped = RuntimeError("the model's batcher stopped")
            for queue in self._queues.values():
                for group in queue:
                    _answer_all(group.items, stopped)
                    _wake_all(group, self.on_answers)
            self._queues.clear()

    def _next_batch(self) -> tuple[Hashable, float]:
        """The batch key to run next, and when: its oldest request's arrival when the batch
        is full (or others wait behind it), else that arrival + ``max_batch_time``.
        (None, inf) when nothing waits."""
        best: Hashable = None
        due = math.inf
        for key, queue in self._queues.items():
            head = queue[0]
            at = head.arrived
            if len(head.items) < self.max_batch_size and len(queue) == 1:
                at += self.max_batch_time
            if at < due:
                best, due = key, at
        return best, due

    async def _serve(self, tg: anyio.abc.TaskGroup) -> None:
        while True:
            due = math.inf
            if self._running < self.concurrent_batches:
                key, due = self._next_batch()
                if due <= anyio.current_time():
                    self._start(tg, key)
                    continue
            # Wait for a request, a free slot, or the open batch's time: whichever comes first.
            self._wake = anyio.Event()
            with anyio.CancelScope(deadline=due):
                await self._wake.wait()

    def _start(self, tg: anyio.abc.TaskGroup, key: Hashable) -> None:
        queue = self._queues[key]
        group = queue.popleft()
        if not queue:
            del self._queues[key]
        for item in group.items:
            item.taken = True
        self._running += 1
        tg.start_soon(self._run_batch, group)

    async def _run_batch(self, group: _Group) -> None:
        """One batch in one call slot; if the batch fails, its requests run one by one.
        Its callers are woken together once every request has its answer."""
        items = group.items
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
            # cancelled (the batcher stopping): nobody waits forever
            _answer_all(items, RuntimeError("the model's batcher stopped"))
            _wake_all(group, self.on_answers)

    async def _call(self, items: list[_Item]) -> bool:
        """One model call for ``items``; False when a batch of several failed (nobody told)."""
        requests = [item.request for item in items]
        if self._on_batch is not None:
            self._on_batch(len(items))
        try:
            if len(items) == 1:
                request = requests[0]
                if isinstance(request, LaidRequest):
                    request = request.build()
                items[0].response = await self._predict(request)
                return True
            parts = split_rows(await self._predict(merge_requests(requests)), requests)
        except Exception as error:
            if len(items) == 1:
                items[0].error = error
                return True
            logger.info(
                "batch.failed size=%d error=%s; running its jobs one by one",
                len(items),
                type(error).__name__,
            )
            return False
        for item, rows in zip(items, parts, strict=True):
            if item.token is not None:  # submitted: encoded from its rows as they are
                item.rows = rows
            else:
                item.response = rows.build(item.request.id)
        return True
