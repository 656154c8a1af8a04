"""A request kept as the wire's bytes until a model needs it (the worker's batch path).

A worker's batch of 256 single-row calls spent ~5 us a request building each request's four
pydantic models (``InferenceRequest``, ``RequestInput``, ``TensorData``, ``Parameters``) that
only merging them into the batch's request read. A :class:`LaidRequest` is one request whose
envelope the wire has proven to be a known layout's (``conveyor.broker.wire.layout``): its
inputs' data are bytes of the datatype's own dtype, in C order, of a known shape. So
:func:`conveyor.batching.merge_requests` stacks those bytes straight into the batch's tensors
(:func:`stack_laid`) and the model gets the merged request it got before; :meth:`build`
makes the request that decoding the entry in full gives, for when a model needs it alone (a
batch of one, a failed batch rerun one by one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from conveyor.types import InferenceRequest

__all__ = ("LaidRequest", "stack_laid")


class LaidRequest:
    """One ``predict`` request, not yet built (see the module's docstring). Not an ABC: an
    ABC's isinstance check, made for each request of a batch, costs ~10x a plain class's."""

    def __init__(self, request_id: str | None, rows: int) -> None:
        self.id = request_id  # given the job's, as ``give_id`` does, before it runs
        self.rows = rows  # its first input's first dimension: its rows of the batch's response

    def data(self, index: int) -> bytes | memoryview:
        """Input ``index``'s data: its datatype's own dtype, C order, of its shape."""
        raise NotImplementedError

    def items(self, index: int) -> list[bytes] | list[str]:
        """BYTES input ``index``'s items, one for each element of its shape, all bytes or
        all str (as decoding the entry in full gives them)."""
        raise NotImplementedError

    def build(self) -> InferenceRequest:
        """The request itself, with :attr:`id`, as decoding its entry in full (then
        ``give_id``) makes it; built once."""
        raise NotImplementedError


def stack_laid(
    requests: Sequence[LaidRequest], index: int, dtype: np.dtype[Any], tail: Sequence[int]
) -> npt.NDArray[Any]:
    """Input ``index`` of every request stacked along the first axis: the array that
    ``np.concatenate`` of the built requests' arrays gives (own data, writable, C order),
    made from their bytes with one join and one copy."""
    joined = b"".join([request.data(index) for request in requests])
    return np.frombuffer(joined, dtype).reshape((-1, *tail)).copy()
