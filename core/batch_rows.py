"""The worker's batch: many requests as one, and one response back as many, by rows.

``conveyor.worker.batcher`` batches only requests that agree on everything but their rows, so
:func:`merge_requests` stacks their inputs along the first axis (numeric data as one array, a
BYTES input's items as one list, as MLServer merges list data) and :func:`split_rows` cuts
each output by rows, strictly. Re-exported by :mod:`conveyor.batching`, beside MLServer's
``BatchedRequests``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pydantic

from conveyor.codecs import NumpyCodec
from conveyor.codecs.numpy import _DATATYPE_TO_DTYPE
from conveyor.laid_requests import LaidRequest, stack_laid
from conveyor.types import (
    InferenceRequest,
    InferenceResponse,
    RequestInput,
    ResponseOutput,
    TensorData,
)

__all__ = ("Rows", "merge_requests", "split_response", "split_rows")

_M = TypeVar("_M", bound=pydantic.BaseModel)

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


def _flat_items(root: Any, shape: list[int]) -> bool:
    """Whether a BYTES tensor's data is its items as they come off the wire: a flat list of
    bytes or str, one for each element of ``shape``."""
    return (
        type(root) is list
        and bool(shape)
        and len(root) == math.prod(shape)
        and all(type(item) is bytes or type(item) is str for item in root)
    )


def _items(parts: Sequence[RequestInput]) -> list[Any] | None:
    """BYTES inputs' items, one list, as MLServer merges list data, when every part's data is
    a flat list of items (``_flat_items``); else None (stacked as arrays). A list, not a
    fixed-width array: that would be as wide as the longest item for every item, 256 times a
    long sentence's bytes in a batch of 256."""
    items: list[Any] = []
    for part in parts:
        if not _flat_items(part.data.root, part.shape):
            return None
        items += part.data.root
    return items


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
    parameters and outputs are the batch's. Numeric data is stacked as one array; a BYTES
    input's items (flat lists of bytes or str) are joined into one list, as MLServer merges
    list data. What is built here is made of validated parts (names, datatypes and parameters
    of a validated request, shapes of the stacked data), so it is constructed without
    validating it again (``model_construct``: same fields set). Requests not yet built
    (:class:`LaidRequest`, the worker's) are stacked from their bytes, or their items, when
    all are (``stack_laid``: the same arrays); the first is built for its fields.
    """
    head = requests[0]
    first = head.build() if isinstance(head, LaidRequest) else head
    laid = [request for request in requests if isinstance(request, LaidRequest)]
    if laid and len(laid) < len(requests):  # a mix (rare): each built
        requests = [r.build() if isinstance(r, LaidRequest) else r for r in requests]
        laid = []
    inputs = []
    for index, request_input in enumerate(first.inputs):
        data: npt.NDArray[Any] | list[Any] | None = None
        if request_input.datatype == "BYTES" and laid:  # their items, one list
            data = [item for request in laid for item in request.items(index)]
            # each row's items: at least one (a laid input has an item for each element)
            tail = request_input.shape[1:]
            shape = [len(data) // math.prod(tail), *tail]
        elif request_input.datatype == "BYTES":
            parts = [request.inputs[index] for request in requests]  # type: ignore[union-attr]
            data = _items(parts)
            shape = [sum(part.shape[0] for part in parts), *request_input.shape[1:]]
        if data is None:
            stacked: npt.NDArray[Any]  # (an array: mypyc's build sees numpy's types as Any)
            if laid:
                dtype = _DTYPES[request_input.datatype]
                stacked = stack_laid(laid, index, dtype, request_input.shape[1:])
            else:
                stacked = _stack([request.inputs[index] for request in requests])  # type: ignore[union-attr]
            data, shape = stacked, list(stacked.shape)
        inputs.append(
            _built(
                RequestInput,
                {
                    "name": request_input.name,
                    "shape": shape,
                    "datatype": request_input.datatype,
                    "parameters": request_input.parameters,
                    "data": _built(TensorData, {"root": data}),
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


def _text_rows(output: ResponseOutput) -> npt.NDArray[Any] | None:
    """A BYTES output's items (a flat list of bytes or str, one for each element of its shape)
    as an object array of its shape, to cut rows from; else None. Not a fixed-width array:
    that would be as wide as the batch's longest item for every item."""
    root = output.data.root
    if output.datatype != "BYTES" or not _flat_items(root, output.shape):
        return None
    array = np.empty(len(root), dtype=object)
    array[:] = root
    return array.reshape(output.shape)


def split_rows(
    response: InferenceResponse, requests: Sequence[InferenceRequest | LaidRequest]
) -> list[Rows]:
    """The merged response's rows of each request (by their row counts), each output decoded
    once. Raises ValueError when an output's first dimension is not the batch's total rows."""
    sizes = [_rows(request) for request in requests]
    total = sum(sizes)
    arrays = []
    for output in response.outputs:
        array = _text_rows(output)
        if array is None:
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
