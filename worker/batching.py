"""Adaptive batching: many jobs' ``predict`` requests run as one call of the model.

MLServer's ``max_batch_size`` / ``max_batch_time``, across clients: requests that arrive
within ``max_batch_time`` of the first (and no more than ``max_batch_size`` of them) are
merged along the first axis, ``predict`` runs once, and its outputs are split back so each
job gets its own response, with its own id. Requests whose inputs cannot merge (other
names, datatypes, trailing shapes or parameters) run as separate batches.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import numpy as np

from conveyor.codecs import NumpyCodec
from conveyor.types import InferenceRequest, InferenceResponse, RequestInput, ResponseOutput

__all__ = ("AdaptiveBatcher", "merge_requests", "split_response")

logger = logging.getLogger(__name__)

Predict = Callable[[InferenceRequest], Awaitable[InferenceResponse]]


@dataclass(eq=False)
class _Item:
    request: InferenceRequest
    done: anyio.Event = field(default_factory=anyio.Event)
    response: InferenceResponse | None = None
    error: BaseException | None = None


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


def _rows(request: InferenceRequest) -> int:
    return int(request.inputs[0].shape[0]) if request.inputs and request.inputs[0].shape else 0


def merge_requests(requests: Sequence[InferenceRequest]) -> InferenceRequest:
    """One request whose inputs are the given requests' inputs stacked along axis 0."""
    first = requests[0]
    inputs = []
    for index, request_input in enumerate(first.inputs):
        parts = [NumpyCodec.decode_input(request.inputs[index]) for request in requests]
        merged = np.concatenate(parts, axis=0)
        inputs.append(
            RequestInput(
                name=request_input.name,
                shape=list(merged.shape),
                datatype=request_input.datatype,
                parameters=request_input.parameters,
                data=merged,
            )
        )
    return InferenceRequest(parameters=first.parameters, inputs=inputs, outputs=first.outputs)


def split_response(
    response: InferenceResponse, requests: Sequence[InferenceRequest]
) -> list[InferenceResponse]:
    """The merged response cut back into one response per request (by their row counts).

    Raises ValueError when an output's first dimension is not the batch's total rows.
    """
    sizes = [_rows(request) for request in requests]
    total = sum(sizes)
    bounds = np.cumsum(sizes)[:-1]
    per_request: list[list[ResponseOutput]] = [[] for _ in requests]
    for output in response.outputs:
        array = NumpyCodec.decode_output(output)
        if array.ndim == 0 or array.shape[0] != total:
            raise ValueError(
                f"output {output.name!r} has shape {list(array.shape)}: its first dimension "
                f"is not the batch's {total} rows, so it cannot be split per request"
            )
        for outputs, part in zip(per_request, np.split(array, bounds), strict=True):
            outputs.append(
                ResponseOutput(
                    name=output.name,
                    shape=list(part.shape),
                    datatype=output.datatype,
                    parameters=output.parameters,
                    data=part,
                )
            )
    return [
        InferenceResponse(
            model_name=response.model_name,
            model_version=response.model_version,
            id=request.id,
            parameters=response.parameters,
            outputs=outputs,
        )
        for request, outputs in zip(requests, per_request, strict=True)
    ]


class AdaptiveBatcher:
    """Collects ``predict`` requests for one model and runs them in batches.

    ``predict`` waits for the request's own response (or raises its own error). ``run``
    must run in a task group for as long as the model serves.
    """

    def __init__(
        self,
        predict: Predict,
        max_batch_size: int,
        max_batch_time: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._predict = predict
        self._on_batch = on_batch
        self.max_batch_size = max_batch_size
        self.max_batch_time = max_batch_time
        self._send, self._receive = anyio.create_memory_object_stream[_Item](max_batch_size * 4)

    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        item = _Item(request)
        await self._send.send(item)
        await item.done.wait()
        if item.error is not None:
            raise item.error
        assert item.response is not None
        return item.response

    async def run(self) -> None:
        with self._send, self._receive:
            await self._serve()

    async def _serve(self) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                items = [await self._receive.receive()]
                # Wait for the batch to fill, at most max_batch_time after its first request,
                # and never once it is full.
                with anyio.move_on_after(self.max_batch_time):
                    while len(items) < self.max_batch_size:
                        items.append(await self._receive.receive())
                groups: dict[str, list[_Item]] = {}
                for item in items:
                    groups.setdefault(_batch_key(item.request), []).append(item)
                for group in groups.values():
                    tg.start_soon(self._run_batch, group)

    async def _run_batch(self, items: list[_Item]) -> None:
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
                items[0].error = error
                items[0].done.set()
                return
            # Which request broke the batch? Run each alone: each gets its own answer.
            logger.info(
                "batch.failed size=%d error=%s; running its jobs one by one",
                len(items),
                type(error).__name__,
            )
            async with anyio.create_task_group() as tg:
                for item in items:
                    tg.start_soon(self._run_batch, [item])
            return
        for item, response in zip(items, responses, strict=True):
            item.response = response
            item.done.set()
