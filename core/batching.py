"""Many requests as one, and one response back as many: what adaptive batching runs on.

:func:`merge_requests` and :func:`split_response` are the worker's (``conveyor.worker.batcher``
batches only requests that agree on everything but their rows, so it stacks their inputs as
arrays and cuts each output by rows, strictly). :class:`BatchedRequests` is MLServer's
``mlserver.batching.BatchedRequests``, for runtimes that batch by themselves (MLServer's
alibi-detect runtime does): any requests, their parameters merged and split as MLServer does.
Both stack numpy data with one ``np.concatenate`` and hand back views of the batch's outputs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pydantic

from conveyor.codecs import NumpyCodec
from conveyor.codecs.numpy import _DATATYPE_TO_DTYPE
from conveyor.laid_requests import LaidRequest, stack_laid, stack_laid_items
from conveyor.types import (
    InferenceRequest,
    InferenceResponse,
    Parameters,
    RequestInput,
    RequestOutput,
    ResponseOutput,
    TensorData,
)

__all__ = ("BatchedRequests", "Rows", "merge_requests", "split_response", "split_rows")

_M = TypeVar("_M", bound=pydantic.BaseModel)

# Parameters that a batch shares rather than lists per request (MLServer's rule).
_SHARED_PARAMETERS = ("content_type", "headers")

# The dtype a numeric datatype decodes to (native byte order), by the datatype's value.
_DTYPES: dict[str, np.dtype[Any]] = {
    datatype.value: dtype for datatype, dtype in _DATATYPE_TO_DTYPE.items()
}


# Building a model from parts that are valid already, as ``model_construct`` does but ~4x
# faster (pydantic 2.14: model_construct of a ResponseOutput took 5.7 us, a validated
# ResponseOutput(...) 3.1 us, this 1.4 us). It sets the attributes pydantic documents on every
# instance: __dict__ (the fields), __pydantic_fields_set__, __pydantic_extra__ (None: none of
# these models allows extra fields) and __pydantic_private__ (None: no private attributes).
# tests/unit/test_batched_requests.py checks that what it builds equals, dumps and compares as
# the validated model does.
_new = object.__new__
_set = object.__setattr__
_REQUEST_SET = frozenset(("parameters", "inputs", "outputs"))  # as InferenceRequest(...) had


def _built(cls: type[_M], values: dict[str, Any], fields_set: frozenset[str] | None = None) -> _M:
    built = _new(cls)
    _set(built, "__dict__", values)
    _set(built, "__pydantic_fields_set__", set(values if fields_set is None else fields_set))
    if not cls.__pydantic_root_model__:  # a root model has neither (they would land in __dict__)
        _set(built, "__pydantic_extra__", None)
        _set(built, "__pydantic_private__", None)
    return built


def _data(array: npt.NDArray[Any]) -> TensorData:
    return _built(TensorData, {"root": array})


def _array_of(part: RequestInput) -> npt.NDArray[Any]:
    """The part's data as an array of its shape and datatype: the wire's own array when it
    already is one (what a worker's requests hold: the wire checked its dtype and shape),
    else what ``NumpyCodec.decode_input`` makes of it."""
    root = part.data.root
    if (
        type(root) is np.ndarray
        and root.dtype == _DTYPES.get(part.datatype)
        and list(root.shape) == part.shape
    ):
        return root
    return NumpyCodec.decode_input(part)


def _stack(parts: Sequence[RequestInput]) -> npt.NDArray[Any]:
    """The parts' data as arrays of their shapes, stacked along the first axis (one copy)."""
    return np.concatenate([_array_of(part) for part in parts], axis=0)


def _rows(request: InferenceRequest | LaidRequest) -> int:
    if isinstance(request, LaidRequest):
        return request.rows
    return int(request.inputs[0].shape[0]) if request.inputs and request.inputs[0].shape else 0


def merge_requests(requests: Sequence[InferenceRequest | LaidRequest]) -> InferenceRequest:
    """One request whose inputs are the given requests' inputs stacked along axis 0.

    The requests must agree on everything but their first dimension: the first one's
    parameters and outputs are the batch's. What is built here is made of validated parts
    (names, datatypes and parameters of a validated request, shapes of the stacked array),
    so it is constructed without validating it again (``model_construct``: same fields set).
    Requests not yet built (:class:`LaidRequest`, the worker's) are stacked from their bytes
    when all are (``stack_laid``: the same arrays); the first is built for its fields.
    """
    head = requests[0]
    first = head.build() if isinstance(head, LaidRequest) else head
    laid = [request for request in requests if isinstance(request, LaidRequest)]
    if laid and len(laid) < len(requests):  # a mix (rare): each built
        requests = [r.build() if isinstance(r, LaidRequest) else r for r in requests]
        laid = []
    inputs = []
    for index, request_input in enumerate(first.inputs):
        if laid and request_input.datatype == "BYTES":  # its items
            merged = stack_laid_items(laid, index, request_input.shape[1:])
        elif laid:
            dtype = _DTYPES[request_input.datatype]
            merged = stack_laid(laid, index, dtype, request_input.shape[1:])
        else:
            merged = _stack([request.inputs[index] for request in requests])  # type: ignore[union-attr]
        inputs.append(
            _built(
                RequestInput,
                {
                    "name": request_input.name,
                    "shape": list(merged.shape),
                    "datatype": request_input.datatype,
                    "parameters": request_input.parameters,
                    "data": _data(merged),
                },
            )
        )
    return _built(
        InferenceRequest,
        {"id": None, "parameters": first.parameters, "inputs": inputs, "outputs": first.outputs},
        _REQUEST_SET,
    )


class Rows:
    """One request's rows of a merged response, not yet a response of its own: ``response``'s
    fields, each output's ``arrays[i][start : start + size]``. :func:`split_rows` makes them,
    :meth:`response` builds the response :func:`split_response` would (and the wire can
    encode one without building it: ``conveyor.broker.wire.encode_rows``)."""

    __slots__ = ("arrays", "response", "size", "start")

    def __init__(
        self, response: InferenceResponse, arrays: list[npt.NDArray[Any]], start: int, size: int
    ) -> None:
        self.response = response  # the merged one
        self.arrays = arrays  # each output's data, decoded once for the batch
        self.start = start
        self.size = size

    def build(self, request_id: str | None) -> InferenceResponse:
        """The request's own response, with ``request_id``, as :func:`split_response` makes it."""
        response, start, end = self.response, self.start, self.start + self.size
        outputs = []
        for output, array in zip(response.outputs, self.arrays, strict=True):
            part = {
                "name": output.name,
                "shape": [self.size, *array.shape[1:]],
                "datatype": output.datatype,
                "parameters": output.parameters,
                "data": _data(array[start:end]),
            }
            outputs.append(_built(ResponseOutput, part))
        values = {
            "model_name": response.model_name,
            "model_version": response.model_version,
            "id": request_id,
            "parameters": response.parameters,
            "outputs": outputs,
        }
        return _built(InferenceResponse, values)


def split_rows(
    response: InferenceResponse, requests: Sequence[InferenceRequest | LaidRequest]
) -> list[Rows]:
    """The merged response's rows of each request (by their row counts), each output decoded
    once. Raises ValueError when an output's first dimension is not the batch's total rows."""
    sizes = [_rows(request) for request in requests]
    total = sum(sizes)
    arrays = []
    for output in response.outputs:
        array = NumpyCodec.decode_output(output)
        if array.ndim == 0 or array.shape[0] != total:
            raise ValueError(
                f"output {output.name!r} has shape {list(array.shape)}: its first dimension "
                f"is not the batch's {total} rows, so it cannot be split per request"
            )
        arrays.append(array)
    rows = []
    at = 0
    for size in sizes:
        rows.append(Rows(response, arrays, at, size))
        at += size
    return rows


def split_response(
    response: InferenceResponse, requests: Sequence[InferenceRequest]
) -> list[InferenceResponse]:
    """The merged response cut back into one response per request (by their row counts).

    Each output is decoded once and cut into views, in one pass; the responses are built from
    those views and the response's own validated fields, without validating them again.
    Raises ValueError when an output's first dimension is not the batch's total rows.
    """
    return [
        rows.build(request.id)
        for rows, request in zip(split_rows(response, requests), requests, strict=True)
    ]


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
