"""BYTES inputs (text: a list of bin or str items) in a read's layout (``wire.layout``): each
request is what ``decode_job`` gives it alone, for items of every length and header size, on
every mutation of one byte of an envelope; and the batch merged from their bytes
(``LaidRequest.items``) is the batch merged from the built requests."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from conveyor.batching import merge_requests
from conveyor.broker.wire import decode_job
from conveyor.broker.wire.layout import JobDecoder
from conveyor.codecs import NumpyCodec, StringCodec
from conveyor.laid_requests import LaidRequest
from conveyor.types import InferenceRequest, RequestInput
from tests.unit.test_laid_requests import _built_read, _laid_read, _merged_state
from tests.unit.test_wire_layout import (
    _entry,
    _same_read,
    _state,
    every_mutation_decodes_as_alone,
)

# Items of every msgpack header (fixstr, bin 8, str 8 and bin 16, str 16), empty and not ASCII.
_TEXTS = ["a dog", "", "x" * 31, "y" * 32, "z" * 300, "é-ß-✓ naïve", "w" * 70_000, "end"]


def _text(i: int, *, binary: bool = True, request_id: str | None = None) -> InferenceRequest:
    """One sentence (bytes or str items) and a small numeric input after it."""
    text = _TEXTS[i % len(_TEXTS)]
    items: list[Any] = [text.encode() if binary else text]
    return InferenceRequest(
        id=request_id,
        inputs=[
            RequestInput(name="text", shape=[1, 1], datatype="BYTES", data=items),
            NumpyCodec.encode_input("n", np.arange(2, dtype=np.int32) + i),
        ],
    )


def _pair(i: int, **kind: Any) -> InferenceRequest:
    """Two sentences a request, then a third input of text."""
    request = _text(i, **kind)
    second = _TEXTS[(i + 3) % len(_TEXTS)].encode()
    request.inputs[0] = RequestInput(
        name="text", shape=[2], datatype="BYTES", data=[second, _TEXTS[i % len(_TEXTS)].encode()]
    )
    request.inputs.append(StringCodec.encode_input("tail", [f"tail {i}"]))
    return request


_MAKERS = {
    "bin items": lambda i: _text(i),
    "str items": lambda i: _text(i, binary=False),
    "with ids": lambda i: _text(i, request_id=f"req-{'9' * i}"),
    "two texts and three inputs": _pair,
}


@pytest.mark.parametrize("make", _MAKERS.values(), ids=_MAKERS.keys())
def test_text_requests_are_those_decoded_alone_and_laid_out(make: Any) -> None:
    entries = [_entry(i, request=make(i)) for i in range(len(_TEXTS) + 2)]
    _same_read(entries)
    decoder = JobDecoder()
    laid = []
    for fields in entries:
        decoder.decode(fields)
        laid.append(decoder.laid_out)
    assert laid == [False] + [True] * (len(entries) - 1)  # the later ones: the first's layout


@pytest.mark.parametrize("make", _MAKERS.values(), ids=_MAKERS.keys())
def test_laid_text_requests_build_and_merge_as_the_built_ones(make: Any) -> None:
    entries = [_entry(i, request=make(i)) for i in range(len(_TEXTS))]
    laid = _laid_read(entries)
    built = _built_read(entries)
    assert all(isinstance(request, LaidRequest) for request in laid)
    for one, other in zip(laid, built, strict=True):
        assert _state(one.build()) == _state(other)
    laid = _laid_read(entries)  # a fresh read: merged from the items, none built but the first
    merged = merge_requests(laid)
    assert _merged_state(merged) == _merged_state(merge_requests(built))
    assert [request._built is None for request in laid[1:]] == [True] * (len(laid) - 1)
    text = merged.inputs[0]  # one list of the requests' items, as MLServer merges list data
    assert type(text.data.root) is list
    assert text.shape[0] == sum(request.inputs[0].shape[0] for request in built)
    assert len(text.data.root) == math.prod(text.shape)


def test_each_text_request_s_items_are_its_own() -> None:
    decoder = JobDecoder()
    _, second, third = (decoder.decode(_entry(i, request=_text(i))).args[0] for i in range(3))
    assert isinstance(second, InferenceRequest)
    assert isinstance(third, InferenceRequest)
    second.inputs[0].data.root.append(b"changed")
    assert third.inputs[0].data.root == [_TEXTS[2].encode()]


@pytest.mark.parametrize("make", [_MAKERS["with ids"], _pair], ids=["one text", "two texts"])
@pytest.mark.parametrize("kind", ["flip", "truncate", "extend"])
def test_every_byte_of_a_text_envelope_decodes_as_alone(make: Any, kind: str) -> None:
    every_mutation_decodes_as_alone(_entry(1, request=make(1)), _entry(5, request=make(5)), kind)


def _inputs(*parts: RequestInput) -> InferenceRequest:
    return InferenceRequest(inputs=list(parts))


@pytest.mark.parametrize(
    "request_",
    [
        _inputs(RequestInput(name="t", shape=[2], datatype="BYTES", data=[b"a", "b"])),  # mixed
        _inputs(RequestInput(name="t", shape=[2], datatype="BYTES", data=[b"ab"])),  # one buffer
        _inputs(RequestInput(name="t", shape=[0], datatype="BYTES", data=[])),  # empty
        _inputs(RequestInput(name="t", shape=[1], datatype="BYTES", data=[[b"a"]])),  # nested
        _inputs(RequestInput(name="t", shape=[1], datatype="FP32", data=["1.5"])),  # not BYTES
        _inputs(StringCodec.encode_input("t", ["same"]), StringCodec.encode_input("u", ["same"])),
    ],
    ids=["mixed", "one buffer", "empty", "nested", "not BYTES", "twice the same"],
)
def test_odd_text_inputs_give_no_layout(request_: InferenceRequest) -> None:
    entries = [_entry(i, request=request_) for i in range(3)]
    _same_read(entries)
    decoder = JobDecoder()
    for fields in entries:
        decoder.decode(fields)
    assert decoder._layout is None
    assert decode_job(entries[0]).args[0] is not None


def _sentences(i: int, count: int) -> InferenceRequest:
    """``count`` sentences (shape [count, 1]) and _text's numeric input."""
    request = _text(i)
    items = [f"{_TEXTS[(i + k) % len(_TEXTS)]} {k}".encode() for k in range(count)]
    request.inputs[0] = RequestInput(name="text", shape=[count, 1], datatype="BYTES", data=items)
    return request


def test_laid_text_requests_of_two_layouts_merge_as_the_built_ones() -> None:
    """Two reads' layouts whose requests differ in rows only share a batch (the same batch
    key): their items merge, each request with its own rows."""
    ones = [_entry(i, request=_sentences(i, 1)) for i in range(3)]
    twos = [_entry(i, request=_sentences(i, 2)) for i in range(3, 6)]
    laid = _laid_read(ones) + _laid_read(twos)
    built = _built_read(ones) + _built_read(twos)
    assert all(isinstance(request, LaidRequest) for request in laid)
    merged = merge_requests(laid)
    assert _merged_state(merged) == _merged_state(merge_requests(built))
    assert merged.inputs[0].shape == [3 + 2 * 3, 1]
