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
        RequestInput(name="x", shape=[1], datatype="FP128", data=[1])  # type: ignore[arg-type]


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
