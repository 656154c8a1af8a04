"""The public API of ``conveyor.codecs``: every name MLServer's ``mlserver.codecs`` exports, and
the JSON helpers of ``conveyor.codecs.json``."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pytest

import conveyor.codecs
from conveyor.codecs import CodecError
from conveyor.codecs.json import (
    decode_from_bytelike_json_to_dict,
    decode_json_input_or_output,
    encode_to_json,
    encode_to_json_bytes,
)
from conveyor.types import RequestInput, ResponseOutput

# mlserver/codecs/__init__.py's __all__
MLSERVER_CODECS_ALL = {
    "CodecError",
    "NumpyCodec",
    "NumpyRequestCodec",
    "StringCodec",
    "StringRequestCodec",
    "Base64Codec",
    "DatetimeCodec",
    "PandasCodec",
    "InputCodec",
    "InputCodecLike",
    "RequestCodec",
    "RequestCodecLike",
    "DecodedParameterName",
    "register_input_codec",
    "register_request_codec",
    "has_decoded",
    "get_decoded",
    "get_decoded_or_raw",
    "encode_inference_response",
    "encode_response_output",
    "decode_request_input",
    "decode_inference_request",
    "decode_args",
}
EXTRA = {"CodecNotFound", "find_input_codec", "find_request_codec"}


def test_all_is_mlservers_plus_lookups() -> None:
    assert isinstance(conveyor.codecs.__all__, tuple)
    assert set(conveyor.codecs.__all__) == MLSERVER_CODECS_ALL | EXTRA
    for name in conveyor.codecs.__all__:
        assert getattr(conveyor.codecs, name) is not None, name


@pytest.mark.parametrize(
    "module",
    [
        "base",
        "base64",
        "datetime",
        "decorator",
        "errors",
        "json",
        "lists",
        "numpy",
        "pandas",
        "string",
        "utils",
    ],
)
def test_submodules_have_tuple_all(module: str) -> None:
    imported = importlib.import_module(f"conveyor.codecs.{module}")
    assert isinstance(imported.__all__, tuple)
    for name in imported.__all__:
        assert hasattr(imported, name), f"{module}.{name}"


def test_content_types() -> None:
    codecs = conveyor.codecs
    assert codecs.NumpyCodec.ContentType == "np"
    assert codecs.NumpyRequestCodec.ContentType == "np"
    assert codecs.StringCodec.ContentType == "str"
    assert codecs.StringRequestCodec.ContentType == "str"
    assert codecs.Base64Codec.ContentType == "base64"
    assert codecs.DatetimeCodec.ContentType == "datetime"
    assert codecs.PandasCodec.ContentType == "pd"
    assert codecs.DecodedParameterName == "_decoded_payload"


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        conveyor.codecs.Nope  # noqa: B018


# JSON helpers (as mlserver.codecs.json)


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        (b"{}", {}),
        ("{}", {}),
        ('{"hello":"world"}', {"hello": "world"}),
        (b'{"hello":"world", "foo": { "bar": "baz" } }', {"hello": "world", "foo": {"bar": "baz"}}),
    ],
)
def test_decode_from_bytelike_json(encoded: bytes | str, expected: dict[str, Any]) -> None:
    assert decode_from_bytelike_json_to_dict(encoded) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({}, b"{}"),
        ({"hello": "world"}, b'{"hello":"world"}'),
        ({"hello": b"world", "foo": {"bar": "baz"}}, b'{"hello":"world","foo":{"bar":"baz"}}'),
        ({"é": "ü"}, '{"é":"ü"}'.encode()),
    ],
)
def test_encode_to_json_bytes(value: Any, expected: bytes) -> None:
    assert encode_to_json_bytes(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([1, 2, 3], b"[1,2,3]"),
        ({"a": 1, "b": 2}, b'{"a":1,"b":2}'),
        (np.array([1, 2, 3]), b"[1,2,3]"),
        (
            {"x": np.float32(0.5), "n": np.int64(3), "ok": np.bool_(True)},
            b'{"x":0.5,"n":3,"ok":true}',
        ),
    ],
)
def test_encode_to_json(value: Any, expected: bytes) -> None:
    assert encode_to_json(value) == expected
    assert encode_to_json(value, use_bytes=False) == expected.decode()


@pytest.mark.parametrize("cls", [RequestInput, ResponseOutput])
def test_decode_json_input_or_output(cls: type[RequestInput] | type[ResponseOutput]) -> None:
    tensor = cls(name="foo", shape=[3, 1], datatype="BYTES", data=[b"[1]", "[2,3]", b'{"a":1}'])
    assert decode_json_input_or_output(tensor) == [[1], [2, 3], {"a": 1}]
    bad = cls(name="foo", shape=[1, 1], datatype="BYTES", data=[b"{nope"])
    with pytest.raises(CodecError, match=r"element 0 of (input|output) 'foo' is not JSON"):
        decode_json_input_or_output(bad)
