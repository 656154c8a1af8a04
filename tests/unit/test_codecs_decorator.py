"""``decode_args``: codecs picked from a predict method's type hints, as in MLServer."""

from __future__ import annotations

from typing import Any, Optional, Tuple  # noqa: UP035 (MLServer users write these)

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest

from conveyor.codecs import (
    CodecNotFound,
    NumpyCodec,
    NumpyRequestCodec,
    StringCodec,
    decode_args,
)
from conveyor.codecs.decorator import SignatureCodec, _as_list
from conveyor.codecs.errors import InputsNotFound, OutputNotFound
from conveyor.codecs.pandas import PandasCodec
from conveyor.codecs.utils import Codec
from conveyor.types import InferenceRequest, InferenceResponse, RequestInput, ResponseOutput


async def predict_fn(foo: np.ndarray, bar: list[str]) -> np.ndarray:
    return np.array([3])


def _implicit_optional(
    foo: np.ndarray,
    bar: list[str] = None,  # type: ignore[assignment]  # noqa: RUF013
) -> np.ndarray:
    return np.array([2])


def _explicit_optional(foo: np.ndarray, bar: Optional[list[str]]) -> np.ndarray:  # noqa: UP045
    return np.array([2])


def _union_optional(foo: np.ndarray, bar: None | list[str]) -> np.ndarray:  # noqa: RUF036
    return np.array([2])


@pytest.fixture
def signature_codec() -> SignatureCodec:
    return SignatureCodec(predict_fn)


@pytest.fixture
def inference_request() -> InferenceRequest:
    return InferenceRequest(
        inputs=[
            NumpyCodec.encode_input("foo", np.array([[1, 2]], dtype=np.int32)),
            StringCodec.encode_input("bar", ["asd", "qwe"]),
        ]
    )


def test_get_codecs(signature_codec: SignatureCodec) -> None:
    assert signature_codec._input_codecs == {"foo": NumpyCodec, "bar": StringCodec}
    assert signature_codec._output_codecs == [NumpyCodec]


def test_get_codecs_with_request() -> None:
    def _f(foo: pd.DataFrame) -> Tuple[np.ndarray, pd.DataFrame]:  # noqa: UP006
        return np.array([2]), pd.DataFrame({"bar": [2]})

    signature_codec = SignatureCodec(_f)
    assert signature_codec._input_codecs == {"foo": PandasCodec}
    assert signature_codec._output_codecs == [NumpyCodec, PandasCodec]


@pytest.mark.parametrize("fn", [_implicit_optional, _explicit_optional, _union_optional])
def test_get_codecs_with_optional(fn: Any) -> None:
    signature_codec = SignatureCodec(fn)
    assert signature_codec._input_codecs == {"foo": NumpyCodec, "bar": StringCodec}
    assert signature_codec._output_codecs == [NumpyCodec]


def test_typed_array_hint_finds_numpy_codec() -> None:
    def _f(foo: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return foo

    assert SignatureCodec(_f)._input_codecs == {"foo": NumpyCodec}


def test_hint_without_codec_raises_codec_not_found() -> None:
    def _f(foo: dict[str, int]) -> np.ndarray:
        return np.array([1])

    with pytest.raises(CodecNotFound, match="input field with name 'foo'"):
        SignatureCodec(_f)


@pytest.mark.parametrize(
    ("request_inputs", "input_codecs", "expected"),
    [
        (
            [
                RequestInput(name="foo", datatype="INT64", shape=[1], data=[2]),
                RequestInput(name="bar", datatype="BYTES", shape=[1], data=[b"asd"]),
            ],
            {"foo": NumpyCodec, "bar": StringCodec},
            {"foo": np.array([2]), "bar": ["asd"]},
        ),
        (
            [
                RequestInput(name="a", datatype="INT64", shape=[1], data=[2]),
                RequestInput(name="b", datatype="BYTES", shape=[1], data=["asd"]),
            ],
            {"foo": PandasCodec},
            {"foo": pd.DataFrame({"a": [2], "b": ["asd"]})},
        ),
        (
            [
                RequestInput(name="bar", datatype="BYTES", shape=[1], data=[b"fiu"]),
                RequestInput(name="a", datatype="INT64", shape=[1], data=[2]),
                RequestInput(name="b", datatype="BYTES", shape=[1], data=["asd"]),
            ],
            {"bar": StringCodec, "foo": PandasCodec},
            {"bar": ["fiu"], "foo": pd.DataFrame({"a": [2], "b": ["asd"]})},
        ),
    ],
)
def test_decode_request(
    signature_codec: SignatureCodec,
    request_inputs: list[RequestInput],
    input_codecs: dict[str, Codec],
    expected: dict[str, Any],
) -> None:
    signature_codec._input_codecs = input_codecs
    inputs = signature_codec.decode_request(InferenceRequest(inputs=request_inputs))
    assert inputs.keys() == expected.keys()
    for key, value in inputs.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(value, expected[key])
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, expected[key])
        else:
            assert value == expected[key]


def test_decode_request_not_found(
    signature_codec: SignatureCodec, inference_request: InferenceRequest
) -> None:
    inference_request.inputs[0].name = "not-foo"
    with pytest.raises(InputsNotFound, match="Input 'not-foo' was not found"):
        signature_codec.decode_request(inference_request)


def _plain(outputs: list[ResponseOutput]) -> list[dict[str, Any]]:
    return [output.model_dump(mode="json") for output in outputs]


@pytest.mark.parametrize(
    ("output_values", "output_codecs", "expected"),
    [
        (
            np.array([2]),
            [NumpyCodec],
            [NumpyCodec.encode_output("output-0", np.array([2]))],
        ),
        (["foo"], [StringCodec], [StringCodec.encode_output("output-0", ["foo"])]),
        (
            (np.array([2]), ["foo"]),
            [NumpyCodec, StringCodec],
            [
                NumpyCodec.encode_output("output-0", np.array([2])),
                StringCodec.encode_output("output-1", ["foo"]),
            ],
        ),
        (
            (pd.DataFrame({"a": [2], "b": ["foo"]}), ["bar"]),
            [PandasCodec, StringCodec],
            [
                *PandasCodec.encode_outputs(pd.DataFrame({"a": [2], "b": ["foo"]})),
                StringCodec.encode_output("output-1", ["bar"]),
            ],
        ),
    ],
)
def test_encode_response(
    signature_codec: SignatureCodec,
    output_values: Any,
    output_codecs: list[Codec],
    expected: list[ResponseOutput],
) -> None:
    signature_codec._output_codecs = output_codecs
    response = signature_codec.encode_response(model_name="foo", payload=output_values)
    assert response.model_name == "foo"
    assert _plain(response.outputs) == _plain(expected)


@pytest.mark.parametrize("invalid_values", [("foo", np.array([2])), (np.array([2]), "foo")])
def test_encode_response_not_found(signature_codec: SignatureCodec, invalid_values: Any) -> None:
    with pytest.raises(OutputNotFound):
        signature_codec.encode_response(model_name="foo", payload=invalid_values)


class SimpleModel:
    """Stands in for ``MLModel``: ``decode_args`` reads only ``name`` and ``version``."""

    name = "simple"
    version: str | None = "v1"

    @decode_args
    async def predict(self, foo: np.ndarray, bar: list[str]) -> np.ndarray:
        assert bar == ["asd", "qwe"]
        summed: np.ndarray = foo.sum(axis=1, keepdims=True)
        return summed


@pytest.mark.anyio
async def test_decode_args(inference_request: InferenceRequest) -> None:
    response = await SimpleModel().predict(inference_request)
    assert isinstance(response, InferenceResponse)
    assert (response.model_name, response.model_version) == ("simple", "v1")
    np.testing.assert_array_equal(NumpyRequestCodec.decode_response(response), [[3]])
    assert SimpleModel.predict.__name__ == "predict"


def test_as_list() -> None:
    assert _as_list(Tuple[np.ndarray, np.ndarray]) == [np.ndarray, np.ndarray]  # noqa: UP006
    assert _as_list(tuple[np.ndarray, str]) == [np.ndarray, str]
    assert _as_list((np.ndarray, np.ndarray)) == [np.ndarray, np.ndarray]
    assert _as_list(None) == []
    assert _as_list(np.ndarray) == [np.ndarray]
