"""A batch's answers encoded from the split arrays (``wire.encode_rows``) are the fields
``encode_message`` gives for the response ``split_response`` would build: byte for byte, for
any merged response (parameters, versions, several outputs, requests of several rows, big
arrays in fields of their own)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from conveyor.batching import split_response, split_rows
from conveyor.broker.wire import Message, MessageType, encode_message, encode_rows
from conveyor.broker.wire.rows import RowsEncoder
from conveyor.codecs import NumpyCodec
from conveyor.types import (
    Datatype,
    InferenceRequest,
    InferenceResponse,
    Parameters,
    ResponseOutput,
    TensorData,
)


def _requests(rows: list[int]) -> list[InferenceRequest]:
    return [
        InferenceRequest(
            id=None if i % 2 else f"own-{i}",
            inputs=[NumpyCodec.encode_input("x", np.zeros((n, 3), dtype=np.float32))],
        )
        for i, n in enumerate(rows)
    ]


def _plain(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: bytes(v) if isinstance(v, memoryview) else v for k, v in fields.items()}


def _responses(total: int) -> list[InferenceResponse]:
    x = np.arange(total * 3, dtype=np.float32).reshape(total, 3)
    big = np.arange(total * 4096, dtype=np.int64).reshape(total, 4096)
    return [
        InferenceResponse(model_name="m", outputs=[NumpyCodec.encode_output("y", x)]),
        InferenceResponse(
            model_name="m",
            model_version="v2",
            id="merged",
            parameters=Parameters(content_type="np", extra=1, other=None),
            outputs=[
                NumpyCodec.encode_output("y", x),
                ResponseOutput(name="z", shape=[total], datatype="INT64", data=big[:, 0]),
                ResponseOutput(
                    name="raw", shape=[total, 4096], datatype="INT64", data=big, parameters=None
                ),
            ],
        ),
        InferenceResponse.model_construct(
            model_name="m",
            outputs=[
                ResponseOutput.model_construct(
                    name="e", shape=[total, 3], datatype=Datatype.FP32, data=TensorData(x)
                )
            ],
        ),
    ]


@pytest.mark.parametrize("rows", [[1] * 5, [1, 3, 2], [2], [0, 1, 0, 2]])
def test_the_answers_are_those_of_the_split_responses(rows: list[int]) -> None:
    requests = _requests(rows)
    for response in _responses(sum(rows)):
        built = split_response(response, requests)
        parts = split_rows(response, requests)
        for index, (request, answer, part) in enumerate(zip(requests, built, parts, strict=True)):
            response_id = request.id or f"job-{index}"
            answer.id = response_id  # as the worker's result_message does
            message = Message(MessageType.RESULT, f"job-{index}", 2, payload=answer, entry="1-5")
            expected = _plain(encode_message(message))
            got = _plain(encode_rows(f"job-{index}", 2, "1-5", part, response_id))
            assert got == expected
            assert part.build(response_id) == answer


def test_a_response_that_does_not_split_is_refused_as_before() -> None:
    requests = _requests([1, 2])
    wrong = InferenceResponse(
        model_name="m", outputs=[NumpyCodec.encode_output("y", np.zeros((2, 3), np.float32))]
    )
    with pytest.raises(ValueError, match="not the batch's 3 rows"):
        split_rows(wrong, requests)
    with pytest.raises(ValueError, match="not the batch's 3 rows"):
        split_response(wrong, requests)


def _ids(kind: str, count: int) -> list[str | None]:
    if kind == "same length":
        return [f"job-{index:04d}" for index in range(count)]
    if kind == "other lengths":  # str headers of every size: fixstr, str8, str16, str32
        sizes = [5, 31, 32, 255, 256, 65535, 65536, 3]
        return [f"job-{index}".ljust(sizes[index % len(sizes)], "x") for index in range(count)]
    if kind == "none":
        return [None] * count
    if kind == "mixed":
        return [None if index % 2 else f"id-{index:02d}" for index in range(count)]
    if kind == "later unicode":  # the first ASCII (a template), later ones not
        return [f"jöb-{index}" if index else "job-0" for index in range(count)]
    return [f"jöb-{index}" for index in range(count)]  # not ASCII


@pytest.mark.parametrize(
    "ids", ["same length", "other lengths", "none", "mixed", "unicode", "later unicode"]
)
@pytest.mark.parametrize("rows", [[1] * 9, [1, 3, 1, 1, 2], [2], [0, 1, 0, 2]])
def test_a_batch_s_answers_spliced_are_those_encoded_alone(ids: str, rows: list[int]) -> None:
    requests = _requests(rows)
    extra = [
        # values equal across rows: a span found by the bytes alone would be ambiguous
        InferenceResponse(
            model_name="y",
            outputs=[NumpyCodec.encode_output("y", np.full((sum(rows), 2), 121, np.uint8))],
        ),
        InferenceResponse(
            model_name="s",
            outputs=[NumpyCodec.encode_output("s", np.array(["a"] * sum(rows), dtype=object))],
        ),
    ]
    for response in [*_responses(sum(rows)), *extra]:
        parts = split_rows(response, requests)
        encoder = RowsEncoder()
        for index, (part, response_id) in enumerate(zip(parts, _ids(ids, len(parts)), strict=True)):
            expected = _plain(encode_rows(f"job-{index}", index, "1-5", part, response_id))
            got = _plain(encoder.encode(f"job-{index}", index, "1-5", part, response_id))
            assert got == expected
            assert list(got) == list(expected)  # the fields' order too (packed as it is)


def test_the_common_batch_is_spliced_and_a_bad_answer_fails_as_alone() -> None:
    requests = _requests([1] * 4)
    response = _responses(4)[0]
    parts = split_rows(response, requests)
    encoder = RowsEncoder()
    for index, part in enumerate(parts):
        encoder.encode(f"job-{index}", 1, "", part, f"r-{index}")
    assert encoder._template is not None
    with pytest.raises(UnicodeEncodeError):
        encode_rows("j", 1, "", parts[1], "\ud800")
    with pytest.raises(UnicodeEncodeError):  # not spliced: encoded in full, failing alike
        encoder.encode("j", 1, "", parts[1], "\ud800")
    with pytest.raises(ValueError, match="non-empty"):
        encode_rows("", 1, "", parts[1], "r-1")
    with pytest.raises(ValueError, match="non-empty"):
        encoder.encode("", 1, "", parts[1], "r-1")
