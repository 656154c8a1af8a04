"""Text (BYTES) in a batch: the requests' items merge into one list, as MLServer merges list
data, and a BYTES output is cut by rows from its items, so that one long sentence never
widens its batch-mates (a fixed-width array is as wide as its longest item for every item:
256 times a 1 MB sentence in a batch of 256)."""

from __future__ import annotations

import numpy as np

from conveyor.batching import merge_requests, split_response, split_rows
from conveyor.codecs import StringCodec
from conveyor.types import InferenceRequest, InferenceResponse, ResponseOutput

_LONG = "w" * 1_000_000


def _requests() -> list[InferenceRequest]:
    texts = [f"sentence {i}" for i in range(256)]
    texts[7] = _LONG
    return [
        InferenceRequest(id=f"r{i}", inputs=[StringCodec.encode_input("text", [text])])
        for i, text in enumerate(texts)
    ]


def _upper(request: InferenceRequest) -> InferenceResponse:
    """A text model's answer: its sentences upper-cased, a list of bytes, as StringCodec
    encodes them."""
    sentences = StringCodec.decode_input(request.inputs[0])
    output = StringCodec.encode_output("upper", [s.upper() for s in sentences])
    return InferenceResponse(model_name="m", outputs=[output])


def test_a_long_sentence_does_not_widen_its_batch_mates() -> None:
    requests = _requests()
    merged = merge_requests(requests)
    text = merged.inputs[0]
    assert text.shape == [256, 1]
    assert type(text.data.root) is list
    assert sum(map(len, text.data.root)) < 2 * len(_LONG)  # each item its own length
    assert StringCodec.decode_input(text)[7] == _LONG
    response = _upper(merged)
    rows = split_rows(response, requests)
    assert rows[0].arrays[0].dtype == np.dtype(object)  # cut from the items, not widened
    answers = split_response(response, requests)
    for i, (answer, request) in enumerate(zip(answers, requests, strict=True)):
        assert answer.id == request.id
        (got,) = StringCodec.decode_output(answer.outputs[0])
        assert got == StringCodec.decode_input(request.inputs[0])[0].upper(), i
        assert answer.outputs[0].shape == [1, 1]


def test_text_that_is_not_a_flat_list_of_items_still_merges_as_arrays() -> None:
    nested = InferenceRequest(inputs=[StringCodec.encode_input("text", ["a"])])
    nested.inputs[0].data.root = [[b"a"]]  # a nested list: the codec's path
    array = InferenceRequest(inputs=[StringCodec.encode_input("text", ["bb"])])
    array.inputs[0].data.root = np.array([[b"bb"]])
    merged = merge_requests([nested, array])
    assert merged.inputs[0].shape == [2, 1]
    assert merged.inputs[0].data.root.tolist() == [[b"a"], [b"bb"]]


def test_a_bytes_output_of_another_shape_is_split_by_its_rows() -> None:
    requests = _requests()[:3]
    items = [b"a", b"b", b"c", b"d", b"e", b"f"]
    output = ResponseOutput(name="pairs", shape=[3, 2], datatype="BYTES", data=items)
    answers = split_response(InferenceResponse(model_name="m", outputs=[output]), requests)
    assert [a.outputs[0].data.root.tolist() for a in answers] == [
        [[b"a", b"b"]],
        [[b"c", b"d"]],
        [[b"e", b"f"]],
    ]
