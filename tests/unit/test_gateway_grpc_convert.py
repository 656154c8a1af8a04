"""gateway/grpc/convert.py: protobuf messages <-> V2 types; what it refuses, with which words."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conveyor.errors import ConveyorError, InferenceError
from conveyor.gateway.grpc import convert
from conveyor.gateway.grpc import inference_pb2 as pb
from conveyor.types import (
    InferenceResponse,
    MetadataModelResponse,
    MetadataTensor,
    Parameters,
    RepositoryIndexResponse,
    RepositoryIndexResponseItem,
    ResponseOutput,
)


def test_parameters_both_ways() -> None:
    msg = pb.ModelInferRequest()
    msg.parameters["b"].bool_param = True
    msg.parameters["i"].int64_param = -3
    msg.parameters["u"].uint64_param = 2**64 - 1
    msg.parameters["d"].double_param = 0.5
    msg.parameters["s"].string_param = "text"
    msg.parameters["content_type"].string_param = "np"
    msg.parameters["unset"].CopyFrom(pb.InferParameter())
    params = convert.parameters_from(msg.parameters, leave_out="s")
    assert params == Parameters(content_type="np", b=True, i=-3, u=2**64 - 1, d=0.5)
    assert convert.parameters_from(msg.parameters, leave_out="nothing") is not None
    assert convert.parameters_from(pb.ModelInferRequest().parameters) is None

    out = pb.ModelInferResponse()
    back = Parameters(
        content_type="np", b=False, i=np.int32(7), u=2**64 - 1, d=1.5, raw=b"x", headers={"a": 1}
    )
    convert.put_parameters(back, out.parameters)
    kinds = {key: value.WhichOneof("parameter_choice") for key, value in out.parameters.items()}
    assert kinds == {
        "content_type": "string_param",
        "b": "bool_param",
        "i": "int64_param",
        "u": "uint64_param",
        "d": "double_param",
        "raw": "string_param",
    }  # a dict (REST's headers) has no InferParameter: left out, as MLServer does
    assert out.parameters["i"].int64_param == 7


def test_typed_contents_become_arrays_of_the_datatype() -> None:
    msg = pb.ModelInferRequest(model_name="m", id="7")
    msg.inputs.add(name="a", datatype="INT8", shape=[2, 1]).contents.int_contents.extend([-1, 2])
    msg.inputs.add(name="b", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(
        [b"x", b""]
    )
    msg.outputs.add(name="a")
    request = convert.infer_request(msg)
    assert request.id == "7"
    a, b = (tensor.data.root for tensor in request.inputs)
    assert a.dtype == np.int8
    assert a.tolist() == [[-1], [2]]
    assert b.dtype == object
    assert b.tolist() == [b"x", b""]
    assert [out.name for out in request.outputs or []] == ["a"]


def test_raw_contents_become_arrays() -> None:
    msg = pb.ModelInferRequest(raw_input_contents=[np.arange(3, dtype="<f2").tobytes()])
    msg.inputs.add(name="h", datatype="FP16", shape=[3])
    [tensor] = convert.infer_request(msg).inputs
    assert tensor.data.root.tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize(
    ("datatype", "shape", "field", "values", "raw", "words"),
    [
        ("FP32", [2], "fp32_contents", [1.0], None, "needs 2 element(s) in contents.fp32"),
        ("FP16", [1], "fp32_contents", [1.0], None, "send it in raw_input_contents"),
        ("BF16", [1], "fp32_contents", [1.0], None, "send it in one of BOOL"),
        ("INT8", [1], "int_contents", [300], None, "do not fit INT8"),
        ("FP32", [-1], "fp32_contents", [], None, "dimensions must be >= 0"),
        ("FP32", [2], "fp32_contents", [], [b"\x00" * 7], "needs 8 bytes, but 7 came"),
        ("FP32", [1], "fp32_contents", [1.0], [b"\x00" * 4], "both typed contents and raw"),
        ("FP32", [1], "fp32_contents", [], [b"", b""], "2 entries for 1 inputs"),
    ],
)
def test_a_request_that_does_not_fit_is_refused(
    datatype: str,
    shape: list[int],
    field: str,
    values: list[float],
    raw: list[bytes] | None,
    words: str,
) -> None:
    msg = pb.ModelInferRequest(raw_input_contents=raw or [])
    tensor = msg.inputs.add(name="x", datatype=datatype, shape=shape)
    if values:
        getattr(tensor.contents, field).extend(values)
    with pytest.raises(InferenceError, match=re.escape(words)):
        convert.infer_request(msg)


def test_the_timeout_parameter() -> None:
    msg = pb.ModelInferRequest()
    assert convert.request_timeout(msg) is None
    msg.parameters["timeout"].int64_param = 250_000
    assert convert.request_timeout(msg) == 0.25
    assert convert.infer_request(msg).parameters is None  # the model never sees it
    msg.parameters["timeout"].string_param = "soon"
    with pytest.raises(InferenceError, match="'soon': a number of microseconds above 0"):
        convert.request_timeout(msg)
    msg.parameters["timeout"].int64_param = 0
    with pytest.raises(InferenceError, match="microseconds"):
        convert.request_timeout(msg)


def _response(*outputs: ResponseOutput) -> InferenceResponse:
    return InferenceResponse(model_name="m", id="1", outputs=list(outputs))


def test_responses_raw_or_typed() -> None:
    floats = ResponseOutput(name="f", shape=[2], datatype="FP64", data=[1.5, 2.5])
    text = ResponseOutput(name="t", shape=[1, 2], datatype="BYTES", data=[["a", b"b"]])
    typed = convert.infer_response(_response(floats, text), raw=False)
    assert (typed.model_name, typed.id, typed.model_version) == ("m", "1", "")
    assert not typed.raw_output_contents
    assert list(typed.outputs[0].contents.fp64_contents) == [1.5, 2.5]
    assert list(typed.outputs[1].contents.bytes_contents) == [b"a", b"b"]
    assert list(typed.outputs[1].shape) == [1, 2]
    raw = convert.infer_response(_response(floats, text), raw=True)
    assert raw.raw_output_contents == [
        np.array([1.5, 2.5], "<f8").tobytes(),
        b"\x01\x00\x00\x00a\x01\x00\x00\x00b",
    ]
    assert not raw.outputs[0].HasField("contents")
    # FP16 has no typed field: the whole response goes raw (all outputs or none)
    half = ResponseOutput(name="h", shape=[1], datatype="FP16", data=np.ones(1, np.float16))
    assert len(convert.infer_response(_response(floats, half), raw=False).raw_output_contents) == 2


def test_an_output_that_does_not_fit_is_the_models_fault() -> None:
    wrong = ResponseOutput(name="o", shape=[3], datatype="FP32", data=[1.0])
    with pytest.raises(ConveyorError, match="the model answered an output") as caught:
        convert.infer_response(_response(wrong), raw=True)
    assert not isinstance(caught.value, InferenceError)  # not a bad request: INTERNAL


def test_metadata_and_index() -> None:
    meta = MetadataModelResponse(
        name="m",
        platform="p",
        versions=["1"],
        inputs=[MetadataTensor(name="x", datatype="BYTES", shape=[-1], parameters={"a": "b"})],
        parameters=Parameters(content_type="str"),
    )
    msg = convert.model_metadata(meta)
    assert (msg.name, msg.platform, list(msg.versions)) == ("m", "p", ["1"])
    assert (msg.inputs[0].name, list(msg.inputs[0].shape)) == ("x", [-1])
    assert msg.inputs[0].parameters["a"].string_param == "b"
    assert msg.parameters["content_type"].string_param == "str"
    index = RepositoryIndexResponse(
        [RepositoryIndexResponseItem(name="m", state="UNAVAILABLE", reason="not loaded")]
    )
    [model] = convert.repository_index(index).models
    assert (model.name, model.version, model.state, model.reason) == (
        "m",
        "",
        "UNAVAILABLE",
        "not loaded",
    )
