"""StringCodec, Base64Codec and DatetimeCodec: the BYTES codecs, as MLServer's."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pytest

from conveyor.codecs import (
    Base64Codec,
    CodecError,
    DatetimeCodec,
    StringCodec,
    StringRequestCodec,
)
from conveyor.codecs.string import decode_str
from conveyor.types import InferenceRequest, Parameters, RequestInput, ResponseOutput

ISO = "2021-08-24T15:01:19"
TZ_ISO = "2021-08-24T15:01:19-04:00"
WHEN = datetime.fromisoformat(ISO)
TZ_WHEN = datetime.fromisoformat(TZ_ISO)
FUN_B64 = b"UHl0aG9uIGlzIGZ1bg=="


def _bytes_input(data: Any, shape: list[int] | None = None) -> RequestInput:
    return RequestInput(name="foo", datatype="BYTES", shape=shape or [1, 1], data=data)


# StringCodec


@pytest.mark.parametrize(
    ("payload", "expected"),
    [(["foo", "foo2"], True), (["foo", b"foo2"], False), ("foo", False), (b"foo", False)],
)
def test_string_can_encode(payload: object, expected: bool) -> None:
    assert StringCodec.can_encode(payload) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"hello world", ["hello world"]),
        ("hello world", ["hello world"]),
        (["hello world"], ["hello world"]),
        ([b"hello world"], ["hello world"]),
        (["a", "b"], ["a", "b"]),
        ([b"hey", b"whats"], ["hey", "whats"]),
        ([None], [None]),  # MLServer passes None through
        ([["a"], ["b"]], ["a", "b"]),  # nested (shape [2, 1] sent as rows)
        (np.array([b"x", b"yz"]), ["x", "yz"]),
        (np.array(["é"]), ["é"]),
    ],
)
def test_string_decode_input(data: Any, expected: list[str | None]) -> None:
    assert StringCodec.decode_input(_bytes_input(data)) == expected


@pytest.mark.parametrize(
    ("payload", "use_bytes", "data"),
    [
        (["hello world"], True, [b"hello world"]),
        (["hey", "whats"], True, [b"hey", b"whats"]),
        (["hey", "whats"], False, ["hey", "whats"]),
        (["é"], True, ["é".encode()]),
    ],
)
def test_string_encode(payload: list[str], use_bytes: bool, data: list[Any]) -> None:
    output = StringCodec.encode_output("foo", payload, use_bytes=use_bytes)
    assert output == ResponseOutput(
        name="foo",
        shape=[len(payload), 1],
        datatype="BYTES",
        data=data,
        parameters=Parameters(content_type="str"),
    )
    request_input = StringCodec.encode_input("foo", payload, use_bytes=use_bytes)
    assert (request_input.data, request_input.shape) == (output.data, output.shape)
    assert request_input.parameters == Parameters(content_type="str")
    assert StringCodec.decode_input(request_input) == payload


def test_string_round_trips_through_json() -> None:
    request_input = StringCodec.encode_input("foo", ["a", "ü", ""])
    parsed = RequestInput.model_validate_json(request_input.model_dump_json())
    assert StringCodec.decode_input(parsed) == ["a", "ü", ""]


@pytest.mark.parametrize(
    ("request_input", "match"),
    [
        (
            RequestInput(name="foo", datatype="FP32", shape=[1], data=[1.0]),
            "input 'foo' has datatype FP32, but content type 'str' decodes BYTES tensors only",
        ),
        (_bytes_input([b"\xff"]), "element 0 of input 'foo' is not a UTF-8 string"),
        (_bytes_input(["a", 3]), "element 1 of input 'foo' is not a UTF-8 string"),
    ],
)
def test_string_decode_errors(request_input: RequestInput, match: str) -> None:
    with pytest.raises(CodecError, match=match) as info:
        StringCodec.decode_input(request_input)
    assert info.value.name == "foo"


def test_string_encode_errors() -> None:
    with pytest.raises(CodecError, match="element 1 of 'foo' is int"):
        StringCodec.encode_output("foo", ["a", 1])  # type: ignore[list-item]
    with pytest.raises(CodecError, match="got str for 'foo'"):
        StringCodec.encode_input("foo", "abc")  # type: ignore[arg-type]


def test_decode_str() -> None:
    assert decode_str(b"caf\xc3\xa9") == "café"
    assert decode_str("x") == "x"
    assert decode_str(None) is None


def test_string_request_codec() -> None:
    request = StringRequestCodec.encode_request(["a", "b"])
    assert request.parameters == Parameters(content_type="str")
    assert StringRequestCodec.decode_request(request) == ["a", "b"]
    response = StringRequestCodec.encode_response("m", ["x"])
    assert StringRequestCodec.decode_response(response) == ["x"]
    assert StringRequestCodec.can_encode(["x"])
    with pytest.raises(CodecError, match="single input"):
        StringRequestCodec.decode_request(InferenceRequest(inputs=[]))


# Base64Codec


@pytest.mark.parametrize(
    ("payload", "expected"),
    [([b"Python is fun", b"foo"], True), ([b"Python is fun", "foo"], False), (b"x", False)],
)
def test_base64_can_encode(payload: object, expected: bool) -> None:
    assert Base64Codec.can_encode(payload) == expected


@pytest.mark.parametrize(
    ("payload", "use_bytes", "data"),
    [
        ([b"Python is fun"], True, [FUN_B64]),
        (["Python is fun"], True, [FUN_B64]),
        ([b"Python is fun", b"Python is fun"], True, [FUN_B64, FUN_B64]),
        ([b"Python is fun"], False, [FUN_B64.decode()]),
    ],
)
def test_base64_encode(payload: list[bytes], use_bytes: bool, data: list[Any]) -> None:
    expected = {
        "name": "foo",
        "shape": [len(payload), 1],
        "datatype": "BYTES",
        "data": data,
        "parameters": Parameters(content_type="base64"),
    }
    assert Base64Codec.encode_output("foo", payload, use_bytes=use_bytes) == ResponseOutput(
        **expected
    )
    assert Base64Codec.encode_input("foo", payload, use_bytes=use_bytes) == RequestInput(**expected)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (FUN_B64.decode(), [b"Python is fun"]),
        # As MLServer: what is not base64 is taken as the raw bytes.
        (b"Python is fun", [b"Python is fun"]),
        ("Python is fun", [b"Python is fun"]),
        ([FUN_B64, FUN_B64], [b"Python is fun", b"Python is fun"]),
        (np.array([FUN_B64]), [b"Python is fun"]),
    ],
)
def test_base64_decode(data: Any, expected: list[bytes]) -> None:
    assert Base64Codec.decode_input(_bytes_input(data)) == expected
    output = ResponseOutput(name="foo", datatype="BYTES", shape=[1, 1], data=data)
    assert Base64Codec.decode_output(output) == expected


def test_base64_round_trips_binary_through_json() -> None:
    blobs = [bytes(range(256)), b"", b"\x00\xff"]
    request_input = Base64Codec.encode_input("img", blobs)
    parsed = RequestInput.model_validate_json(request_input.model_dump_json())
    assert Base64Codec.decode_input(parsed) == blobs


def test_base64_errors() -> None:
    with pytest.raises(CodecError, match="element 0 of input 'foo' is int"):
        Base64Codec.decode_input(_bytes_input([1]))
    with pytest.raises(CodecError, match="content type 'base64' decodes BYTES tensors only"):
        Base64Codec.decode_input(RequestInput(name="foo", datatype="INT8", shape=[1], data=[1]))
    with pytest.raises(CodecError, match="element 0 of 'foo' is int"):
        Base64Codec.encode_output("foo", [1])  # type: ignore[list-item]


# DatetimeCodec


@pytest.mark.parametrize(
    ("payload", "expected"),
    [([WHEN, TZ_WHEN], True), ([WHEN, ISO], False), (WHEN, False)],
)
def test_datetime_can_encode(payload: object, expected: bool) -> None:
    assert DatetimeCodec.can_encode(payload) == expected


@pytest.mark.parametrize(
    ("payload", "use_bytes", "data"),
    [
        ([WHEN], True, [ISO.encode()]),
        ([WHEN, WHEN], True, [ISO.encode(), ISO.encode()]),
        ([ISO], True, [ISO.encode()]),  # str is taken to be ISO already
        ([TZ_WHEN], True, [TZ_ISO.encode()]),
        ([TZ_WHEN], False, [TZ_ISO]),
    ],
)
def test_datetime_encode(payload: list[str | datetime], use_bytes: bool, data: list[Any]) -> None:
    expected = {
        "name": "foo",
        "shape": [len(payload), 1],
        "datatype": "BYTES",
        "data": data,
        "parameters": Parameters(content_type="datetime"),
    }
    assert DatetimeCodec.encode_output("foo", payload, use_bytes=use_bytes) == ResponseOutput(
        **expected
    )
    assert DatetimeCodec.encode_input("foo", payload, use_bytes=use_bytes) == RequestInput(
        **expected
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (ISO.encode(), [WHEN]),
        ([ISO], [WHEN]),
        ([ISO.encode(), ISO.encode()], [WHEN, WHEN]),
        ([ISO, ISO], [WHEN, WHEN]),
        ([TZ_ISO], [TZ_WHEN]),
    ],
)
def test_datetime_decode(data: Any, expected: list[datetime]) -> None:
    assert DatetimeCodec.decode_input(_bytes_input(data)) == expected
    output = ResponseOutput(name="foo", datatype="BYTES", shape=[1, 1], data=data)
    assert DatetimeCodec.decode_output(output) == expected


def test_datetime_errors() -> None:
    with pytest.raises(CodecError, match="element 1 of input 'foo' is not an ISO 8601 datetime"):
        DatetimeCodec.decode_input(_bytes_input([ISO, "yesterday"]))
    with pytest.raises(CodecError, match="element 0 of input 'foo' is not an ISO 8601"):
        DatetimeCodec.decode_input(_bytes_input([None]))
    with pytest.raises(CodecError, match="element 0 of 'foo' is int"):
        DatetimeCodec.encode_output("foo", [3])  # type: ignore[list-item]
