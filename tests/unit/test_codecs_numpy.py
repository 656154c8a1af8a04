"""NumpyCodec: MLServer's behaviour, with data that stays numpy."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from conveyor.codecs import CodecError, NumpyCodec, NumpyRequestCodec
from conveyor.codecs.numpy import convert_nan, to_datatype, to_dtype
from conveyor.types import (
    Datatype,
    InferenceRequest,
    InferenceResponse,
    Parameters,
    RequestInput,
    ResponseOutput,
)


def _json(model: RequestInput | ResponseOutput) -> dict[str, Any]:
    """The model as JSON would carry it (arrays become lists)."""
    return model.model_dump(mode="json")


@pytest.mark.parametrize(
    ("payload", "expected"),
    [(np.array([1, 2, 3]), True), (np.array(["foo", "bar"]), True), ([1, 2, 3], False)],
)
def test_can_encode(payload: object, expected: bool) -> None:
    assert NumpyCodec.can_encode(payload) == expected


@pytest.mark.parametrize(
    ("payload", "shape", "datatype", "data"),
    [
        (np.array([1, 2, 3]), [3, 1], "INT64", [1, 2, 3]),
        (np.array([[1, 2], [3, 4]]), [2, 2], "INT64", [1, 2, 3, 4]),
        (np.array([[1, 2], [3, 4]], dtype=np.int32), [2, 2], "INT32", [1, 2, 3, 4]),
        (np.array([1.0, 2.0]), [2, 1], "FP64", [1.0, 2.0]),
        (np.array([2.3, 3.4, np.nan]), [3, 1], "FP64", [2.3, 3.4, None]),
        (np.array([True, False]), [2, 1], "BOOL", [True, False]),
        (np.array([0.5, -2.0], dtype=np.float16), [2, 1], "FP16", [0.5, -2.0]),
        (np.ones((2, 3, 4), dtype=np.uint8), [2, 3, 4], "UINT8", [1] * 24),
    ],
)
def test_encode_output_as_mlserver_json(
    payload: npt.NDArray[Any], shape: list[int], datatype: str, data: list[Any]
) -> None:
    output = NumpyCodec.encode_output(name="foo", payload=payload)
    assert _json(output) == {
        "name": "foo",
        "shape": shape,
        "datatype": datatype,
        "data": data,
        "parameters": {"content_type": "np"},
    }


def test_encode_puts_the_array_itself_in_data() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    output = NumpyCodec.encode_output("y", array)
    data = output.data.root
    assert isinstance(data, np.ndarray)
    # the same buffer: a view, not a copy
    assert data.__array_interface__["data"] == array.__array_interface__["data"]
    assert (output.shape, Datatype(output.datatype).value) == ([3, 4], "FP32")


def test_encode_input_matches_encode_output() -> None:
    array = np.arange(4, dtype=np.int16)
    request_input = NumpyCodec.encode_input("x", array)
    output = NumpyCodec.encode_output("x", array)
    assert isinstance(request_input, RequestInput)
    assert (request_input.shape, request_input.datatype) == (output.shape, output.datatype)
    assert np.shares_memory(request_input.data.root, array)
    assert request_input.parameters == Parameters(content_type="np")


def test_zero_d_array_is_sent_as_shape_1_as_mlserver_does() -> None:
    output = NumpyCodec.encode_output("y", np.array(7.5, dtype=np.float32))
    assert (output.shape, Datatype(output.datatype).value) == ([1], "FP32")
    decoded = NumpyCodec.decode_output(output)
    assert decoded.shape == (1,)
    assert decoded.dtype == np.float32
    assert decoded[0] == 7.5


def test_non_contiguous_array_is_made_contiguous() -> None:
    base = np.arange(20, dtype=np.int32).reshape(4, 5)
    for array in (base[:, ::2], base.T, np.asfortranarray(base)):
        output = NumpyCodec.encode_output("y", array)
        data = output.data.root
        assert data.flags.c_contiguous
        assert output.shape == list(array.shape)
        np.testing.assert_array_equal(NumpyCodec.decode_output(output), array)
        assert _json(output)["data"] == array.ravel().tolist()


def test_big_endian_array_is_detected_and_sent_native() -> None:
    array = np.array([[1.5, -2.25], [3.0, 1e30]], dtype=">f4")
    output = NumpyCodec.encode_output("y", array)
    assert Datatype(output.datatype).value == "FP32"
    assert output.data.root.dtype.isnative
    np.testing.assert_array_equal(NumpyCodec.decode_output(output), array)


def test_big_endian_array_decodes_without_conversion() -> None:
    array = np.arange(6, dtype=">i8")
    request_input = RequestInput(name="x", shape=[2, 3], datatype="INT64", data=array)
    decoded = NumpyCodec.decode_input(request_input)
    assert np.shares_memory(decoded, array)
    np.testing.assert_array_equal(decoded, np.arange(6).reshape(2, 3))


@pytest.mark.parametrize(
    ("request_input", "expected"),
    [
        (
            RequestInput(name="foo", shape=[3], data=[1, 2, 3], datatype="INT32"),
            np.array([1, 2, 3]),
        ),
        (
            RequestInput(name="foo", shape=[2, 2], data=[1, 2, 3, 4], datatype="INT32"),
            np.array([[1, 2], [3, 4]]),
        ),
        (
            RequestInput(name="foo", shape=[2, 2], data=[[1, 2], [3, 4]], datatype="INT32"),
            np.array([[1, 2], [3, 4]]),
        ),
        (RequestInput(name="foo", shape=[2], data=[1, 2], datatype="FP32"), np.array([1.0, 2.0])),
        (
            RequestInput(name="foo", shape=[3], data=[1, 2, None], datatype="FP16"),
            np.array([1, 2, np.nan], dtype="float16"),
        ),
        (
            RequestInput(name="foo", shape=[2], data=[True, False], datatype="BOOL"),
            np.array([True, False]),
        ),
        (
            RequestInput(name="foo", shape=[2], data=[0, 1], datatype="BOOL"),
            np.array([False, True]),
        ),
    ],
)
def test_decode_input_from_json_lists(
    request_input: RequestInput, expected: npt.NDArray[Any]
) -> None:
    decoded = NumpyCodec.decode_input(request_input)
    np.testing.assert_array_equal(decoded, expected)
    assert decoded.dtype == to_dtype(request_input)
    assert list(decoded.shape) == request_input.shape


def test_decode_keeps_the_array_and_reshapes_it() -> None:
    array = np.arange(6, dtype=np.float32)
    decoded = NumpyCodec.decode_input(
        RequestInput(name="x", shape=[2, 3], datatype="FP32", data=array)
    )
    assert decoded.shape == (2, 3)
    assert np.shares_memory(decoded, array)


def test_decode_converts_an_array_of_another_dtype() -> None:
    array = np.arange(4, dtype=np.int64)
    decoded = NumpyCodec.decode_input(
        RequestInput(name="x", shape=[4], datatype="FP32", data=array)
    )
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, [0.0, 1.0, 2.0, 3.0])


def test_ten_mib_tensor_never_becomes_a_list() -> None:
    array = np.zeros((1024, 2560), dtype=np.float32)  # 10 MiB
    response = NumpyRequestCodec.encode_response("m", array)
    data = response.outputs[0].data.root
    assert isinstance(data, np.ndarray)
    assert np.shares_memory(data, array)
    decoded = NumpyRequestCodec.decode_response(response)
    assert np.shares_memory(decoded, array)


@pytest.mark.parametrize(
    ("shape", "datatype"), [([0], "FP32"), ([2, 0], "INT8"), ([0, 3], "BOOL"), ([0], "BYTES")]
)
def test_empty_inputs(shape: list[int], datatype: str) -> None:
    decoded = NumpyCodec.decode_input(
        RequestInput(name="x", shape=shape, datatype=datatype, data=[])
    )
    assert list(decoded.shape) == shape
    assert decoded.size == 0


def test_empty_arrays_round_trip() -> None:
    for array in (np.zeros((0,), dtype=np.float32), np.zeros((2, 0), dtype=np.int8)):
        output = NumpyCodec.encode_output("y", array)
        decoded = NumpyCodec.decode_output(
            ResponseOutput.model_validate_json(output.model_dump_json())
        )
        assert decoded.size == 0
        assert decoded.dtype == array.dtype


# BYTES


@pytest.mark.parametrize(
    ("payload", "shape", "data"),
    [
        (
            np.array(["foo", "bar"], dtype=str),
            [2, 1],
            [b"foo", b"bar"],
        ),  # str -> UTF-8, as MLServer
        (np.array(["é"], dtype=str), [1, 1], ["é".encode()]),
        (np.array([None, "bar"]), [2, 1], [None, "bar"]),  # object arrays as they are, as MLServer
    ],
)
def test_encode_strings_as_mlserver(
    payload: npt.NDArray[Any], shape: list[int], data: list[Any]
) -> None:
    output = NumpyCodec.encode_output("foo", payload)
    assert (Datatype(output.datatype).value, output.shape, output.data.root) == (
        "BYTES",
        shape,
        data,
    )


def test_encode_bytes_array_keeps_one_element_per_string() -> None:
    # MLServer sends `[array.tobytes()]`, one buffer; we keep the array (one element each).
    array = np.array([[b"ab"], [b"cd"]])
    output = NumpyCodec.encode_output("foo", array)
    assert (Datatype(output.datatype).value, output.shape) == ("BYTES", [2, 1])
    assert isinstance(output.data.root, np.ndarray)
    assert _json(output)["data"] == ["ab", "cd"]
    np.testing.assert_array_equal(NumpyCodec.decode_output(output), array)


@pytest.mark.parametrize(
    ("request_input", "expected"),
    [
        (
            RequestInput(name="foo", shape=[2, 1], data=[b"\x01", b"\x02"], datatype="BYTES"),
            np.array([[b"\x01"], [b"\x02"]], dtype=bytes),
        ),
        (
            RequestInput(name="foo", shape=[2], data=["foo", "bar"], datatype="BYTES"),
            np.array(["foo", "bar"], dtype=str),
        ),
        (  # MLServer's own single-buffer form
            RequestInput(name="foo", shape=[2, 1], data=[b"\x01\x02"], datatype="BYTES"),
            np.array([[b"\x01"], [b"\x02"]], dtype=bytes),
        ),
        (
            RequestInput(name="foo", shape=[2], data=[b"abcd"], datatype="BYTES"),
            np.array([b"ab", b"cd"]),
        ),
        (
            RequestInput(name="foo", shape=[2], data=[None, "bar"], datatype="BYTES"),
            np.array([None, "bar"], dtype=object),
        ),
        (
            RequestInput(name="foo", shape=[2, 1], data=[["a"], ["b"]], datatype="BYTES"),
            np.array([["a"], ["b"]]),
        ),
    ],
)
def test_decode_bytes(request_input: RequestInput, expected: npt.NDArray[Any]) -> None:
    decoded = NumpyCodec.decode_input(request_input)
    assert decoded.dtype.kind == expected.dtype.kind
    np.testing.assert_array_equal(decoded, expected)


def test_bytes_and_str_are_told_apart() -> None:
    as_bytes = NumpyCodec.decode_input(
        RequestInput(name="x", shape=[1], datatype="BYTES", data=[b"hi"])
    )
    as_str = NumpyCodec.decode_input(
        RequestInput(name="x", shape=[1], datatype="BYTES", data=["hi"])
    )
    assert as_bytes[0] == b"hi"
    assert as_str[0] == "hi"


@pytest.mark.parametrize(
    "request_input",
    [
        RequestInput(name="foo", shape=[3], data=[1, 2, 3], datatype="INT32"),
        RequestInput(name="foo", shape=[2, 2], data=[1, 2, 3, 4], datatype="INT32"),
        RequestInput(name="foo", shape=[2], data=[1, 2], datatype="FP32"),
        RequestInput(name="foo", shape=[2, 1], data=[b"\x01\x02"], datatype="BYTES"),
        RequestInput(name="foo", shape=[2], data=["foo", "bar"], datatype="BYTES"),
    ],
)
def test_codec_idempotent(request_input: RequestInput) -> None:
    decoded = NumpyCodec.decode_input(request_input)
    output = NumpyCodec.encode_output("foo", decoded)
    assert output.datatype == request_input.datatype
    again = NumpyCodec.decode_output(output)
    # As MLServer, str arrays are sent as UTF-8 bytes, so they come back as bytes without JSON.
    assert _text(again) == _text(decoded)


def _text(array: npt.NDArray[Any]) -> list[Any]:
    return [e.decode() if isinstance(e, bytes) else e for e in array.ravel().tolist()]


# Errors: a CodecError that names the input and says what is wrong.


@pytest.mark.parametrize(
    ("request_input", "match"),
    [
        (
            RequestInput(name="pixels", shape=[2, 2], datatype="FP32", data=[1, 2, 3]),
            r"input 'pixels' has 3 element\(s\), which do not fit shape \[2, 2\]",
        ),
        (
            RequestInput(name="pixels", shape=[2, 2], datatype="FP32", data=np.zeros(3)),
            r"input 'pixels' has 3 element\(s\)",
        ),
        (
            RequestInput(name="pixels", shape=[1], datatype="FP32", data=["a"]),
            "input 'pixels' has data that does not fit datatype FP32",
        ),
        (
            RequestInput(name="pixels", shape=[1], datatype="UINT8", data=[300]),
            "input 'pixels' has data that does not fit datatype UINT8",
        ),
        (
            RequestInput(name="pixels", shape=[1], datatype="UINT8", data=np.array([300])),
            r"input 'pixels' holds values in \[300, 300\], outside UINT8's range \[0, 255\]",
        ),
        (
            RequestInput(name="pixels", shape=[1], datatype="INT32", data=[None]),
            "does not fit datatype INT32",
        ),
        (
            RequestInput(name="pixels", shape=[1], datatype="FP16", data=[1e10]),
            "does not fit datatype FP16: overflow",
        ),
        (
            RequestInput(name="pixels", shape=[1], datatype="INT32", data=np.array([np.nan])),
            "holds float64 data that does not fit INT32",
        ),
        (
            RequestInput(name="pixels", shape=[2], datatype="INT8", data=[[1, 2], [3]]),
            "does not fit datatype INT8",
        ),
        (
            RequestInput(name="pixels", shape=[1], datatype="BYTES", data=[1]),
            "input 'pixels' is BYTES, but element 0 is int",
        ),
        (
            RequestInput(name="pixels", shape=[1], datatype="BYTES", data=np.array([1.0])),
            "input 'pixels' is BYTES, but its data is a float64 array",
        ),
        (
            RequestInput(name="pixels", shape=[3], datatype="BYTES", data=[b"ab"]),
            "do not split into shape",
        ),
    ],
)
def test_bad_data_raises_codec_error_naming_the_input(
    request_input: RequestInput, match: str
) -> None:
    with pytest.raises(CodecError, match=match) as info:
        NumpyCodec.decode_input(request_input)
    assert info.value.name == "pixels"
    assert info.value.status_code == 400


def test_decode_output_error_says_output() -> None:
    output = ResponseOutput(name="y", shape=[2], datatype="FP32", data=[1.0])
    with pytest.raises(CodecError, match="output 'y'"):
        NumpyCodec.decode_output(output)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (np.array([1 + 2j]), "'z' has dtype complex128, which has no V2 datatype"),
        (np.array(["2020-01-01"], dtype="datetime64[D]"), "'z' has dtype datetime64"),
        ([1, 2], "NumpyCodec encodes numpy arrays, but 'z' is list"),
        (np.array([{"a": 1}], dtype=object), "element 0 is dict"),
    ],
)
def test_encode_errors(payload: Any, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        NumpyCodec.encode_output("z", payload)


@pytest.mark.parametrize(
    ("dtype", "datatype"),
    [
        (np.bool_, Datatype.BOOL),
        (np.uint8, Datatype.UINT8),
        (np.uint16, Datatype.UINT16),
        (np.uint32, Datatype.UINT32),
        (np.uint64, Datatype.UINT64),
        (np.int8, Datatype.INT8),
        (np.int16, Datatype.INT16),
        (np.int32, Datatype.INT32),
        (np.int64, Datatype.INT64),
        (np.float16, Datatype.FP16),
        (np.float32, Datatype.FP32),
        (np.float64, Datatype.FP64),
        (np.byte, Datatype.INT8),
        (bytes, Datatype.BYTES),
        (str, Datatype.BYTES),
        (object, Datatype.BYTES),
        (">f8", Datatype.FP64),
        (">u2", Datatype.UINT16),
    ],
)
def test_to_datatype(dtype: Any, datatype: Datatype) -> None:
    assert to_datatype(np.dtype(dtype)) == datatype


def test_to_datatype_rejects_unknown_dtypes() -> None:
    with pytest.raises(CodecError, match="complex64"):
        to_datatype(np.dtype(np.complex64))


def test_convert_nan() -> None:
    assert convert_nan(float("nan")) is None
    assert convert_nan(np.float32("nan")) is None
    assert convert_nan(1.5) == 1.5
    assert convert_nan("a") == "a"


def test_request_codec_single_input() -> None:
    request = NumpyRequestCodec.encode_request(np.array([[1, 2]], dtype=np.int32))
    assert request.parameters == Parameters(content_type="np")
    assert [i.name for i in request.inputs] == ["input-1"]
    np.testing.assert_array_equal(NumpyRequestCodec.decode_request(request), [[1, 2]])

    response = NumpyRequestCodec.encode_response("m", np.array([1.0]), "v1")
    assert isinstance(response, InferenceResponse)
    assert (response.model_name, response.model_version) == ("m", "v1")
    assert [o.name for o in response.outputs] == ["output-1"]


def test_request_codec_rejects_several_inputs() -> None:
    request = InferenceRequest(
        inputs=[
            RequestInput(name="a", shape=[1], datatype="INT32", data=[1]),
            RequestInput(name="b", shape=[1], datatype="INT32", data=[2]),
        ]
    )
    with pytest.raises(CodecError, match="only supports a single input tensor"):
        NumpyRequestCodec.decode_request(request)
