"""Adaptive batching: merged and split results equal unbatched ones; shapes that cannot
merge run apart; a lone request waits max_batch_time and no longer; one bad request does
not fail its batch-mates."""

from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import pytest
from trio.testing import MockClock

from conveyor.client import Client
from conveyor.codecs import NumpyCodec, StringCodec
from conveyor.errors import RemoteError
from conveyor.types import InferenceRequest, InferenceResponse, RequestInput
from conveyor.worker.batcher import (
    AdaptiveBatcher,
    Answered,
    merge_requests,
    split_response,
)
from tests.support.fleet import Fleet, WorkerProcess

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
        RequestInput(name="x", shape=[1], datatype=datatype, data=[1])
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
    """The model: echo (times two), ``seconds`` per call whatever its size; records each call
    (its start time and input shapes) and the most calls it ever ran at once."""

    def __init__(self, seconds: float = 0.010) -> None:
        self.seconds = seconds
        self.batches: list[tuple[float, list[list[int]]]] = []
        self.running = 0
        self.most_running = 0

    def since(self, start: float) -> list[tuple[float, list[list[int]]]]:
        """The calls: (seconds after ``start``, to the microsecond; input shapes)."""
        return [(round(at - start, 6), shapes) for at, shapes in self.batches]

    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        self.batches.append((anyio.current_time(), [i.shape for i in request.inputs]))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await anyio.sleep(self.seconds)  # the model's own time
            response = echo(request)
            response.id = request.id  # as a model answering a lone request would
            return response
        finally:
            self.running -= 1


def one_row(value: float, columns: int = 2, request_id: str | None = None) -> InferenceRequest:
    request = numeric_request(np.full((1, columns), value, "f4"))
    request.id = request_id
    return request


def doubled(response: InferenceResponse) -> np.ndarray:
    return NumpyCodec.decode_output(response.outputs[0])


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
    batcher = AdaptiveBatcher(
        recorder.predict, max_batch_size=4, max_batch_time=5.0, concurrent_batches=2
    )
    answers: dict[int, InferenceResponse] = {}

    async def call(i: int, columns: int) -> None:
        answers[i] = await batcher.predict(one_row(i, columns, str(i)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.run)
        start = anyio.current_time()
        async with anyio.create_task_group() as calls:
            for i in range(8):  # 4 of each shape: two full batches, no waiting for max_batch_time
                calls.start_soon(call, i, 2 if i % 2 else 3)
        tg.cancel_scope.cancel()
    assert sorted(shapes for _, shapes in recorder.batches) == [[[4, 2]], [[4, 3]]]
    assert all(at == start for at, _ in recorder.batches)
    for i, response in answers.items():
        assert response.id == str(i)
        np.testing.assert_array_equal(doubled(response), i * 2)


@pytest.mark.anyio
async def test_requests_arriving_while_the_model_is_busy_join_one_batch() -> None:
    """One call slot, a model call of 1 s, max_batch_time 10 ms: 10 requests spread over the
    busy second (far more than max_batch_time apart) wait in one batch, which starts the
    moment the slot frees (its max_batch_time long past). Then, on the idle model, a request
    waits max_batch_time from its own arrival again."""
    recorder = Recorder(seconds=1.0)
    batcher = AdaptiveBatcher(
        recorder.predict, max_batch_size=32, max_batch_time=0.01, concurrent_batches=1
    )
    answers: dict[int, InferenceResponse] = {}

    async def call(i: int) -> None:
        answers[i] = await batcher.predict(one_row(i, request_id=str(i)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.run)
        start = anyio.current_time()
        async with anyio.create_task_group() as calls:
            calls.start_soon(call, 0)  # alone: runs at start + 0.01, until start + 1.01
            for i in range(1, 11):  # at start + 0.1, 0.2, ..., 1.0: all while it runs
                await anyio.sleep_until(start + i / 10)
                calls.start_soon(call, i)
        assert anyio.current_time() == pytest.approx(start + 2.01)
        await anyio.sleep_until(start + 2.5)
        await call(11)  # the model is idle: max_batch_time after its arrival
        tg.cancel_scope.cancel()
    assert recorder.since(start) == [
        (0.01, [[1, 2]]),
        (1.01, [[10, 2]]),
        (2.51, [[1, 2]]),
    ]
    assert recorder.most_running == 1
    for i, response in answers.items():
        assert response.id == str(i)
        np.testing.assert_array_equal(doubled(response), np.full((1, 2), 2.0 * i))


@pytest.mark.anyio
async def test_a_batch_waits_max_batch_time_after_its_first_request_once_a_slot_is_free() -> None:
    """The slot frees before the open batch's max_batch_time is up: it waits out the rest,
    taking whatever else arrives meanwhile."""
    recorder = Recorder(seconds=1.0)
    batcher = AdaptiveBatcher(
        recorder.predict, max_batch_size=32, max_batch_time=0.5, concurrent_batches=1
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.run)
        start = anyio.current_time()
        async with anyio.create_task_group() as calls:
            calls.start_soon(batcher.predict, one_row(0))  # runs from 0.5 to 1.5
            for at in (1.2, 1.6, 1.69):  # the slot frees at 1.5; the batch's time ends at 1.7
                await anyio.sleep_until(start + at)
                calls.start_soon(batcher.predict, one_row(at))
        tg.cancel_scope.cancel()
    assert recorder.since(start) == [
        (0.5, [[1, 2]]),
        (1.7, [[3, 2]]),
    ]


@pytest.mark.anyio
async def test_full_batches_close_while_the_model_is_busy_and_start_in_turn() -> None:
    """10 requests while the only slot is busy, max_batch_size 4: batches of 4, 4 and 2, each
    started as the previous call ends; none grows past max_batch_size."""
    recorder = Recorder(seconds=1.0)
    sizes: list[int] = []
    batcher = AdaptiveBatcher(
        recorder.predict,
        max_batch_size=4,
        max_batch_time=0.1,
        on_batch=sizes.append,
        concurrent_batches=1,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.run)
        start = anyio.current_time()
        async with anyio.create_task_group() as calls:
            calls.start_soon(batcher.predict, one_row(0))  # runs from 0.1 to 1.1
            await anyio.sleep_until(start + 0.5)
            for i in range(1, 11):
                calls.start_soon(batcher.predict, one_row(i))
        tg.cancel_scope.cancel()
    assert sizes == [1, 4, 4, 2]
    assert [at for at, _ in recorder.batches] == pytest.approx(
        [start + 0.1, start + 1.1, start + 2.1, start + 3.1]
    )


@pytest.mark.anyio
async def test_batches_run_in_as_many_slots_as_allowed_while_the_next_one_fills() -> None:
    recorder = Recorder(seconds=1.0)
    sizes: list[int] = []
    batcher = AdaptiveBatcher(
        recorder.predict,
        max_batch_size=4,
        max_batch_time=0.1,
        on_batch=sizes.append,
        concurrent_batches=2,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.run)
        start = anyio.current_time()
        async with anyio.create_task_group() as calls:
            for i in range(8):  # two full batches at once
                calls.start_soon(batcher.predict, one_row(i))
            await anyio.sleep_until(start + 0.2)
            for i in range(3):  # both slots busy: these wait together for one to free
                await anyio.sleep_until(start + 0.2 * (i + 1))
                calls.start_soon(batcher.predict, one_row(i))
        tg.cancel_scope.cancel()
    assert sizes == [4, 4, 3]
    assert [at for at, _ in recorder.batches] == pytest.approx([start, start, start + 1.0])
    assert recorder.most_running == 2


class Picky(Recorder):
    """Fails a whole call when any row is negative, as a model validating its batch would."""

    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        if (NumpyCodec.decode_input(request.inputs[0]) < 0).any():
            self.batches.append((anyio.current_time(), [i.shape for i in request.inputs]))
            raise ValueError("negative input")
        return await super().predict(request)


@pytest.mark.anyio
async def test_a_bad_request_gets_its_error_and_its_batch_mates_their_answers() -> None:
    """The batch that fills while the model is busy holds a bad request: the batch is retried
    one request at a time, in its slot, and only the bad request fails."""
    model = Picky(seconds=1.0)
    sizes: list[int] = []
    batcher = AdaptiveBatcher(
        model.predict,
        max_batch_size=8,
        max_batch_time=0.1,
        on_batch=sizes.append,
        concurrent_batches=1,
    )
    answers: dict[int, InferenceResponse | BaseException] = {}

    async def call(i: int) -> None:
        try:
            answers[i] = await batcher.predict(one_row(-1.0 if i == 3 else i, request_id=str(i)))
        except Exception as error:
            answers[i] = error

    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.run)
        start = anyio.current_time()
        async with anyio.create_task_group() as calls:
            calls.start_soon(call, 0)  # runs from 0.1 to 1.1
            await anyio.sleep_until(start + 0.5)
            for i in range(1, 6):  # one batch of 5, with request 3 bad
                calls.start_soon(call, i)
            await anyio.sleep_until(start + 1.2)
            calls.start_soon(call, 6)  # arrives while the failed batch is retried
        tg.cancel_scope.cancel()
    assert sizes == [1, 5, 1, 1, 1, 1, 1, 1]
    bad = answers.pop(3)
    assert isinstance(bad, ValueError)
    assert str(bad) == "negative input"
    for i, response in answers.items():
        assert isinstance(response, InferenceResponse)
        assert response.id == str(i)
        np.testing.assert_array_equal(doubled(response), np.full((1, 2), 2.0 * i))
    # the retries hold the batch's slot: request 6 waits for them to end (at 2.1)
    assert model.since(start)[-1] == (2.1, [[1, 2]])
    assert model.most_running == 4  # the batch's 4 good requests, retried side by side


@pytest.mark.anyio
async def test_a_caller_that_gives_up_before_its_batch_starts_is_not_run() -> None:
    recorder = Recorder(seconds=1.0)
    batcher = AdaptiveBatcher(
        recorder.predict, max_batch_size=8, max_batch_time=0.1, concurrent_batches=1
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.run)
        start = anyio.current_time()
        async with anyio.create_task_group() as calls:
            calls.start_soon(batcher.predict, one_row(0))  # runs from 0.1 to 1.1
            await anyio.sleep_until(start + 0.2)
            with anyio.move_on_after(0.5):
                await batcher.predict(one_row(1))  # gives up at 0.7, while still queued
            calls.start_soon(batcher.predict, one_row(2))
        tg.cancel_scope.cancel()
    assert recorder.since(start) == [
        (0.1, [[1, 2]]),
        (1.1, [[1, 2]]),
    ]


@pytest.mark.anyio
async def test_submitted_requests_are_answered_a_batch_at_a_time_and_can_be_withdrawn() -> None:
    """The batch path's way in (worker.batch_jobs): no caller waits; each batch's answers come
    in one call, and a request taken back before its batch starts is not run."""
    recorder = Recorder(seconds=1.0)
    batcher = AdaptiveBatcher(
        recorder.predict, max_batch_size=8, max_batch_time=0.1, concurrent_batches=1
    )
    answered: list[list[tuple[object, float]]] = []

    def on_answers(batch: list[Answered]) -> None:
        for one in batch:
            assert one.response is not None, one.error
        answered.append(
            [(one.token, float(doubled(one.response)[0, 0])) for one in batch if one.response]
        )

    batcher.on_answers = on_answers
    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.run)
        start = anyio.current_time()
        first = batcher.submit(one_row(0), "a")  # runs from 0.1 to 1.1
        await anyio.sleep_until(start + 0.2)
        second = batcher.submit(one_row(1), "b")  # waits behind it, with c
        batcher.submit(one_row(2), "c")
        assert not batcher.withdraw(first)  # its batch runs: its answer comes
        assert batcher.withdraw(second)
        await anyio.sleep_until(start + 3)
        tg.cancel_scope.cancel()
    assert recorder.since(start) == [(0.1, [[1, 2]]), (1.1, [[1, 2]])]
    assert answered == [[("a", 0.0)], [("c", 4.0)]]


@pytest.mark.anyio
async def test_a_caller_that_gives_up_leaves_its_batch_mates_to_run_together() -> None:
    recorder = Recorder(seconds=1.0)
    batcher = AdaptiveBatcher(
        recorder.predict, max_batch_size=3, max_batch_time=0.1, concurrent_batches=1
    )
    answers: dict[int, float] = {}

    async def call(i: int) -> None:
        answers[i] = float(doubled(await batcher.predict(one_row(i)))[0, 0])

    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.run)
        start = anyio.current_time()
        async with anyio.create_task_group() as calls:
            calls.start_soon(call, 0)  # runs from 0.1 to 1.1, alone
            await anyio.sleep_until(start + 0.2)
            calls.start_soon(call, 1)  # these three fill the next batch while 0 runs...
            with anyio.move_on_after(0.3):
                await batcher.predict(one_row(2))  # ...but this one gives up at 0.5
            calls.start_soon(call, 3)
            await anyio.sleep_until(start + 0.6)
            calls.start_soon(call, 4)  # takes the place 2 left: the batch is full again
            await anyio.sleep_until(start + 0.7)
            calls.start_soon(call, 5)  # a batch of its own, after
        tg.cancel_scope.cancel()
    assert recorder.since(start) == [
        (0.1, [[1, 2]]),
        (1.1, [[3, 2]]),  # 1, 3 and 4, at once when the slot frees: full
        (2.1, [[1, 2]]),  # 5
    ]
    assert answers == {i: 2.0 * i for i in (0, 1, 3, 4, 5)}


@pytest.mark.anyio
async def test_callers_waiting_when_the_batcher_stops_get_an_error() -> None:
    recorder = Recorder(seconds=1.0)
    batcher = AdaptiveBatcher(
        recorder.predict, max_batch_size=8, max_batch_time=0.1, concurrent_batches=1
    )
    errors: list[BaseException] = []

    async def call(i: int) -> None:
        try:
            await batcher.predict(one_row(i))
        except RuntimeError as error:
            errors.append(error)

    async with anyio.create_task_group() as calls, anyio.create_task_group() as serving:
        serving.start_soon(batcher.run)
        calls.start_soon(call, 0)  # running when the batcher stops
        await anyio.sleep(0.5)
        calls.start_soon(call, 1)  # queued when it stops
        await anyio.sleep(0.1)
        serving.cancel_scope.cancel()
    assert [str(e) for e in errors] == ["the model's batcher stopped"] * 2
    with pytest.raises(RuntimeError, match="stopped"):
        await batcher.predict(one_row(2))


# -- end to end, with a worker subprocess -----------------------------------------------------

MODELS = Path(__file__).parents[1] / "models" / "batching"


@pytest.fixture
def batched_worker(fleet: Fleet) -> WorkerProcess:
    return fleet.start(MODELS)


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


# Sentences of every msgpack length header, empty and not ASCII: each call's own comes back.
_SENTENCES = ["a dog", "", "x" * 31, "y" * 300, "é-ß-✓ naïve", "w" * 70_000, "the end"]


@pytest.mark.anyio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_fleet_batches_text_calls_each_answered_with_its_own_sentence(
    redis_url: str, prefix: str, batched_worker: WorkerProcess
) -> None:
    """Single-sentence calls (ids and sentences of every length: the wire's layout of text)
    merge into batches, and each caller gets its own sentence back."""
    results: dict[int, InferenceResponse] = {}
    async with Client(redis_url, prefix=prefix, timeout=30) as client:
        model = client.model("batched-text")

        async def call(i: int) -> None:
            sentence = f"{_SENTENCES[i % len(_SENTENCES)]} {i}"
            request = InferenceRequest(inputs=[StringCodec.encode_input("text", [sentence])])
            request.id = f"req-{'9' * (i % 40)}-{i}"
            results[i] = await model.predict(request)

        async with anyio.create_task_group() as tg:
            for i in range(64):
                tg.start_soon(call, i)
    batch_sizes = set()
    for i, response in results.items():
        assert response.id == f"req-{'9' * (i % 40)}-{i}"
        outputs = {o.name: o for o in response.outputs}
        expected = f"{_SENTENCES[i % len(_SENTENCES)]} {i}".upper()
        assert StringCodec.decode_output(outputs["upper"]) == [expected]
        batch_sizes.add(int(NumpyCodec.decode_output(outputs["rows"])[0, 0]))
    assert max(batch_sizes) > 1, "64 concurrent calls never shared a batch"
