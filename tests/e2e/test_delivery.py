"""Nothing lost, nothing doubled: answers under memory pressure, streams that lose chunks, job
entries that exist twice, and the Redis footprint of a slow stream reader.

Real Redis servers (private ones where a test changes a server's settings) and workers as
real subprocesses. Every wait is on an event (a chunk, an answer, a worker's log line) or on
Redis state polled under a deadline (Redis has no event to await).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import redis

from conveyor.broker.client_streams import ClientStreams
from conveyor.broker.wire import Fields
from conveyor.client import Client
from conveyor.errors import BrokerOutOfMemory, ConveyorError, StreamInterrupted
from conveyor.types import InferenceRequest, InferenceResponse, RequestInput
from tests.support.calls import one, output, request
from tests.support.fleet import Fleet, wait_acked
from tests.support.probe import fill_to_maxmemory, pending_count, reply_streams
from tests.support.waiting import wait_until_async

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

TESTS = Path(__file__).parents[1]
COUNTER = TESTS / "models" / "delivery"  # `counter`: records each run's pid in a file
STREAMER = TESTS / "models" / "streams"  # `streamer`: chunks carry their index and the pid
WORKER_ARGS = ("--heartbeat-ttl", "3", "--grace-period", "1")
GROUP = "workers"


# -- helpers ---------------------------------------------------------------------------------


def chunk_of(response: InferenceResponse) -> tuple[int, int]:
    """(index, pid) of a ``streamer`` chunk."""
    return int(output(response, "index")), int(output(response, "pid"))


# -- 1. out of memory: no ack without an answer ---------------------------------------------------


@pytest.mark.timeout(90)
async def test_out_of_memory_never_acks_a_job_without_its_answer(
    redis_server_factory: Callable[..., Any], prefix: str
) -> None:
    """Four jobs run while Redis reaches maxmemory (noeviction): each answer is refused, and
    each job stays in its stream and pending (before: the XACK and XDEL in the reply's pipeline
    went through, and the answer was gone for good). A new call fails at once with
    BrokerOutOfMemory, which says what to do; a call whose timeout comes first gets it too, not
    a raw redis error. Once memory frees, the worker's retries store the other answers, each
    caller gets its own, and nothing is left pending."""
    server = redis_server_factory(args=["--maxmemory", "16mb", "--maxmemory-policy", "noeviction"])
    fleet = Fleet(server.url, prefix)
    probe = redis.Redis.from_url(server.url)
    stream = f"{prefix}:{{counter}}:jobs"
    answers: dict[int, float] = {}
    outcome: dict[str, BaseException] = {}
    try:
        worker = fleet.start(COUNTER, extra=WORKER_ARGS)
        async with Client(server.url, prefix=prefix, timeout=40) as client:
            model = client.model("counter")

            async def patient(value: int) -> None:
                answers[value] = output(await model.predict(request(value, sleep=1.5)), "x")

            async def hasty() -> None:
                try:
                    await model.predict(request(99, sleep=1.5), timeout=6)
                except Exception as error:
                    outcome["hasty"] = error

            async with anyio.create_task_group() as tg:
                for value in range(3):
                    tg.start_soon(patient, value)
                tg.start_soon(hasty)
                await wait_until_async(lambda: pending_count(probe, stream) == 4, "4 jobs running")
                filler = fill_to_maxmemory(probe, prefix)
                # the models end 1.5 s after they started; their answers are refused
                await wait_until_async(
                    lambda: (
                        worker.count("job.answer_refused") == 4 or pending_count(probe, stream) < 4
                    ),
                    "4 answers refused",
                )
                assert pending_count(probe, stream) == 4, "a job was acked without its answer"
                assert probe.xlen(stream) == 4

                with pytest.raises(BrokerOutOfMemory) as refused:
                    await model.predict(request(7), timeout=20)
                assert "maxmemory" in str(refused.value)

                await wait_until_async(lambda: "hasty" in outcome, "the hasty call timed out", 20)
                assert isinstance(outcome["hasty"], BrokerOutOfMemory), repr(outcome["hasty"])
                assert not answers  # nobody got an answer while Redis was full
                assert pending_count(probe, stream) >= 3  # ... nor lost one

                probe.delete(*filler)  # memory frees: the answers kept are stored now
            assert answers == {value: float(value) for value in range(3)}
        await wait_until_async(
            lambda: pending_count(probe, stream) == 0, "nothing left pending", 20
        )
    finally:
        fleet.stop()
        probe.close()


# -- 2. a stream delivers every chunk in order, or raises -----------------------------------------


@pytest.mark.timeout(60)
async def test_stream_whose_unread_chunks_were_deleted_raises(
    fleet: Fleet, redis_url: str, prefix: str, probe: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller took chunk 0; the client's reader is held while the worker writes chunks 1-3,
    then the reply stream is deleted (as an eviction would) and the reader let go. Chunks 4+
    land in a new stream: the caller gets chunk 0, then StreamInterrupted naming the chunks
    that never arrived (before: [0, 4, 5, 6, 7] and no error)."""
    fleet.start(STREAMER, extra=WORKER_ARGS)
    held = False
    go = anyio.Event()
    read_replies = ClientStreams.read_replies

    async def gated(self: ClientStreams, cursors: Any) -> Any:
        if held:
            await go.wait()
        return await read_replies(self, cursors)

    monkeypatch.setattr(ClientStreams, "read_replies", gated)
    seen: list[int] = []
    async with Client(redis_url, prefix=prefix, timeout=30) as client:
        chunks = client.model("streamer").predict_stream(one(request(0.0, chunks=8, interval=0.2)))

        async def read_then_delete() -> None:
            nonlocal held
            async for response in chunks:
                seen.append(chunk_of(response)[0])
                if len(seen) > 1:
                    continue
                held = True
                (reply,) = reply_streams(probe, prefix)
                await wait_until_async(
                    lambda: int(probe.xinfo_stream(reply)["entries-added"]) >= 4,  # noqa: B023
                    "the worker wrote chunks 1-3",
                )
                probe.delete(reply)
                go.set()

        with pytest.raises(StreamInterrupted) as caught:
            await read_then_delete()
    assert seen == [0]
    assert "the stream broke after 1 chunks: chunks 1 to " in str(caught.value)
    assert "noeviction" in str(caught.value)


@pytest.mark.timeout(120)
async def test_streams_under_allkeys_lru_eviction_are_whole_or_raise(
    redis_server_factory: Callable[..., Any], prefix: str
) -> None:
    """Redis with ``allkeys-lru`` evicts keys (reply and input streams, job streams, doorbells)
    while 24 streams run against a filler that keeps Redis at its maxmemory. Each stream either
    delivers every chunk once, in order, or raises a ConveyorError: never a stream with holes
    (before, in 2 runs of 3: streams that ended normally without chunk 0, and streams whose
    input was evicted, run with the model's defaults). Eviction breaks Conveyor's promise, which
    is why README asks for noeviction; what it must never do is hide the loss."""
    server = redis_server_factory(args=["--maxmemory", "6mb", "--maxmemory-policy", "allkeys-lru"])
    fleet = Fleet(server.url, prefix)
    probe = redis.Redis.from_url(server.url)
    count = 40
    results: dict[int, list[int] | BaseException] = {}
    try:
        fleet.start(STREAMER, extra=(*WORKER_ARGS, "--concurrency", "32"))
        async with Client(server.url, prefix=prefix, timeout=8, stream_window=count) as client:
            model = client.model("streamer")

            async def read(number: int) -> None:
                seen: list[int] = []
                try:
                    chunks = model.predict_stream(one(request(0.0, chunks=count, interval=0.02)))
                    async for response in chunks:
                        seen.append(chunk_of(response)[0])
                        await anyio.sleep(0.01)  # a reader slower than the writer
                except ConveyorError as error:
                    results[number] = error
                else:
                    results[number] = seen

            def fill() -> None:
                # values as big as a whole stream's chunks: a new one evicts old keys
                for i in range(400):
                    probe.set(f"{prefix}:filler:{i}", b"x" * 64 * 1024)

            async with anyio.create_task_group() as tg:
                for number in range(24):
                    tg.start_soon(read, number)
                await anyio.to_thread.run_sync(fill)
        evicted = int(probe.info("stats")["evicted_keys"])
    finally:
        fleet.stop()
        probe.close()
    holes = {n: r for n, r in results.items() if isinstance(r, list) and r != list(range(count))}
    assert holes == {}, {n: (len(r), r) for n, r in holes.items()}
    errors = [r for r in results.values() if isinstance(r, BaseException)]
    assert evicted > 0  # the premise: Redis did evict
    kinds = sorted({type(error).__name__ for error in errors})
    print(f"\nallkeys-lru: {evicted} keys evicted; {len(errors)} of 24 streams raised {kinds}")


# -- 3. a job entry that exists twice runs once ---------------------------------------------------


@pytest.mark.timeout(90)
async def test_a_job_sent_twice_runs_once(
    fleet: Fleet,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every job is XADDed twice (as redis-py's re-send of a pipeline whose reply was lost does)
    and two workers of one job at a time take one copy each. The copy that claims the request
    runs; the other is acked without running: a stream's chunks all come from one run, in
    order, and a predict's model runs once (before: both copies ran as attempt 1 and the
    stream interleaved their chunks)."""
    send_job = ClientStreams.send_job

    async def twice(
        self: ClientStreams, stream: str, fields: Fields, max_backlog: int | None = None
    ) -> bytes | int:
        first = await send_job(self, stream, fields, max_backlog)
        await send_job(self, stream, fields, max_backlog)  # the copy
        return first

    monkeypatch.setattr(ClientStreams, "send_job", twice)
    workers = [
        fleet.start(STREAMER, COUNTER, extra=(*WORKER_ARGS, "--concurrency", "1"), wait=False)
        for _ in range(2)
    ]
    for worker in workers:
        await worker.wait_for_log_async("worker.started", 30)
    record = tmp_path / "runs"
    async with Client(redis_url, prefix=prefix, timeout=30) as client:
        chunks = client.model("streamer").predict_stream(
            one(request(0.0, chunks=10, interval=0.05))
        )
        seen = [chunk_of(response) async for response in chunks]
        assert [index for index, _ in seen] == list(range(10))
        assert len({pid for _, pid in seen}) == 1, f"chunks of two runs: {seen}"
        await wait_until_async(
            lambda: sum(w.count("job.duplicate") for w in workers) == 1,
            "the copy was dropped as a duplicate",
        )

        answer = await client.model("counter").predict(request(5.0, sleep=0.3, record=str(record)))
        assert output(answer, "x") == 5.0
        await wait_until_async(
            lambda: sum(w.count("job.duplicate") for w in workers) == 2,
            "the predict's copy was dropped as a duplicate",
        )
    assert record.read_text().splitlines() == [str(int(output(answer, "pid")))]


# -- 4. a slow stream reader: Redis holds only the unread window ----------------------------------


@pytest.mark.timeout(60)
async def test_slow_stream_reader_leaves_only_the_unread_window_in_redis(
    fleet: Fleet, redis_url: str, prefix: str, probe: redis.Redis
) -> None:
    """A caller takes 120 chunks slowly with a window of 8: the worker stays within the window,
    and the client deletes what it read as it goes, so the reply stream never holds more than
    about the window (before: every chunk taken stayed until the stream ended)."""
    fleet.start(STREAMER, extra=WORKER_ARGS)
    window, count = 8, 120
    lengths: list[int] = []
    sizes: list[int] = []
    seen: list[int] = []
    async with Client(redis_url, prefix=prefix, timeout=40, stream_window=window) as client:
        chunks = client.model("streamer").predict_stream(
            one(request(0.0, chunks=count, interval=0))
        )
        async for response in chunks:
            seen.append(chunk_of(response)[0])
            for reply in reply_streams(probe, prefix):
                lengths.append(int(probe.xlen(reply)))
                sizes.append(int(probe.memory_usage(reply) or 0))
            await anyio.sleep(0.005)  # a reader slower than the model
    assert seen == list(range(count))
    assert max(lengths) <= 2 * window + 2, max(lengths)
    print(
        f"\nslow reader: {count} chunks, window {window}: the reply stream held at most "
        f"{max(lengths)} entries, {max(sizes)} bytes"
    )


@pytest.mark.timeout(60)
async def test_an_answer_refused_for_any_reason_keeps_its_job_pending(
    fleet: Fleet, redis_url: str, prefix: str, probe: redis.Redis
) -> None:
    """Not only out of memory: here the reply stream's key holds a string, so the worker's XADD
    of a big answer fails (WRONGTYPE). The job stays pending and in its stream while the
    worker keeps the answer and tries again; once the key is gone the answer is stored, the
    caller gets it and the job is acked (before: acked and deleted at once, answer lost)."""
    worker = fleet.start(COUNTER, extra=WORKER_ARGS)
    stream = f"{prefix}:{{counter}}:jobs"
    big = np.arange(4096, dtype="f4")  # 16 KiB: a tensor field of its own, in a reply stream
    async with Client(redis_url, prefix=prefix, timeout=30) as client:
        reply = f"{prefix}:reply:{{{client.client_id}}}:{client.client_id}-1"  # the first call's
        probe.set(reply, "in the way")
        answers: list[InferenceResponse] = []

        async def call() -> None:
            request = InferenceRequest(
                inputs=[RequestInput(name="x", shape=[4096], datatype="FP32", data=big)]
            )
            answers.append(await client.model("counter").predict(request))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await wait_until_async(lambda: probe.xlen(stream) == 1, "the job was sent")
            await wait_until_async(
                lambda: worker.count("job.answer_refused") == 1 or probe.xlen(stream) == 0,
                "the answer was refused",
            )
            assert probe.xlen(stream) == 1, "acked and deleted without its answer"
            assert pending_count(probe, stream) == 1
            assert "WRONGTYPE" in worker.log()
            assert not answers
            probe.delete(reply)  # the worker's next try stores the answer
    (answer,) = answers
    np.testing.assert_array_equal(np.asarray(answer.outputs[1].data.root).ravel(), big)
    await anyio.to_thread.run_sync(lambda: wait_acked(probe, stream))
    assert "job.answer_stored" in await worker.wait_for_log_async("job.answer_stored")
