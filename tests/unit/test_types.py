"""The V2 types: MLServer's JSON shapes, and numpy data that stays numpy."""

import json

import numpy as np
import pytest
from pydantic import ValidationError

from conveyor.types import (
    Datatype,
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    Parameters,
    RequestInput,
    ResponseOutput,
)

TRITON_REQUEST = {
    "id": "42",
    "parameters": {"content_type": "np", "custom": 3},
    "inputs": [
        {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]},
        {
            "name": "s",
            "shape": [1],
            "datatype": "BYTES",
            "data": ["hi"],
            "parameters": {"content_type": "str"},
        },
    ],
    "outputs": [{"name": "y"}],
}


def test_v2_request_json_round_trips_unchanged() -> None:
    request = InferenceRequest.model_validate(TRITON_REQUEST)
    assert json.loads(request.model_dump_json()) == TRITON_REQUEST
    assert request.parameters is not None
    assert request.parameters.model_extra == {"custom": 3}


def test_datatype_is_kept_as_its_value() -> None:
    request_input = RequestInput(name="x", shape=[1], datatype=Datatype.INT8, data=[1])
    assert request_input.datatype == "INT8"


def test_unknown_datatype_is_rejected() -> None:
    with pytest.raises(ValidationError):
        RequestInput(name="x", shape=[1], datatype="FP128", data=[1])


def test_numpy_data_stays_numpy_until_json() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    output = ResponseOutput(name="y", shape=[2, 3], datatype="FP32", data=array)
    assert output.data.root is array
    assert output.model_dump()["data"] is array
    assert json.loads(output.model_dump_json())["data"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_response_dump_leaves_out_unset_fields_as_mlserver_does() -> None:
    response = InferenceResponse(
        model_name="m",
        outputs=[ResponseOutput(name="y", shape=[1], datatype="BYTES", data=[b"ok"])],
    )
    assert json.loads(response.model_dump_json()) == {
        "model_name": "m",
        "outputs": [{"name": "y", "shape": [1], "datatype": "BYTES", "data": ["ok"]}],
    }


def test_metadata_and_parameters_shapes() -> None:
    metadata = MetadataModelResponse(name="m", platform="", parameters=Parameters(headers={"a": 1}))
    assert metadata.model_dump() == {
        "name": "m",
        "platform": "",
        "parameters": {"headers": {"a": 1}},
    }


# Tensors compare by value, as MLServer users compare them in their runtimes' tests.


def _output(data: object, shape: list[int], datatype: str = "FP64") -> ResponseOutput:
    return ResponseOutput(name="y", shape=shape, datatype=datatype, data=data)


def test_numpy_data_equals_the_same_tensor_as_a_list() -> None:
    array = np.array([[1.0, 2.0], [3.0, 4.0]])
    as_array = _output(array, [2, 2])

    assert as_array == _output([1.0, 2.0, 3.0, 4.0], [2, 2])
    assert as_array == _output([[1, 2], [3, 4]], [2, 2])  # nested, ints: the same values
    assert _output([1.0, 2.0, 3.0, 4.0], [2, 2]) == as_array
    assert as_array == _output(array.astype(np.float32), [2, 2])
    assert as_array.data.root is array  # compared in place: still the caller's array


@pytest.mark.parametrize(
    ("data", "shape"),
    [
        ([1.0, 2.0, 3.0, 5.0], [2, 2]),  # one value differs
        ([1.0, 2.0, 3.0], [2, 2]),  # fewer elements: no broadcasting error
        (np.array([1.0, 2.0]), [2, 2]),
        ([1.0, 2.0, 3.0, 4.0], [4]),  # other shape
    ],
)
def test_other_tensors_are_unequal_without_raising(data: object, shape: list[int]) -> None:
    assert _output(np.array([[1.0, 2.0], [3.0, 4.0]]), [2, 2]) != _output(data, shape)


def test_nan_equals_null_as_in_json() -> None:
    # MLServer's encoders write NaN as None (JSON null); Conveyor keeps the NaN in the array.
    with_nan = _output(np.array([2.3, np.nan]), [2, 1])
    assert with_nan == _output([2.3, None], [2, 1])
    assert with_nan == _output(np.array([2.3, np.nan]), [2, 1])
    assert with_nan != _output([2.3, 0.0], [2, 1])


def test_bytes_arrays_equal_mlservers_one_buffer_form() -> None:
    array = np.array([[b"\x01"], [b"\x02"]], dtype=bytes)
    output = _output(array, [2, 1], "BYTES")
    assert output == _output([b"\x01\x02"], [2, 1], "BYTES")  # MLServer's [array.tobytes()]
    assert output == _output([b"\x01", b"\x02"], [2, 1], "BYTES")
    assert output != _output([b"\x01", b"\x03"], [2, 1], "BYTES")


def test_lists_compare_exactly_as_in_mlserver() -> None:
    assert _output([1, 2], [2]) == _output([1, 2], [2])
    assert _output([[1, 2]], [1, 2]) != _output([1, 2], [1, 2])


def test_requests_and_responses_compare_their_tensors_by_value() -> None:
    array = np.arange(4, dtype=np.int32).reshape(2, 2)
    request = InferenceRequest(
        inputs=[RequestInput(name="x", shape=[2, 2], datatype="INT32", data=array)]
    )
    response = InferenceResponse(model_name="m", outputs=[_output(array, [2, 2], "INT32")])
    assert request == InferenceRequest(
        inputs=[RequestInput(name="x", shape=[2, 2], datatype="INT32", data=[0, 1, 2, 3])]
    )
    assert response == InferenceResponse(
        model_name="m", outputs=[_output([0, 1, 2, 3], [2, 2], "INT32")]
    )
    assert response != InferenceResponse(
        model_name="m", outputs=[_output([0, 1, 2, 4], [2, 2], "INT32")]
    )
    assert request.inputs[0].data == response.outputs[0].data  # TensorData alone too
    # A request input is not a response output, whatever it holds (as pydantic compares).
    assert request.inputs[0] != response.outputs[0]


def test_parameters_compare_by_value_with_arrays_and_without_decoded_payloads() -> None:
    from conveyor.codecs import decode_request_input, has_decoded

    assert Parameters(scores=np.array([1, 2])) == Parameters(scores=[1, 2])
    assert Parameters(scores={"a": np.array([1])}) != Parameters(scores={"a": [2]})
    decoded, plain = (
        RequestInput(
            name="x",
            shape=[2],
            datatype="FP32",
            data=[1, 2],
            parameters=Parameters(content_type="np"),
        )
        for _ in range(2)
    )
    decode_request_input(decoded, {})  # caches the decoded array on its parameters
    assert has_decoded(decoded)
    # What a message carries decides: the cached array neither raises nor counts.
    assert decoded == plain
