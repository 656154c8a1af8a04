"""Requests and answers for tests: one input ``x``, request parameters by keyword."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal, TypeVar

import numpy as np

from conveyor.types import InferenceRequest, InferenceResponse, Parameters, RequestInput

T = TypeVar("T")

_DTYPES = {"FP32": "f4", "FP64": "f8"}


def request(
    data: object = 1.0,
    *,
    name: str = "x",
    datatype: Literal["FP32", "FP64"] = "FP32",
    **params: Any,
) -> InferenceRequest:
    """One input ``name`` holding ``data`` (a number or an array-like, shape as given, at least
    one dimension); ``params`` become the request's parameters (``sleep=0.5``)."""
    array = np.atleast_1d(np.asarray(data, dtype=_DTYPES[datatype]))
    return InferenceRequest(
        parameters=Parameters(**params) if params else None,
        inputs=[RequestInput(name=name, shape=list(array.shape), datatype=datatype, data=array)],
    )


async def one(payload: InferenceRequest) -> AsyncIterator[InferenceRequest]:
    """The input of a ``predict_stream`` call that sends one request."""
    yield payload


def output(response: InferenceResponse, name: str | None = None) -> float:
    """The first value of the output ``name`` (by default the first output)."""
    for out in response.outputs:
        if name is None or out.name == name:
            return float(np.asarray(out.data.root).ravel()[0])
    raise AssertionError(f"no output {name!r} in {[o.name for o in response.outputs]}")


def generator(stream: AsyncIterator[T]) -> AsyncGenerator[T]:
    """``stream`` (``predict_stream``'s answer, typed as an iterator) as the async generator it
    is, for ``contextlib.aclosing``; fails if it is not one."""
    assert isinstance(stream, AsyncGenerator), type(stream)
    return stream
