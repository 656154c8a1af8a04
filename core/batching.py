"""Many requests as one, and one response back as many: what adaptive batching runs on.

:func:`merge_requests` and :func:`split_response` are the worker's (``conveyor.batch_rows``:
``conveyor.worker.batcher`` batches only requests that agree on everything but their rows, so
it stacks their inputs and cuts each output by rows, strictly). :class:`BatchedRequests` is
MLServer's ``mlserver.batching.BatchedRequests``, for runtimes that batch by themselves
(MLServer's alibi-detect runtime does): any requests, their parameters merged and split as
MLServer does. Both stack numpy data with one ``np.concatenate`` and hand back views of the
batch's outputs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np

from conveyor.batch_rows import Rows, _stack, merge_requests, split_response, split_rows
from conveyor.types import (
    InferenceRequest,
    InferenceResponse,
    Parameters,
    RequestInput,
    RequestOutput,
    ResponseOutput,
)

__all__ = ("BatchedRequests", "Rows", "merge_requests", "split_response", "split_rows")

# Parameters that a batch shares rather than lists per request (MLServer's rule).
_SHARED_PARAMETERS = ("content_type", "headers")


def _dump(parameters: Parameters | None) -> dict[str, Any]:
    return parameters.model_dump() if parameters is not None else {}


def _merge_input_parameters(
    merged: dict[str, Any], parameters: Parameters | None
) -> dict[str, Any]:
    """MLServer's rule: a parameter more than one input sets becomes the list of their values
    (content_type and headers excepted: the last one is kept)."""
    new = _dump(parameters)
    if not new:
        return merged
    if not merged:
        return new
    common = (merged.keys() & new.keys()) - set(_SHARED_PARAMETERS)
    result: dict[str, Any] = {}
    for key in common:
        old = merged[key]
        result[key] = [*old, new[key]] if isinstance(old, list) else [old, new[key]]
    for key in (merged.keys() | new.keys()) - common:
        result[key] = new[key] if key in new else merged[key]
    return result


def _merge_data(parts: list[Any]) -> Any:
    """MLServer's merge of list data: lists are concatenated, str and bytes joined."""
    sample = parts[0]
    if isinstance(sample, str):
        return "".join(parts)
    if isinstance(sample, bytes):
        return b"".join(parts)
    if isinstance(sample, list):
        return [item for part in parts for item in part]
    return parts


def _with_batch_size(shape: list[int], size: int) -> list[int]:
    return [size, *shape[1:]]


class BatchedRequests:
    """MLServer's ``BatchedRequests``: requests (by an id of the caller's choosing) merged into
    :attr:`merged_request`, and :meth:`split_response` to cut the merged response back.

    Inputs of the same name are concatenated along the first axis: as numpy arrays when any
    of them holds one (one copy; the merged ``data`` is an array), otherwise as MLServer does
    (lists concatenated, str and bytes joined). Parameters are merged as MLServer merges them:
    request-level ones by update; input-level ones that several inputs set become a list of
    their values, which :meth:`split_response` hands back one per request.
    """

    def __init__(self, inference_requests: Mapping[str, InferenceRequest] | None = None) -> None:
        self.inference_requests = dict(inference_requests or {})
        # The requests' own ids, which may be missing or repeated, by the caller's ids.
        self._ids_mapping: dict[str, str | None] = {}
        # Rows (first dimension) of each request's inputs, by the caller's ids.
        self._minibatch_sizes: dict[str, int] = {}
        self.merged_request = self._merge_requests()

    def _merge_requests(self) -> InferenceRequest:
        inputs_index: dict[str, dict[str, RequestInput]] = defaultdict(dict)
        outputs_index: dict[str, dict[str, RequestOutput]] = defaultdict(dict)
        parameters: dict[str, Any] = {}
        has_outputs = False  # no request names outputs: the merged one names none either
        for internal_id, request in self.inference_requests.items():
            self._ids_mapping[internal_id] = request.id
            parameters = {**parameters, **_dump(request.parameters)}
            for request_input in request.inputs:
                inputs_index[request_input.name][internal_id] = request_input
            if request.outputs is not None:
                has_outputs = True
                for request_output in request.outputs:
                    outputs_index[request_output.name][internal_id] = request_output
        inputs = [self._merge_request_inputs(by_id) for by_id in inputs_index.values()]
        outputs = (
            [self._merge_request_outputs(by_id) for by_id in outputs_index.values()]
            if has_outputs
            else None
        )
        return InferenceRequest(
            inputs=inputs,
            outputs=outputs,
            parameters=Parameters(**parameters) if parameters else None,
        )

    def _merge_request_inputs(self, request_inputs: Mapping[str, RequestInput]) -> RequestInput:
        # As MLServer: every input of a request is taken to have the same number of rows.
        parameters: dict[str, Any] = {}
        for internal_id, request_input in request_inputs.items():
            parameters = _merge_input_parameters(parameters, request_input.parameters)
            self._minibatch_sizes[internal_id] = request_input.shape[0]
        parts = list(request_inputs.values())
        sample = parts[0]
        data: Any
        if any(isinstance(part.data.root, np.ndarray) for part in parts):
            data = _stack(parts)
        else:
            data = _merge_data([part.data.root for part in parts])
        return RequestInput(
            name=sample.name,
            datatype=sample.datatype,
            shape=_with_batch_size(sample.shape, sum(part.shape[0] for part in parts)),
            data=data,
            parameters=Parameters(**parameters) if parameters else None,
        )

    def _merge_request_outputs(self, request_outputs: Mapping[str, RequestOutput]) -> RequestOutput:
        parameters: dict[str, Any] = {}
        for request_output in request_outputs.values():
            parameters = {**parameters, **_dump(request_output.parameters)}
        sample = next(iter(request_outputs.values()))
        return RequestOutput(
            name=sample.name, parameters=Parameters(**parameters) if parameters else None
        )

    def split_response(self, batched_response: InferenceResponse) -> dict[str, InferenceResponse]:
        """One response per merged request, by the caller's ids, each with the request's id.

        Each output is cut along its first axis by the requests' rows (views of an array's
        data); the response's parameters go to every response.
        """
        responses: dict[str, InferenceResponse] = {}
        for output in batched_response.outputs:
            for internal_id, part in self._split_response_output(output).items():
                if internal_id not in responses:
                    responses[internal_id] = InferenceResponse(
                        id=self._ids_mapping[internal_id],
                        model_name=batched_response.model_name,
                        model_version=batched_response.model_version,
                        outputs=[],
                        parameters=batched_response.parameters,
                    )
                responses[internal_id].outputs.append(part)
        return responses

    def _split_response_output(self, output: ResponseOutput) -> dict[str, ResponseOutput]:
        merged = output.data.root
        if isinstance(merged, np.ndarray):
            merged = merged.reshape(-1)  # a view of the (contiguous) array
        # As MLServer: the data is read flat, each row being the rest of the shape's elements.
        row_size = math.prod(output.shape[1:])
        parameters = self._split_parameters(output.parameters)
        parts: dict[str, ResponseOutput] = {}
        start = 0
        for internal_id, rows in self._minibatch_sizes.items():
            end = start + rows * row_size
            parts[internal_id] = ResponseOutput(
                name=output.name,
                shape=_with_batch_size(output.shape, rows),
                datatype=output.datatype,
                data=merged[start:end],
                parameters=parameters[internal_id] if parameters is not None else None,
            )
            start = end
        return parts

    def _split_parameters(self, parameters: Parameters | None) -> dict[str, Parameters] | None:
        """MLServer's rule: a list-valued parameter gives each request the element at the
        request's first row (as text); content_type and headers go to every request."""
        if parameters is None:
            return None
        values = _dump(parameters)
        split: dict[str, Parameters] = {}
        row = 0
        for internal_id, rows in self._minibatch_sizes.items():
            own: dict[str, Any] = {}
            for name, value in values.items():
                if not isinstance(value, list) or name in _SHARED_PARAMETERS:
                    own[name] = value
                elif row < len(value) and value[row] != []:
                    own[name] = str(value[row])
            split[internal_id] = Parameters(**own)
            row += rows
        return split
