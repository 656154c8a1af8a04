"""The names MLServer's runtimes and examples import, under the same module paths, behaving as
MLServer's (get_model_uri, generate_uuid, logger, custom_handler, BatchedRequests, _encode_data)."""

from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path

import numpy as np
import pytest

from conveyor.errors import InvalidModelURI
from conveyor.model import MLModel
from conveyor.repository import load_model_settings
from conveyor.settings import ModelParameters, ModelSettings
from conveyor.types import InferenceRequest, InferenceResponse, Parameters, ResponseOutput

pytestmark = pytest.mark.anyio


def settings_with(uri: str | None, source: Path | None = None) -> ModelSettings:
    settings = ModelSettings(name="m", implementation=MLModel, parameters=ModelParameters(uri=uri))
    if source is not None:
        settings._source = str(source)
    return settings


async def test_get_model_uri_finds_a_wellknown_file_in_the_folder(tmp_path: Path) -> None:
    from conveyor.utils import get_model_uri

    (tmp_path / "model-settings.json").write_text('{"implementation": "conveyor.MLModel"}')
    (tmp_path / "model.pkl").write_bytes(b"")
    (tmp_path / "model.joblib").write_bytes(b"")
    settings = load_model_settings(tmp_path)  # its uri defaults to the folder

    found = await get_model_uri(settings, wellknown_filenames=["model.joblib", "model.pkl"])
    assert found == str(tmp_path / "model.joblib")
    found = await get_model_uri(settings, wellknown_filenames=["model.pkl"])
    assert found == str(tmp_path / "model.pkl")
    # None of them there: the folder itself, for the runtime to look into.
    assert await get_model_uri(settings, wellknown_filenames=["model.bst"]) == str(tmp_path)
    assert await get_model_uri(settings) == str(tmp_path)


@pytest.mark.parametrize("scheme", ["", "file:"])
async def test_get_model_uri_resolves_against_the_settings_folder(
    tmp_path: Path, scheme: str
) -> None:
    from conveyor.utils import get_model_uri

    (tmp_path / "weights.bin").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    settings = settings_with(f"{scheme}../weights.bin", source=tmp_path / "sub" / "x.json")

    assert await get_model_uri(settings) == str(tmp_path / "weights.bin")


async def test_get_model_uri_leaves_other_schemes_to_the_runtime() -> None:
    from conveyor.utils import get_model_uri

    assert await get_model_uri(settings_with("s3://bucket/key")) == "s3://bucket/key"


async def test_get_model_uri_raises_mlservers_error(tmp_path: Path) -> None:
    from conveyor.utils import get_model_uri

    missing = tmp_path / "nothing-here.bin"
    with pytest.raises(InvalidModelURI, match=re.escape(f"model m ({missing})")) as info:
        await get_model_uri(settings_with(str(missing)))
    assert info.value.status_code == 422
    with pytest.raises(InvalidModelURI, match=r"^Invalid URI specified for model m$"):
        await get_model_uri(settings_with(None))
    no_parameters = ModelSettings(name="m", implementation=MLModel)
    with pytest.raises(InvalidModelURI):
        await get_model_uri(no_parameters)


def test_generate_uuid() -> None:
    from conveyor.utils import generate_uuid

    first, second = generate_uuid(), generate_uuid()
    assert first != second
    assert uuid.UUID(first).version == 4


def test_headers_go_into_and_out_of_parameters() -> None:
    from conveyor.utils import extract_headers, insert_headers

    request = insert_headers(InferenceRequest(inputs=[]), {"x-a": "1"})
    assert request.parameters is not None
    assert request.parameters.headers == {"x-a": "1"}
    response = InferenceResponse(
        model_name="m", outputs=[], parameters=Parameters(headers={"x-b": "2"})
    )
    assert extract_headers(response) == {"x-b": "2"}
    assert response.parameters is not None
    assert response.parameters.headers is None
    assert extract_headers(response) is None


def test_logger_is_the_packages(caplog: pytest.LogCaptureFixture) -> None:
    from conveyor.logging import logger

    assert logger is logging.getLogger("conveyor")
    with caplog.at_level(logging.INFO, logger="conveyor"):
        logger.info("loaded %s", "m")
    assert [(r.name, r.getMessage()) for r in caplog.records] == [("conveyor", "loaded m")]


def test_custom_handler_under_mlservers_module_paths() -> None:
    import conveyor
    from conveyor.handlers import custom_handler
    from conveyor.handlers.custom import custom_handler as from_custom
    from conveyor.methods import exposed_methods

    assert custom_handler is from_custom is conveyor.custom_handler

    class Model(MLModel):
        @custom_handler(rest_path="/explain")
        async def explain(self, payload: InferenceRequest) -> InferenceResponse:
            raise NotImplementedError

    model = Model(ModelSettings(name="m", implementation=MLModel))
    assert "explain" in exposed_methods(model)


def test_encode_data_keeps_arrays_and_matches_mlservers_tensor() -> None:
    from conveyor.codecs.numpy import _encode_data, to_datatype

    array = np.array([[1.5, np.nan], [3.0, 4.0]])
    data = _encode_data(array, to_datatype(array.dtype))
    assert isinstance(data, np.ndarray)
    assert data.base is array  # a flat view, not a copy
    # The tensor an MLServer codec builds with it equals MLServer's (a list, NaN as None).
    output = ResponseOutput(name="y", shape=[2, 2], datatype="FP64", data=data)
    assert output == ResponseOutput(
        name="y", shape=[2, 2], datatype="FP64", data=[1.5, None, 3.0, 4.0]
    )
    words = np.array(["a", "bc"])
    assert _encode_data(words, to_datatype(words.dtype)) == [b"a", b"bc"]
