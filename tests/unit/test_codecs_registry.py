"""The codec registry, and the helpers that pick a codec and remember what it decoded."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, List  # noqa: UP035 (MLServer users write List)

import numpy as np
import numpy.typing as npt
import pytest

from conveyor.codecs import (
    Base64Codec,
    CodecError,
    CodecNotFound,
    DatetimeCodec,
    DecodedParameterName,
    InputCodec,
    NumpyCodec,
    NumpyRequestCodec,
    RequestCodec,
    StringCodec,
    StringRequestCodec,
    decode_inference_request,
    decode_request_input,
    encode_inference_response,
    encode_response_output,
    find_input_codec,
    find_request_codec,
    get_decoded,
    get_decoded_or_raw,
    has_decoded,
    register_input_codec,
)
from conveyor.codecs.base import _CodecRegistry
from conveyor.codecs.utils import SingleInputRequestCodec
from conveyor.errors import MLServerError
from conveyor.types import (
    Datatype,
    InferenceRequest,
    MetadataTensor,
    Parameters,
    RequestInput,
    RequestOutput,
    ResponseOutput,
    TensorData,
)


@pytest.fixture
def registry() -> _CodecRegistry:
    registry = _CodecRegistry()
    registry.register_request_codec(NumpyRequestCodec.ContentType, NumpyRequestCodec)
    registry.register_request_codec(StringRequestCodec.ContentType, StringRequestCodec)
    registry.register_input_codec(NumpyCodec.ContentType, NumpyCodec)
    registry.register_input_codec(StringCodec.ContentType, StringCodec)
    registry.register_input_codec(DatetimeCodec.ContentType, DatetimeCodec)
    return registry


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"content_type": "np"}, NumpyCodec),
        ({"content_type": "str"}, StringCodec),
        ({"content_type": "application/octet-stream"}, None),
        ({"type_hint": List[str]}, StringCodec),  # noqa: UP006
        ({"type_hint": list[str]}, StringCodec),
        ({"type_hint": np.ndarray}, NumpyCodec),
        # a PEP 695 alias since numpy 2.5 on Python 3.12+: seen through to np.ndarray
        ({"type_hint": npt.NDArray[np.float32]}, NumpyCodec),
        ({"type_hint": npt.NDArray}, NumpyCodec),
        ({"type_hint": dict}, None),
        ({"payload": [datetime.now()]}, DatetimeCodec),
        ({"payload": np.array([1, 2, 3])}, NumpyCodec),  # MLServer raises here (`if payload:`)
        ({"payload": {1, 2}}, None),
        ({}, None),
    ],
)
def test_find_input_codec(
    registry: _CodecRegistry, kwargs: dict[str, Any], expected: type[InputCodec] | None
) -> None:
    assert registry.find_input_codec(**kwargs) is expected


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"content_type": "np"}, NumpyRequestCodec),
        ({"content_type": "str"}, StringRequestCodec),
        ({"content_type": "application/octet-stream"}, None),
        ({"type_hint": List[str]}, StringRequestCodec),  # noqa: UP006
        ({"type_hint": dict}, None),
        ({"payload": ["foo"]}, StringRequestCodec),
        ({"payload": np.array([[1.0]])}, NumpyRequestCodec),
    ],
)
def test_find_request_codec(
    registry: _CodecRegistry, kwargs: dict[str, Any], expected: type[RequestCodec] | None
) -> None:
    assert registry.find_request_codec(**kwargs) is expected


def test_global_registry_has_every_codec() -> None:
    for codec in (NumpyCodec, StringCodec, Base64Codec, DatetimeCodec):
        assert find_input_codec(codec.ContentType) is codec
    assert find_request_codec("np") is NumpyRequestCodec
    assert find_request_codec("str") is StringRequestCodec
    assert find_input_codec(type_hint=List[bytes]) is Base64Codec  # noqa: UP006
    assert find_input_codec(type_hint=List[str | datetime]) is DatetimeCodec  # noqa: UP006


def test_register_input_codec_decorator() -> None:
    class Marker:
        pass

    @register_input_codec
    class MarkerCodec(InputCodec):
        ContentType = "test-marker"
        TypeHint: ClassVar[object] = Marker

        @classmethod
        def can_encode(cls, payload: object) -> bool:
            return isinstance(payload, Marker)

    assert find_input_codec("test-marker") is MarkerCodec
    assert find_input_codec(payload=Marker()) is MarkerCodec
    assert find_input_codec(type_hint=Marker) is MarkerCodec


def test_deprecated_methods_warn_and_still_work(caplog: pytest.LogCaptureFixture) -> None:
    request_input = RequestInput(name="foo", shape=[3], data=[1, 2, 3], datatype="INT32")
    with pytest.deprecated_call(match="decode_input"):
        decoded = NumpyCodec.decode(request_input)
    np.testing.assert_array_equal(decoded, [1, 2, 3])
    # As MLServer, which logs the line (its test_deprecated_methods looks for it).
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "DEPRECATED! The decode() method is now deprecated. Use decode_input() instead."
    ]
    with pytest.deprecated_call(match="encode_output"):
        output = StringCodec.encode("foo", ["a"])
    assert output.data.root == [b"a"]
    with pytest.deprecated_call(match="encode_response"):
        NumpyRequestCodec.encode("m", np.array([1]))
    with pytest.deprecated_call(match="decode_request"):
        StringRequestCodec.decode(StringRequestCodec.encode_request(["a"]))


# Choosing a codec: content type, then metadata, then payload.

METADATA_OUTPUTS = {
    "foo": MetadataTensor(
        name="foo", datatype="INT32", shape=[-1], parameters=Parameters(content_type="np")
    )
}


def test_encode_response_output_by_payload() -> None:
    output = encode_response_output(np.array([1, 2, 3, 4]), RequestOutput(name="foo"))
    assert output is not None
    assert (Datatype(output.datatype).value, output.shape) == ("INT64", [4, 1])
    assert output.parameters == Parameters(content_type="np")

    output = encode_response_output(["asd"], RequestOutput(name="bar"), METADATA_OUTPUTS)
    assert output == ResponseOutput(
        name="bar",
        datatype="BYTES",
        shape=[1, 1],
        data=[b"asd"],
        parameters=Parameters(content_type="str"),
    )


def test_encode_response_output_by_content_type() -> None:
    request_output = RequestOutput(name="bar", parameters=Parameters(content_type="datetime"))
    output = encode_response_output(["2021-02-25T12:00:00Z"], request_output)
    assert output == ResponseOutput(
        name="bar",
        datatype="BYTES",
        shape=[1, 1],
        data=[b"2021-02-25T12:00:00Z"],
        parameters=Parameters(content_type="datetime"),
    )


def test_encode_response_output_by_metadata() -> None:
    output = encode_response_output(np.array([1, 2]), RequestOutput(name="foo"), METADATA_OUTPUTS)
    assert output is not None
    assert output.parameters == Parameters(content_type="np")
    # The metadata asks for "np", so a list is an error (MLServer: AttributeError).
    with pytest.raises(CodecError, match="NumpyCodec encodes numpy arrays, but 'foo' is list"):
        encode_response_output([1, 2], RequestOutput(name="foo"), METADATA_OUTPUTS)


def test_encode_response_output_without_a_codec() -> None:
    assert encode_response_output({1, 2, 3, 4}, RequestOutput(name="bar")) is None


@dataclass
class _Params:
    version: str | None = None
    content_type: str | None = None


@dataclass
class _Settings:
    """What the helpers read from ``ModelSettings``."""

    name: str = "sum-model"
    parameters: _Params | None = field(default_factory=lambda: _Params(version="v1.2.3"))


@pytest.mark.parametrize(
    ("payload", "content_type", "datatype", "shape"),
    [(np.array([1, 2, 3]), "np", "INT64", [3, 1]), (["foo", "bar"], "str", "BYTES", [2, 1])],
)
def test_encode_inference_response(
    payload: Any, content_type: str, datatype: str, shape: list[int]
) -> None:
    response = encode_inference_response(payload, _Settings())
    assert response is not None
    assert (response.model_name, response.model_version) == ("sum-model", "v1.2.3")
    assert response.parameters == Parameters(content_type=content_type)
    [output] = response.outputs
    assert (output.name, Datatype(output.datatype).value, output.shape) == (
        "output-1",
        datatype,
        shape,
    )
    assert output.parameters == Parameters(content_type=content_type)


def test_encode_inference_response_without_a_codec() -> None:
    assert encode_inference_response(object(), _Settings()) is None


def _int_input(**parameters: Any) -> RequestInput:
    return RequestInput(
        name="foo",
        shape=[2, 2],
        data=[1, 2, 3, 4],
        datatype="INT32",
        parameters=Parameters(**parameters) if parameters else None,
    )


def test_decode_request_input_by_its_content_type() -> None:
    request_input = _int_input(content_type="np")
    decoded = decode_request_input(request_input)
    np.testing.assert_array_equal(decoded, [[1, 2], [3, 4]])
    assert has_decoded(request_input)
    assert get_decoded(request_input) is decoded
    assert get_decoded_or_raw(request_input) is decoded
    # the decoded payload is no field: it never reaches a dump, nor the wire
    assert request_input.model_dump()["parameters"] == {"content_type": "np"}
    assert DecodedParameterName not in request_input.model_dump_json()


def test_decode_request_input_by_metadata() -> None:
    metadata = {"foo": MetadataTensor(name="foo", datatype="INT32", shape=[2, 2])}
    metadata["foo"].parameters = Parameters(content_type="np")
    request_input = _int_input()
    decoded = decode_request_input(request_input, metadata)
    assert isinstance(decoded, np.ndarray)
    # the input's own content type comes first
    bytes_input = RequestInput(
        name="foo",
        shape=[1],
        datatype="BYTES",
        data=[b"a"],
        parameters=Parameters(content_type="str"),
    )
    assert decode_request_input(bytes_input, metadata) == ["a"]


@pytest.mark.parametrize("parameters", [{}, {"content_type": "pd_json"}, {"content_type": "??"}])
def test_decode_request_input_without_a_codec(parameters: dict[str, Any]) -> None:
    request_input = _int_input(**parameters)
    assert decode_request_input(request_input) is None
    assert not has_decoded(request_input)
    assert get_decoded(request_input) is None
    raw = get_decoded_or_raw(request_input)
    assert isinstance(raw, TensorData)
    assert raw.root == [1, 2, 3, 4]


def test_decode_request_input_raises_codec_error() -> None:
    bad = RequestInput(
        name="foo",
        shape=[3],
        datatype="FP32",
        data=[1, 2],
        parameters=Parameters(content_type="np"),
    )
    with pytest.raises(CodecError, match="input 'foo'"):
        decode_request_input(bad)


def test_decode_inference_request_by_request_content_type() -> None:
    request = InferenceRequest(inputs=[_int_input()], parameters=Parameters(content_type="np"))
    decoded = decode_inference_request(request)
    np.testing.assert_array_equal(decoded, [[1, 2], [3, 4]])
    assert get_decoded(request) is decoded
    assert get_decoded_or_raw(request) is decoded


def test_decode_inference_request_by_model_settings() -> None:
    request = InferenceRequest(inputs=[_int_input()])
    settings = _Settings(parameters=_Params(content_type="np"))
    decoded = decode_inference_request(request, settings)
    assert isinstance(decoded, np.ndarray)
    # the request's own content type comes first
    request = InferenceRequest(
        inputs=[RequestInput(name="s", shape=[1], datatype="BYTES", data=["x"])],
        parameters=Parameters(content_type="str"),
    )
    assert decode_inference_request(request, settings) == ["x"]


def test_decode_inference_request_without_a_codec_decodes_inputs_only() -> None:
    request = InferenceRequest(inputs=[_int_input(content_type="np"), _int_input()])
    assert decode_inference_request(request) is request
    assert has_decoded(request.inputs[0])
    assert not has_decoded(request.inputs[1])
    assert not has_decoded(request)
    assert get_decoded_or_raw(request) is request


def test_single_input_request_codec_uses_what_was_decoded() -> None:
    request = InferenceRequest(inputs=[_int_input(**{DecodedParameterName: np.array([23])})])
    np.testing.assert_equal(NumpyRequestCodec.decode_request(request), np.array([23]))


def test_single_input_request_codec_errors() -> None:
    request = InferenceRequest(inputs=[_int_input(), _int_input()])
    with pytest.raises(CodecError, match="only supports a single input tensor \\(2 were"):
        SingleInputRequestCodec.decode_request(request)
    with pytest.raises(NotImplementedError):
        SingleInputRequestCodec.encode_request([1])
    assert not SingleInputRequestCodec.can_encode([1])


def test_errors_are_mlserver_errors() -> None:
    assert issubclass(CodecError, MLServerError)
    assert issubclass(CodecNotFound, MLServerError)
    assert str(CodecError("boom")) == "There was an error encoding / decoding the payload: boom"
    assert str(CodecNotFound(name="x", payload_type="<class 'set'>", is_input=True)) == (
        "Codec not found for input field with name 'x' and type <class 'set'>"
    )
    assert str(CodecNotFound(payload_type="int", is_request=True)) == (
        "Codec not found for output response with type int"
    )
