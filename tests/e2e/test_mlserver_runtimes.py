"""Runtimes written in MLServer's style, served by real workers after changing their imports.

Each runtime below is MLServer code (``from mlserver... import``) using one of the names
MLServer's own runtimes import (get_model_uri, generate_uuid, logger, custom_handler,
BatchedRequests, _encode_data); ``port()`` rewrites the imports and nothing else. The last one
is shaped like MLServer's sklearn runtime and serves a real scikit-learn model, whose answers
are checked against the same model run in this process.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from conveyor.client import Client
from conveyor.codecs import (
    NumpyCodec,
    NumpyRequestCodec,
    PandasCodec,
    StringCodec,
    StringRequestCodec,
)
from conveyor.errors import RemoteError
from conveyor.types import InferenceRequest, InferenceResponse, RequestOutput
from tests.support.calls import generator
from tests.support.fleet import Fleet

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(90),
    # older scikit-learn passes L-BFGS-B options that newer SciPy deprecates (CI's
    # lowest-versions run trains the model below with scikit-learn 1.4)
    pytest.mark.filterwarnings("ignore:scipy.optimize:DeprecationWarning"),
]

WEIGHTS_RUNTIME = '''
import json
import os

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.logging import logger
from mlserver.types import InferenceRequest, InferenceResponse, Parameters
from mlserver.utils import generate_uuid, get_model_uri


class WeightsModel(MLModel):
    """Scales its input by a factor read from the artefact get_model_uri finds."""

    async def load(self) -> bool:
        path = await get_model_uri(
            self._settings, wellknown_filenames=["weights.json", "weights.txt"]
        )
        with open(path) as f:
            self._factor = json.load(f)["factor"]
        self._load_id = generate_uuid()
        logger.info("weights-model loaded %s", os.path.basename(path))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = self.decode(payload.inputs[0], default_codec=NumpyCodec)
        return InferenceResponse(
            id=payload.id,
            model_name=self.name,
            model_version=self.version,
            # What predict saw, sent back to the test.
            parameters=Parameters(seen_id=payload.id, load_id=self._load_id),
            outputs=[NumpyCodec.encode_output("y", x * self._factor)],
        )
'''

EXPLAIN_RUNTIME = """
from mlserver import MLModel
from mlserver.codecs import StringCodec
from mlserver.handlers import custom_handler
from mlserver.types import InferenceRequest, InferenceResponse


class Explainer(MLModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        raise NotImplementedError("ask for an explanation")

    @custom_handler(rest_path="/explain")
    async def explain(self, payload: InferenceRequest) -> InferenceResponse:
        words = StringCodec.decode_input(payload.inputs[0])
        return InferenceResponse(
            model_name=self.name,
            outputs=[StringCodec.encode_output("why", [w.upper() for w in words])],
        )
"""

# As MLServer's alibi-detect runtime: requests pile up until a batch is full, then run merged.
DETECT_RUNTIME = """
from mlserver import MLModel
from mlserver.batching import BatchedRequests
from mlserver.codecs import NumpyCodec, NumpyRequestCodec
from mlserver.types import InferenceRequest, InferenceResponse, Parameters


class Centerer(MLModel):
    async def load(self) -> bool:
        self._batch = []
        self._batch_size = self._settings.parameters.extra["batch_size"]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        self._batch.append(payload)
        if len(self._batch) < self._batch_size:
            return InferenceResponse(model_name=self.name, outputs=[])
        batched = BatchedRequests({str(i): r for i, r in enumerate(self._batch)})
        self._batch = []
        x = NumpyRequestCodec.decode_request(batched.merged_request)
        merged = InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("centered", x - x.mean(axis=0))],
        )
        mine = batched.split_response(merged)[str(self._batch_size - 1)]
        mine.parameters = Parameters(batch_rows=int(x.shape[0]))
        return mine
"""

# As MLServer's huggingface runtime's NumpyListCodec, which builds its data with _encode_data.
NPLIST_RUNTIME = """
from typing import Any, List

import numpy as np

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.codecs.base import InputCodec, register_input_codec
from mlserver.codecs.lists import is_list_of
from mlserver.codecs.numpy import _encode_data, _to_ndarray, to_datatype
from mlserver.codecs.utils import inject_batch_dimension
from mlserver.types import (
    InferenceRequest,
    InferenceResponse,
    Parameters,
    RequestInput,
    ResponseOutput,
)


@register_input_codec
class NumpyListCodec(InputCodec):
    ContentType = "nplist"

    @classmethod
    def can_encode(cls, payload: Any) -> bool:
        return is_list_of(payload, np.ndarray) and len({m.shape for m in payload}) == 1

    @classmethod
    def encode_output(cls, name: str, payload: List[np.ndarray], **kwargs) -> ResponseOutput:
        composed = np.array(payload)
        datatype = to_datatype(composed.dtype)
        return ResponseOutput(
            name=name,
            datatype=datatype,
            shape=inject_batch_dimension(list(composed.shape)),
            data=_encode_data(composed, datatype),
            parameters=Parameters(content_type=cls.ContentType),
        )

    @classmethod
    def decode_input(cls, request_input: RequestInput) -> List[np.ndarray]:
        return list(_to_ndarray(request_input).reshape(request_input.shape))


class Embedder(MLModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        vectors = [np.outer(row, [1.0, -1.0]) for row in x]
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyListCodec.encode_output("vectors", vectors)],
        )
"""

# Shaped like MLServer's sklearn runtime: predict, predict_proba or transform as outputs,
# predict by default; a "pd" request decodes to a DataFrame, others to an array.
SKLEARN_RUNTIME = """
import joblib

from mlserver import MLModel
from mlserver.codecs import NumpyCodec, NumpyRequestCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse, RequestOutput
from mlserver.utils import get_model_uri

OUTPUTS = ("predict", "predict_proba", "transform")


class SKLearnLikeModel(MLModel):
    async def load(self) -> bool:
        uri = await get_model_uri(
            self._settings, wellknown_filenames=["model.joblib", "model.pickle", "model.pkl"]
        )
        self._model = joblib.load(uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        requested = payload.outputs or [RequestOutput(name="predict")]
        for output in requested:
            if output.name not in OUTPUTS:
                raise InferenceError(f"{output.name!r} is not one of {OUTPUTS}")
        X = self.decode_request(payload, default_codec=NumpyRequestCodec)
        outputs = [
            self.encode(getattr(self._model, o.name)(X), o, default_codec=NumpyCodec)
            for o in requested
        ]
        return InferenceResponse(
            model_name=self.name, model_version=self.version, outputs=outputs
        )
"""


def port(source: str) -> str:
    """Rewrites every `mlserver` import to `conveyor`, and touches nothing else."""
    return re.sub(r"^(from|import) mlserver\b", r"\1 conveyor", source, flags=re.MULTILINE)


def write_model(folder: Path, runtime: str, module: str, klass: str, **settings: Any) -> Path:
    folder.mkdir(parents=True)
    (folder / f"{module}.py").write_text(port(runtime))
    (folder / "model-settings.json").write_text(
        json.dumps({"implementation": f"{module}.{klass}", **settings})
    )
    return folder


def train() -> tuple[Pipeline, pd.DataFrame]:
    iris = load_iris(as_frame=True)
    frame: pd.DataFrame = iris.data
    frame.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    model.fit(frame, iris.target)
    return model, frame


@pytest.fixture(scope="module")
def sklearn_model() -> tuple[Pipeline, pd.DataFrame]:
    return train()


@pytest.fixture(scope="module")
def fleet(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, sklearn_model: tuple[Pipeline, Any]
) -> Iterator[Fleet]:
    """One worker serving every runtime above, from one folder of model folders."""
    models = tmp_path_factory.mktemp("mlserver-runtimes")
    weights = write_model(models / "weights-model", WEIGHTS_RUNTIME, "weights", "WeightsModel")
    (weights / "weights.json").write_text(json.dumps({"factor": 3.0}))
    (weights / "weights.txt").write_text("not this one: weights.json comes first")
    write_model(models / "explainer", EXPLAIN_RUNTIME, "explain", "Explainer")
    write_model(
        models / "centerer",
        DETECT_RUNTIME,
        "detect",
        "Centerer",
        parameters={"extra": {"batch_size": 3}},
    )
    write_model(models / "embedder", NPLIST_RUNTIME, "nplist", "Embedder")
    iris = write_model(models / "iris", SKLEARN_RUNTIME, "sklearn_like", "SKLearnLikeModel")
    joblib.dump(sklearn_model[0], iris / "model.joblib")

    fleet = Fleet(redis_url, f"t{uuid.uuid4().hex[:10]}")
    fleet.start(models)
    yield fleet
    fleet.stop()


def client(fleet: Fleet) -> Client:
    return Client(fleet.redis_url, prefix=fleet.prefix, timeout=30)


def rows(array: np.ndarray) -> InferenceRequest:
    return NumpyRequestCodec.encode_request(array)


async def test_get_model_uri_generate_uuid_and_logger(fleet: Fleet) -> None:
    # The runtime's logger line reaches the worker's log.
    fleet.workers[0].wait_for_log("weights-model loaded weights.json", timeout=5)
    async with client(fleet) as c:
        model = c.model("weights-model")
        anonymous = await model.predict(rows(np.array([[1.0, 2.0]])))
        named = rows(np.array([[4.0]]))
        named.id = "my-request"
        response = await model.predict(named)

    np.testing.assert_array_equal(NumpyCodec.decode_output(anonymous.outputs[0]), [[3.0, 6.0]])
    np.testing.assert_array_equal(NumpyCodec.decode_output(response.outputs[0]), [[12.0]])
    # As in MLServer, predict sees an id even when the caller sent none; the response keeps it.
    assert anonymous.parameters is not None
    assert response.parameters is not None
    seen = anonymous.parameters.model_extra or {}
    assert isinstance(seen["seen_id"], str)
    assert seen["seen_id"] == anonymous.id
    assert (response.parameters.model_extra or {})["seen_id"] == response.id == "my-request"
    assert uuid.UUID(seen["load_id"]).version == 4  # generate_uuid() at load


async def test_streamed_requests_get_an_id_too(fleet: Fleet) -> None:
    async def requests() -> AsyncIterator[InferenceRequest]:
        yield rows(np.array([[1.0]]))

    async with client(fleet) as c:
        stream = generator(c.model("weights-model").predict_stream(requests()))
        async with aclosing(stream):
            # MLServer's default predict_stream answers the first request with predict.
            (chunk,) = [response async for response in stream]

    assert chunk.parameters is not None
    assert isinstance((chunk.parameters.model_extra or {})["seen_id"], str)


async def test_custom_handler(fleet: Fleet) -> None:
    async with client(fleet) as c:
        request = StringRequestCodec.encode_request(["it", "depends"])
        answer = await c.model("explainer").explain(request)
        assert isinstance(answer, InferenceResponse)
        assert StringCodec.decode_output(answer.outputs[0]) == ["IT", "DEPENDS"]
        with pytest.raises(RemoteError, match="ask for an explanation"):
            await c.model("explainer").predict(request)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the runtime's batch is per worker
async def test_batched_requests(fleet: Fleet) -> None:
    parts = [np.array([[1.0, 10.0]]), np.array([[2.0, 20.0], [3.0, 30.0]]), np.array([[6.0, 0.0]])]
    async with client(fleet) as c:
        model = c.model("centerer")
        answers = [await model.predict(rows(part)) for part in parts]

    assert [a.outputs for a in answers[:2]] == [[], []]  # waiting for the batch to fill
    last = answers[2]
    merged = np.concatenate(parts)
    np.testing.assert_array_equal(
        NumpyCodec.decode_output(last.outputs[0]), (merged - merged.mean(axis=0))[3:]
    )
    assert last.outputs[0].shape == [1, 2]
    assert last.parameters is not None
    assert (last.parameters.model_extra or {})["batch_rows"] == 4


async def test_codec_built_with_encode_data(fleet: Fleet) -> None:
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    async with client(fleet) as c:
        response = await c.model("embedder").predict(rows(x))

    output = response.outputs[0]
    assert output.parameters is not None
    assert output.parameters.content_type == "nplist"
    expected = np.array([np.outer(row, [1.0, -1.0]) for row in x])
    assert output.shape == list(expected.shape)
    np.testing.assert_array_equal(NumpyCodec.decode_output(output), expected)


async def test_sklearn_like_runtime_answers_as_the_model_in_process(
    fleet: Fleet, sklearn_model: tuple[Pipeline, pd.DataFrame]
) -> None:
    model, frame = sklearn_model
    sample = frame.iloc[::15]  # rows of all three classes
    X = sample.to_numpy()

    async with client(fleet) as c:
        iris = c.model("iris")
        # An array request, predict by default.
        predicted = await iris.predict(rows(X))
        # predict_proba asked for by name, as MLServer's sklearn runtime takes it.
        proba_request = rows(X)
        proba_request.outputs = [RequestOutput(name="predict_proba")]
        proba = await iris.predict(proba_request)
        # A DataFrame request ("pd"), both outputs at once.
        frame_request = PandasCodec.encode_request(sample)
        frame_request.outputs = [RequestOutput(name="predict"), RequestOutput(name="predict_proba")]
        both = await iris.predict(frame_request)
        # An output it does not have: the runtime's InferenceError, with its message.
        bad = rows(X)
        bad.outputs = [RequestOutput(name="decision_path")]
        with pytest.raises(RemoteError, match="'decision_path' is not one of"):
            await iris.predict(bad)

    expected_labels = model.predict(sample).reshape(-1, 1)  # NumpyCodec sends [N] as [N, 1]
    expected_proba = model.predict_proba(sample)
    assert len(set(expected_labels.ravel())) == 3
    np.testing.assert_array_equal(NumpyCodec.decode_output(predicted.outputs[0]), expected_labels)
    np.testing.assert_allclose(
        NumpyCodec.decode_output(proba.outputs[0]), expected_proba, rtol=1e-12
    )
    assert [o.name for o in both.outputs] == ["predict", "predict_proba"]
    np.testing.assert_array_equal(NumpyCodec.decode_output(both.outputs[0]), expected_labels)
    np.testing.assert_allclose(
        NumpyCodec.decode_output(both.outputs[1]), expected_proba, rtol=1e-12
    )
    assert (predicted.model_name, both.model_name) == ("iris", "iris")
