"""The batch path's shortcuts answer exactly as the validated path did: merged requests and
split responses built without validation equal, dump and compare as validated models; batch
keys built without JSON merge exactly the requests the JSON keys merged."""

from __future__ import annotations

import numpy as np
import pytest

from conveyor.batching import merge_requests, split_response
from conveyor.codecs import NumpyCodec
from conveyor.types import (
    InferenceRequest,
    InferenceResponse,
    Parameters,
    RequestInput,
    RequestOutput,
    ResponseOutput,
)
from conveyor.worker.batcher import _batch_key


def _wire_request(i: int, rows: int = 1) -> InferenceRequest:
    """As the wire decodes one: its data a read-only array of its shape."""
    data = np.frombuffer(np.full((rows, 3), i, "<f4").tobytes(), "<f4").reshape(rows, 3)
    return InferenceRequest(
        id=f"r{i}",
        inputs=[
            RequestInput(
                name="x",
                shape=[rows, 3],
                datatype="FP32",
                data=data,
                parameters=Parameters(content_type="np"),
            )
        ],
    )


def _echo(request: InferenceRequest) -> InferenceResponse:
    return InferenceResponse(
        model_name="m",
        model_version="1",
        parameters=Parameters(headers={"h": 1}),
        outputs=[
            ResponseOutput(
                name=i.name,
                shape=i.shape,
                datatype=i.datatype,
                parameters=i.parameters,
                data=NumpyCodec.decode_input(i) * 2,
            )
            for i in request.inputs
        ],
    )


def _same(built: object, validated: object) -> None:
    assert built == validated
    assert type(built) is type(validated)
    assert built.model_fields_set == validated.model_fields_set  # type: ignore[attr-defined]
    assert built.model_dump_json() == validated.model_dump_json()  # type: ignore[attr-defined]
    assert built.__pydantic_extra__ == validated.__pydantic_extra__  # type: ignore[attr-defined]


def test_merged_and_split_models_are_those_validation_would_give() -> None:
    requests = [_wire_request(i, rows) for i, rows in enumerate((1, 3, 1))]
    merged = merge_requests(requests)
    stacked = np.concatenate([NumpyCodec.decode_input(r.inputs[0]) for r in requests])
    validated = InferenceRequest(
        parameters=None,
        inputs=[
            RequestInput(
                name="x",
                shape=[5, 3],
                datatype="FP32",
                parameters=Parameters(content_type="np"),
                data=stacked,
            )
        ],
        outputs=None,
    )
    _same(merged, validated)
    _same(merged.inputs[0], validated.inputs[0])
    responses = split_response(_echo(merged), requests)
    for request, response in zip(requests, responses, strict=True):
        alone = _echo(request)
        expected = InferenceResponse(
            model_name="m",
            model_version="1",
            id=request.id,
            parameters=alone.parameters,
            outputs=alone.outputs,
        )
        _same(response, expected)
        _same(response.outputs[0], expected.outputs[0])
    # the runner sets each answer's id: one response's fields are its own
    responses[0].id = "other"
    assert responses[0].model_fields_set == {*responses[1].model_fields_set}
    assert responses[1].id == "r1"


def test_data_that_is_not_the_wire_s_array_is_decoded_as_before() -> None:
    swapped = np.arange(3, dtype=">f4").reshape(1, 3)  # another byte order
    flat = RequestInput(name="x", shape=[1, 3], datatype="FP32", data=[1, 2, 3])
    requests = [
        InferenceRequest(inputs=[RequestInput(name="x", shape=[1, 3], datatype="FP32", data=d)])
        for d in (swapped, flat.data.root, np.arange(3, dtype="<f4"))  # last: a flat array
    ]
    merged = merge_requests(requests)
    assert merged.inputs[0].shape == [3, 3]
    np.testing.assert_array_equal(merged.inputs[0].data.root, [[0, 1, 2], [1, 2, 3], [0, 1, 2]])


def _with(parameters: Parameters | None = None, **request: object) -> InferenceRequest:
    inputs = [RequestInput(name="x", shape=[1, 2], datatype="FP32", data=[1, 2])]
    inputs[0].parameters = parameters
    return InferenceRequest(inputs=inputs, **request)


@pytest.mark.parametrize(
    ("a", "b", "merge"),
    [
        (_with(), _with(), True),
        (_with(Parameters(content_type="np")), _with(Parameters(content_type="np")), True),
        (_with(Parameters(content_type="np")), _with(Parameters(content_type="pd")), False),
        (_with(Parameters(content_type="np")), _with(), False),
        (_with(Parameters()), _with(), False),  # {} and null differ in JSON too
        (_with(Parameters(a=1)), _with(Parameters(a=True)), False),
        (_with(Parameters(a=1)), _with(Parameters(a=1.0)), False),
        (_with(Parameters(a=1, b="x")), _with(Parameters(b="x", a=1)), True),
        (_with(Parameters(headers={"k": [1]})), _with(Parameters(headers={"k": [1]})), True),
        (_with(Parameters(headers={"k": [1]})), _with(Parameters(headers={"k": [2]})), False),
        (_with(outputs=[RequestOutput(name="y")]), _with(), False),
        (
            _with(outputs=[RequestOutput(name="y")]),
            _with(outputs=[RequestOutput(name="y")]),
            True,
        ),
        (_with(parameters=Parameters(a=1)), _with(parameters=Parameters(a=2)), False),
    ],
)
def test_batch_keys_merge_what_agrees_on_all_but_rows(
    a: InferenceRequest, b: InferenceRequest, merge: bool
) -> None:
    assert (_batch_key(a) == _batch_key(b)) is merge
    hash(_batch_key(a))


def test_batch_keys_tell_shapes_and_datatypes_apart() -> None:
    def request(shape: list[int], datatype: str = "FP32") -> InferenceRequest:
        data = [1] * int(np.prod(shape))
        return InferenceRequest(
            inputs=[RequestInput(name="x", shape=shape, datatype=datatype, data=data)]
        )

    assert _batch_key(request([1, 2])) == _batch_key(request([5, 2]))
    assert _batch_key(request([1, 2])) != _batch_key(request([1, 3]))
    assert _batch_key(request([1, 2])) != _batch_key(request([1, 2], "FP64"))
