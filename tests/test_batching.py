"""Adaptive batching: merged and split results equal unbatched ones; shapes that cannot
merge run apart; a lone request waits max_batch_time and no longer; one bad request does
not fail its batch-mates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import numpy as np
import pytest
from fleet import Fleet, WorkerProcess
from trio.testing import MockClock

from conveyor.client import Client
from conveyor.codecs import NumpyCodec, StringCodec
from conveyor.errors import RemoteError
from conveyor.types import InferenceRequest, InferenceResponse, RequestInput
from conveyor.worker.batching import AdaptiveBatcher, merge_requests, split_response

NUMERIC = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
]


def numeric_request(values: np.ndarray, name: str = "x") -> InferenceRequest:
    return InferenceRequest(inputs=[NumpyCodec.encode_input(name, values)])


def echo(request: InferenceRequest) -> InferenceResponse:
    """The model: each input comes back as an output, times two where numeric."""
    outputs = []
    for request_input in request.inputs:
        array = NumpyCodec.decode_input(request_input)
        if array.dtype.kind in "iuf":
            array = array * 2
        outputs.append(NumpyCodec.encode_output(request_input.name, array))
    return InferenceResponse(model_name="m", outputs=outputs)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_merged_then_split_equals_unbatched(datatype: str) -> None:
    dtype = NumpyCodec.decode_input(
        RequestInput(name="x", shape=[1], datatype=datatype, data=[1])  # type: ignore[arg-type]
    ).dtype
    rng = np.random.default_rng(0)
    requests = [
        numeric_request((rng.integers(0, 2, size=(rows, 3)) * 3).astype(dtype))
        for rows in (1, 4, 2)
    ]
    for i, request in enumerate(requests):
        request.id = f"r{i}"
    merged = merge_requests(requests)
    assert merged.inputs[0].shape == [7, 3]
    batched = split_response(echo(merged), requests)
    for request, response in zip(requests, batched, strict=True):
        alone = echo(request)
        assert response.id == request.id
        assert response.outputs[0].shape == alone.outputs[0].shape
        assert response.outputs[0].datatype == alone.outputs[0].datatype
        np.testing.assert_array_equal(
            NumpyCodec.decode_output(response.outputs[0]),
            NumpyCodec.decode_output(alone.outputs[0]),
        )


def test_bytes_merge_and_split() -> None:
    requests = [
        InferenceRequest(inputs=[StringCodec.encode_input("s", words)])
        for words in (["a", "bb"], ["ccc"])
    ]
    responses = split_response(echo(merge_requests(requests)), requests)
    assert [StringCodec.decode_output(r.outputs[0]) for r in responses] == [["a", "bb"], ["ccc"]]


def test_an_output_that_does_not_follow_the_batch_cannot_be_split() -> None:
    requests = [numeric_request(np.ones((2, 1), "f4")), numeric_request(np.ones((1, 1), "f4"))]
    summary = InferenceResponse(
        model_name="m", outputs=[NumpyCodec.encode_output("total", np.ones(1, "f4"))]
    )
    with pytest.raises(ValueError, match="first dimension is not the batch's 3 rows"):
        split_response(summary, requests)


# -- the batcher, on trio's virtual clock: exact times, no wall-clock assertions ------------


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    return "trio", {"clock": MockClock(autojump_threshold=0)}


class Recorder:
    def __init__(self) -> None:
        self.batches: list[tuple[float, list[list[int]]]] = []

    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        self.batches.append((anyio.current_time(), [i.shape for i in request.inputs]))
        await anyio.sleep(0.010)  # the model's own time
        return echo(request)


@pytest.mark.anyio
async def test_a_lone_request_waits_max_batch_time_and_no_longer() -> None:
    recorder = Recorder()
    batcher = AdaptiveBatcher(recorder.predict, max_batch_size=32, max_batch_time=0.2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.run)
        start = anyio.current_time()
        await batcher.predict(numeric_request(np.ones((1, 2), "f4")))
        assert recorder.batches == [(start + 0.2, [[1, 2]])]
        assert anyio.current_time() == pytest.approx(start + 0.2 + 0.010)
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_full_batch_goes_at_once_and_shapes_that_cannot_merge_run_apart() -> None:
    recorder = Recorder()
    batcher = AdaptiveBatcher(recorder.predict, max_batch_size=4, max_batch_time=5.0)
    answers: dict[int, InferenceResponse] = {}

    async def call(i: int, columns: int) -> None:
        request = numeric_request(np.full((1, columns), i, "f4"))
        request.id = str(i)
        answers[i] = await batcher.predict(request)

    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.run)
        start = anyio.current_time()
        async with anyio.create_task_group() as calls:
            for i in range(4):  # full: no waiting for max_batch_time
                calls.start_soon(call, i, 2 if i % 2 else 3)
        tg.cancel_scope.cancel()
    assert sorted(shapes for _, shapes in recorder.batches) == [[[2, 2]], [[2, 3]]]
    assert all(at == start for at, _ in recorder.batches)
    for i, response in answers.items():
        assert response.id == str(i)
        np.testing.assert_array_equal(NumpyCodec.decode_output(response.outputs[0]), i * 2)


# -- end to end, with a worker subprocess -----------------------------------------------------

MODELS = Path(__file__).parent / "models_batching"


@pytest.fixture
def batched_worker(redis_url: str, prefix: str) -> Iterator[WorkerProcess]:
    fleet = Fleet(redis_url, prefix)
    yield fleet.start(MODELS)
    fleet.stop()


@pytest.mark.anyio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_fleet_batches_across_calls_and_isolates_a_bad_request(
    redis_url: str, prefix: str, batched_worker: WorkerProcess
) -> None:
    results: dict[int, InferenceResponse | BaseException] = {}
    async with Client(redis_url, prefix=prefix, timeout=30) as client:
        model = client.model("batched")

        async def call(i: int) -> None:
            request = numeric_request(np.full((1, 2), -1.0 if i == 7 else float(i), "f4"))
            request.id = f"req-{i}"
            try:
                results[i] = await model.predict(request)
            except RemoteError as error:
                results[i] = error

        async with anyio.create_task_group() as tg:
            for i in range(48):
                tg.start_soon(call, i)
    bad = results.pop(7)
    assert isinstance(bad, RemoteError)
    assert "negative input" in str(bad)
    batch_sizes = set()
    for i, response in results.items():
        assert isinstance(response, InferenceResponse)
        assert response.id == f"req-{i}"
        outputs = {o.name: NumpyCodec.decode_output(o) for o in response.outputs}
        np.testing.assert_array_equal(outputs["y"], np.full((1, 2), 2.0 * i, "f4"))
        batch_sizes.add(int(outputs["rows"][0, 0]))
    assert max(batch_sizes) > 1, "48 concurrent calls never shared a batch"
