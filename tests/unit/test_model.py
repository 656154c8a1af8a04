"""MLModel: MLServer's base-class behaviour, and its codec helpers."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

import numpy as np
import pytest

from conveyor.codecs import CodecNotFound, NumpyCodec, NumpyRequestCodec, StringCodec
from conveyor.model import MLModel
from conveyor.settings import ModelParameters, ModelSettings
from conveyor.types import (
    Datatype,
    InferenceRequest,
    InferenceResponse,
    MetadataTensor,
    Parameters,
    RequestInput,
    RequestOutput,
)

pytestmark = pytest.mark.anyio


class EchoModel(MLModel):
    """Answers each request with its id as the model name, to tell the answers apart."""

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        return InferenceResponse(model_name=payload.id or "", outputs=[])


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> object:
    return request.param


def make_settings(**fields: object) -> ModelSettings:
    return ModelSettings.model_validate(
        {"name": "m", "implementation": MLModel, "parameters": {"version": "v2"}, **fields}
    )


def tensor(name: str, content_type: str | None = None) -> MetadataTensor:
    parameters = Parameters(content_type=content_type) if content_type else None
    return MetadataTensor(name=name, datatype="FP64", shape=[-1], parameters=parameters)


def request_input(name: str = "a", content_type: str | None = None) -> RequestInput:
    parameters = Parameters(content_type=content_type) if content_type else None
    return RequestInput(name=name, datatype="FP64", shape=[2], data=[1, 2], parameters=parameters)


async def requests(*ids: str) -> AsyncGenerator[InferenceRequest]:
    for request_id in ids:
        yield InferenceRequest(id=request_id, inputs=[])


def test_exposes_its_settings() -> None:
    settings = make_settings()
    model = MLModel(settings)

    assert (model.name, model.version, model.settings) == ("m", "v2", settings)
    assert model._settings is settings
    assert model.ready is False


async def test_default_methods_behave_as_mlserver() -> None:
    model = MLModel(make_settings())

    assert await model.load()
    assert await model.unload()
    with pytest.raises(NotImplementedError):
        await model.predict(InferenceRequest(inputs=[]))


async def test_default_predict_stream_answers_the_first_request_only() -> None:
    model = EchoModel(make_settings())

    async with aclosing(requests("1", "2")) as payloads:
        answered = [response.model_name async for response in model.predict_stream(payloads)]
        unread = [payload.id async for payload in payloads]
    silent = [response async for response in model.predict_stream(requests())]

    assert (answered, unread, silent) == (["1"], ["2"], [])


async def test_metadata_comes_from_the_settings() -> None:
    settings = make_settings(platform="p", versions=["x/1"], inputs=[tensor("a")])
    settings.parameters = ModelParameters(content_type="np")

    metadata = await MLModel(settings).metadata()

    assert (metadata.name, metadata.platform, metadata.versions) == ("m", "p", ["x/1"])
    assert (metadata.inputs, metadata.outputs) == ([tensor("a")], [])
    assert metadata.parameters == Parameters(content_type="np")


async def test_metadata_without_parameters_has_none() -> None:
    metadata = await MLModel(make_settings(parameters=None)).metadata()

    assert metadata.parameters is None


@pytest.mark.parametrize(
    ("metadata", "input_type", "default", "expected"),
    [
        ("np", None, None, np.array([1, 2])),  # from the settings' input metadata
        (None, "np", None, np.array([1, 2])),  # from the input's own parameters
        (None, None, NumpyCodec, np.array([1, 2])),  # from the default codec
        (None, None, None, [1, 2]),  # raw data
    ],
)
def test_decode_picks_the_codec_as_mlserver(
    metadata: str | None, input_type: str | None, default: type[NumpyCodec] | None, expected: object
) -> None:
    model = MLModel(make_settings(inputs=[tensor("a", metadata)]))

    decoded = model.decode(request_input("a", input_type), default_codec=default)

    assert isinstance(decoded, np.ndarray) == isinstance(expected, np.ndarray)
    np.testing.assert_array_equal(decoded, expected)


def test_inputs_setter_updates_decoding() -> None:
    model = MLModel(make_settings())

    model.inputs = [tensor("a", "np")]

    assert model.inputs == [tensor("a", "np")]
    assert isinstance(model.decode(request_input("a")), np.ndarray)


@pytest.mark.parametrize(
    ("content_type", "default", "decoded_type"),
    [
        ("np", None, np.ndarray),
        (None, NumpyRequestCodec, np.ndarray),
        (None, None, InferenceRequest),
    ],
)
def test_decode_request_picks_the_codec_as_mlserver(
    content_type: str | None, default: type[NumpyRequestCodec] | None, decoded_type: type
) -> None:
    model = MLModel(make_settings(parameters={"content_type": content_type}))
    payload = InferenceRequest(inputs=[request_input()])

    assert isinstance(model.decode_request(payload, default_codec=default), decoded_type)


def test_encode_response_names_the_model() -> None:
    model = MLModel(make_settings())

    response = model.encode_response(np.array([[1.0, 2.0]]))

    assert (response.model_name, response.model_version) == ("m", "v2")
    np.testing.assert_array_equal(NumpyCodec.decode_output(response.outputs[0]), [[1.0, 2.0]])


def test_encode_response_without_a_codec_raises() -> None:
    model = MLModel(make_settings())

    with pytest.raises(CodecNotFound, match="object"):
        model.encode_response(object())


def test_encode_uses_the_output_metadata_then_the_payload() -> None:
    model = MLModel(make_settings())
    model.outputs = [tensor("s", StringCodec.ContentType)]

    as_string = model.encode(["hi"], RequestOutput(name="s"))
    as_array = model.encode(np.array([1.0]), RequestOutput(name="n"))

    assert [Datatype(out.datatype) for out in (as_string, as_array)] == [
        Datatype.BYTES,
        Datatype.FP64,
    ]
    with pytest.raises(CodecNotFound, match="'n'"):
        model.encode(object(), RequestOutput(name="n"))
