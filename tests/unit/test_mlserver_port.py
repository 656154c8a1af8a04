"""A runtime written for MLServer runs on Conveyor once its imports say ``conveyor``."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

import conveyor
from conveyor.codecs import NumpyCodec
from conveyor.model import MLModel
from conveyor.repository import load_model_settings
from conveyor.settings import ModelSettings
from conveyor.types import InferenceRequest, MetadataTensor, RequestInput

pytestmark = pytest.mark.anyio

# Written as for MLServer, and left exactly so: the test ports it with `port()` below.
MLSERVER_RUNTIME = '''
import os
from typing import AsyncIterator

import numpy as np

from mlserver import MLModel
from mlserver.codecs import decode_args
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor


class ScaleModel(MLModel):
    """Multiplies its input by a factor read from the model's folder."""

    async def load(self) -> bool:
        with open(os.path.join(self.settings.parameters.uri, "factor.txt")) as f:
            self._factor = float(f.read())
        self.outputs = [MetadataTensor(name="scaled", datatype="FP64", shape=[-1, 2])]
        return True

    @decode_args
    async def predict(self, x: np.ndarray) -> np.ndarray:
        return x * self._factor

    async def predict_stream(
        self, payloads: AsyncIterator[InferenceRequest]
    ) -> AsyncIterator[InferenceResponse]:
        async for payload in payloads:
            yield await self.predict(payload)
'''

MODEL_SETTINGS = {
    "name": "scaler",
    "implementation": "runtime.ScaleModel",
    "platform": "custom",
    "versions": ["numpy/2"],
    "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 2]}],
    "parameters": {"version": "v1", "content_type": "np"},
}


def port(source: str) -> str:
    """Rewrites every `mlserver` import to `conveyor`, and touches nothing else."""
    return re.sub(r"^(from|import) mlserver\b", r"\1 conveyor", source, flags=re.MULTILINE)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> object:
    return request.param


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModelSettings]:
    # Until conveyor/__init__.py re-exports MLModel, lend it so `from conveyor import
    # MLModel` works; once it does, this sets the same object again.
    monkeypatch.setattr(conveyor, "MLModel", MLModel, raising=False)
    folder = tmp_path / "scaler"
    folder.mkdir()
    (folder / "runtime.py").write_text(port(MLSERVER_RUNTIME))
    (folder / "factor.txt").write_text("2.5")
    (folder / "model-settings.json").write_text(json.dumps(MODEL_SETTINGS))
    yield load_model_settings(folder)
    sys.modules.pop("runtime", None)


def request(*rows: tuple[float, float]) -> InferenceRequest:
    data = [value for row in rows for value in row]
    return InferenceRequest(
        id="r1", inputs=[RequestInput(name="x", datatype="FP64", shape=[len(rows), 2], data=data)]
    )


async def requests(*payloads: InferenceRequest) -> AsyncIterator[InferenceRequest]:
    for payload in payloads:
        yield payload


def test_porting_changes_only_import_lines() -> None:
    old, new = MLSERVER_RUNTIME.splitlines(), port(MLSERVER_RUNTIME).splitlines()
    changed = [line for line, ported in zip(old, new, strict=True) if line != ported]

    assert changed == [line for line in old if re.match(r"from mlserver(\.\w+)? import", line)]
    assert len(changed) == 3


async def test_ported_runtime_loads_and_predicts(settings: ModelSettings) -> None:
    model = settings.implementation(settings)

    assert await model.load()
    response = await model.predict(request((1.0, 2.0), (3.0, 4.0)))

    assert (response.model_name, response.model_version) == ("scaler", "v1")
    np.testing.assert_array_equal(
        NumpyCodec.decode_output(response.outputs[0]), [[2.5, 5.0], [7.5, 10.0]]
    )


async def test_ported_runtime_streams(settings: ModelSettings) -> None:
    model = settings.implementation(settings)
    await model.load()

    stream = model.predict_stream(requests(request((1.0, 1.0)), request((2.0, 2.0))))
    responses = [response async for response in stream]

    decoded = [NumpyCodec.decode_output(response.outputs[0]) for response in responses]
    np.testing.assert_array_equal(decoded, [[[2.5, 2.5]], [[5.0, 5.0]]])


async def test_ported_runtime_decodes_and_encodes(settings: ModelSettings) -> None:
    model = settings.implementation(settings)
    await model.load()

    # The settings' parameters.content_type ("np") picks the request codec.
    decoded = model.decode_request(request((1.0, 2.0), (3.0, 4.0)))
    response = model.encode_response(decoded.sum(axis=-1, keepdims=True))

    assert (response.model_name, response.model_version) == ("scaler", "v1")
    np.testing.assert_array_equal(NumpyCodec.decode_output(response.outputs[0]), [[3.0], [7.0]])


async def test_ported_runtime_reports_metadata(settings: ModelSettings) -> None:
    model = settings.implementation(settings)
    await model.load()

    metadata = await model.metadata()

    assert (metadata.name, metadata.platform) == ("scaler", "custom")
    assert metadata.versions == ["numpy/2"]
    assert metadata.inputs == [MetadataTensor(name="x", datatype="FP64", shape=[-1, 2])]
    assert metadata.outputs == [MetadataTensor(name="scaled", datatype="FP64", shape=[-1, 2])]
    assert metadata.parameters is not None
    assert metadata.parameters.content_type == "np"
