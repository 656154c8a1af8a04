"""Requests kept as the wire's bytes (``LaidRequest``, the batch path's) give exactly what the
built requests give: each one's ``build()`` is the request ``decode_job`` (then ``give_id``)
makes, and the batch merged from their bytes is the batch merged from the built requests,
array flags included, so the model gets the same request and the answers are the same."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from conveyor.batching import merge_requests, split_rows
from conveyor.broker.wire import decode_job
from conveyor.broker.wire.layout import JobDecoder
from conveyor.laid_requests import LaidRequest
from conveyor.types import (
    InferenceRequest,
    InferenceResponse,
    Parameters,
    RequestInput,
    ResponseOutput,
)
from conveyor.worker.answers import give_id
from tests.unit.test_wire_layout import _entry, _state


def _request(value: float, rows: int = 1, ids: int = 3, **extra: Any) -> InferenceRequest:
    return InferenceRequest(
        **extra,
        inputs=[
            RequestInput(
                name="x",
                shape=[rows, 4],
                datatype="FP32",
                data=np.full((rows, 4), value, dtype=np.float32),
                parameters=Parameters(content_type="np"),
            ),
            RequestInput(name="n", shape=[ids], datatype="INT64", data=np.arange(ids) + int(value)),
        ],
    )


def _array(array: Any) -> object:
    if type(array) is list:  # a BYTES input's items, merged as MLServer merges list data
        return [(type(item), item) for item in array]
    flags = array.flags
    return (
        array.dtype.str,
        array.shape,
        array.tobytes(),
        flags.writeable,
        flags.c_contiguous,
        flags.owndata,
    )


def _merged_state(request: InferenceRequest) -> object:
    arrays = [_array(part.data.root) for part in request.inputs]
    return _state(request), arrays


def _laid_read(entries: list[dict[bytes, bytes]]) -> list[Any]:
    decoder = JobDecoder(lazy=True)
    requests = []
    for fields in entries:
        job = decoder.decode(fields)
        request = job.args[0]
        if isinstance(request, LaidRequest):
            if request.id is None:
                request.id = job.id
        else:
            give_id(request, job)
        requests.append(request)
    return requests


def _built_read(entries: list[dict[bytes, bytes]]) -> list[InferenceRequest]:
    requests = []
    for fields in entries:
        job = decode_job(fields)
        request = job.args[0]
        assert isinstance(request, InferenceRequest)
        give_id(request, job)
        requests.append(request)
    return requests


@pytest.mark.parametrize(
    "make",
    [
        lambda i: _request(float(i)),
        lambda i: _request(float(i), rows=3, ids=2),  # inputs of other first dimensions
        lambda i: _request(float(i), id="caller-id"),  # the caller's own id, kept
    ],
)
def test_laid_requests_build_and_merge_as_the_built_ones(make: Any) -> None:
    entries = [_entry(i, request=make(i)) for i in range(6)]
    laid = _laid_read(entries)
    built = _built_read(entries)
    assert all(isinstance(request, LaidRequest) for request in laid)  # the first one too
    for one, other in zip(laid, built, strict=True):
        assert _state(one.build()) == _state(other)
        assert one.build() is one.build()  # built once
        assert one.rows == other.inputs[0].shape[0]
    # a fresh read: merged from bytes, without building any but the first
    laid = _laid_read(entries)
    merged = merge_requests(laid)
    assert _merged_state(merged) == _merged_state(merge_requests(built))
    assert [r._built is None for r in laid[1:]] == [True] * 5
    # a response of the batch's rows splits alike
    sizes = [(rows.start, rows.size) for rows in split_rows(_as_response(merged), laid)]
    assert sizes == [(rows.start, rows.size) for rows in split_rows(_as_response(merged), built)]


def _as_response(request: InferenceRequest) -> InferenceResponse:
    part = request.inputs[0]
    return InferenceResponse(
        model_name="m",
        outputs=[ResponseOutput(name="y", shape=part.shape, datatype="FP32", data=part.data.root)],
    )


def test_a_mix_of_laid_and_built_requests_merges_as_the_built_ones() -> None:
    entries = [_entry(i, request=_request(float(i))) for i in range(4)]
    entries.append(_entry(9, request=_request(9.0, rows=2)))
    # the last one is another layout's (decoded alone, built); same batch key as the others
    laid = _laid_read(entries[:4]) + _built_read(entries[4:])
    built = _built_read(entries)
    assert _merged_state(merge_requests(laid)) == _merged_state(merge_requests(built))


def test_a_laid_request_alone_is_the_decoded_one() -> None:
    entries = [_entry(i) for i in range(3)]
    laid = _laid_read(entries)
    built = _built_read(entries)
    assert [_state(r.build()) for r in laid] == [_state(r) for r in built]
    array = laid[2].build().inputs[0].data.root
    assert not array.flags.writeable  # read-only over its own bytes, as decoded in full


def test_layouts_whose_bytes_are_not_merged_as_they_are_stay_built() -> None:
    big_endian = InferenceRequest(
        inputs=[RequestInput(name="x", shape=[1, 4], datatype="FP32", data=np.ones((1, 4), ">f4"))]
    )
    entries = [_entry(i, request=big_endian) for i in range(3)]
    laid = _laid_read(entries)
    assert not any(isinstance(request, LaidRequest) for request in laid)
    assert _merged_state(merge_requests(laid)) == _merged_state(
        merge_requests(_built_read(entries))
    )


def test_a_layout_s_batch_key_goes_with_it_from_read_to_read() -> None:
    """The worker keeps a layout's batch key on its decoder (``JobDecoder.key``): the next
    read's decoder has it only while it has the same layout."""
    first = JobDecoder(lazy=True)
    for index in range(3):
        first.decode(_entry(index, request=_request(float(index))))
        if first.laid_out:
            first.key = "the first layout's"
    kept = first.next_read()
    assert kept.key == "the first layout's"
    other = [_entry(index, request=_request(float(index), rows=2)) for index in range(3)]
    for fields in other:  # another layout's jobs only: the first one served none of them
        kept.decode(fields)
    assert not kept.laid_out
    assert kept.next_read().key is None
