"""The batch path (worker.batch_jobs): a batched model's jobs run without a task each, and
still stop, answer and ack as every job does.

The model (tests/models/batch_jobs) takes rows of [seconds, tag], runs one batch of at most 4
at a time, sleeps its longest row's seconds and logs the tags of each batch it runs.
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import redis

from conveyor.broker.client_streams import ClientStreams
from conveyor.broker.keys import Keys
from conveyor.broker.wire import (
    ErrorCode,
    Fields,
    Job,
    MessageType,
    decode_job,
    decode_message,
    encode_job,
)
from conveyor.client import Client
from conveyor.codecs import NumpyCodec
from conveyor.errors import DeadlineExceeded, RemoteError, WireError
from conveyor.types import InferenceRequest, InferenceResponse
from tests.e2e.test_metrics import scrape_settled
from tests.support.fleet import Fleet, WorkerProcess, wait_acked
from tests.support.probe import pending_count
from tests.support.waiting import wait_until_async

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

MODELS = Path(__file__).parents[1] / "models" / "batch_jobs"


def row(seconds: float, tag: int) -> InferenceRequest:
    return InferenceRequest(
        inputs=[NumpyCodec.encode_input("x", np.array([[seconds, tag]], dtype=np.float32))]
    )


def tag_and_rows(response: InferenceResponse) -> tuple[int, int]:
    outputs = {o.name: NumpyCodec.decode_output(o) for o in response.outputs}
    return int(outputs["y"][0, 1]), int(outputs["rows"][0, 0])


async def ran(worker: WorkerProcess, tags: str, start: int = 0) -> str:
    """Waits for the model's log line of a batch of exactly these tags."""
    return await worker.wait_for_log_async(f"rows={len(tags.split(','))} tags={tags}", 15, start)


@pytest.mark.timeout(60)
async def test_cancelled_batched_jobs_running_and_queued(
    fleet: Fleet, redis_url: str, prefix: str, probe: redis.Redis
) -> None:
    """A caller's cancel of a job whose batch runs answers it Cancelled at once (the batch runs
    on); of a job whose batch waits, drops it from its batch, whose others run without it. The
    metrics count each job once, by outcome; every job is acked."""
    worker = fleet.start(MODELS, extra=["--metrics-port", "0"])
    port = worker.metrics_port()
    stream = Keys(prefix).jobs("slow_batched")
    async with Client(redis_url, prefix=prefix, timeout=20) as client:
        model = client.model("slow_batched")
        answers: dict[int, tuple[int, int]] = {}
        running = anyio.CancelScope()
        queued = anyio.CancelScope()

        async def call(tag: int, seconds: float, scope: anyio.CancelScope | None = None) -> None:
            with scope or anyio.CancelScope():
                answers[tag] = tag_and_rows(await model.predict(row(seconds, tag)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, 1, 3.0, running)
            await ran(worker, "1")  # its batch runs (3 s): the next ones wait behind it
            start = len(worker.lines)
            tg.start_soon(call, 2, 0.0, queued)
            tg.start_soon(call, 3, 0.0)
            # both taken by the worker (pending), in the batch that waits
            await wait_until_async(lambda: pending_count(probe, stream) == 3, "3 jobs taken")
            queued.cancel()
            await worker.wait_for_log_async("reason=cancelled", 15, start)
            running.cancel()
            await wait_until_async(
                lambda: worker.count("reason=cancelled") == 2, "the running job stopped"
            )
        assert answers == {3: (3, 1)}  # tag 2 left its batch before it ran
        assert worker.count("tags=2") == 0
        assert worker.count("reason=cancelled") == 2
    metrics = await anyio.to_thread.run_sync(scrape_settled, port)
    await anyio.to_thread.run_sync(lambda: wait_acked(probe, stream))

    def jobs(outcome: str) -> float:
        labels = (("method", "predict"), ("model", "slow_batched"), ("outcome", outcome))
        return metrics.get(("conveyor_worker_jobs_total", labels), 0.0)

    assert (jobs("ok"), jobs("cancelled")) == (1, 2)
    sizes = ("conveyor_worker_batch_size_count", (("model", "slow_batched"),))
    assert metrics[sizes] == 2  # tag 1 alone, then tag 3 alone


@pytest.mark.timeout(60)
async def test_a_batched_job_past_its_deadline_is_stopped_and_its_batch_mates_answered(
    fleet: Fleet, redis_url: str, prefix: str
) -> None:
    worker = fleet.start(MODELS)
    async with Client(redis_url, prefix=prefix, timeout=20) as client:
        model = client.model("slow_batched")
        results: dict[int, object] = {}

        async def call(tag: int, timeout: float) -> None:
            try:
                results[tag] = tag_and_rows(await model.predict(row(2.0, tag), timeout=timeout))
            except DeadlineExceeded as error:
                results[tag] = error

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, 1, 1.0)
            tg.start_soon(call, 2, 20.0)
    assert isinstance(results[1], DeadlineExceeded)
    assert results[2] == (2, 2)  # ran with tag 1 in one batch, answered in full
    line = await worker.wait_for_log_async("job.stopped", 10)
    assert "model=slow_batched method=predict" in line


@pytest.mark.timeout(60)
async def test_a_failed_batch_reruns_its_jobs_one_by_one(
    fleet: Fleet, redis_url: str, prefix: str
) -> None:
    worker = fleet.start(MODELS)
    async with Client(redis_url, prefix=prefix, timeout=20) as client:
        model = client.model("slow_batched")
        results: dict[int, object] = {}

        async def call(tag: int) -> None:
            try:
                results[tag] = tag_and_rows(await model.predict(row(0.0, tag)))
            except RemoteError as error:
                results[tag] = error

        async with anyio.create_task_group() as tg:
            for tag in (-1, 2, 3):
                tg.start_soon(call, tag)
    assert isinstance(results[-1], RemoteError)
    assert "negative tag" in str(results[-1])
    assert results[2] == (2, 1)
    assert results[3] == (3, 1)
    await worker.wait_for_log_async("batch.failed size=3", 10)


@pytest.mark.timeout(60)
async def test_a_batched_job_sent_twice_runs_once(
    fleet: Fleet,
    redis_url: str,
    prefix: str,
    probe: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every job is XADDed twice: one copy runs and is answered, the other is acked unanswered
    (``job.duplicate``), whether it left its batch before it ran or ran with it."""
    send_job = ClientStreams.send_job

    async def twice(
        self: ClientStreams, stream: str, fields: Fields, max_backlog: int | None = None
    ) -> bytes | int:
        first = await send_job(self, stream, fields, max_backlog)
        await send_job(self, stream, fields, max_backlog)  # the copy
        return first

    monkeypatch.setattr(ClientStreams, "send_job", twice)
    worker = fleet.start(MODELS)
    async with Client(redis_url, prefix=prefix, timeout=20) as client:
        answer = await client.model("slow_batched").predict(row(0.0, 5))
        assert tag_and_rows(answer)[0] == 5
        await anyio.to_thread.run_sync(lambda: wait_acked(probe, Keys(prefix).jobs("slow_batched")))
    assert worker.count("job.duplicate") == 1


@pytest.mark.timeout(60)
async def test_batched_jobs_drain_on_a_signal_and_stay_pending_on_a_second(
    fleet: Fleet, redis_url: str, prefix: str, probe: redis.Redis
) -> None:
    """A first SIGTERM lets the running batch and the one waiting finish and answer; a worker
    told twice leaves its batched jobs, running or waiting, pending and unanswered."""
    stream = Keys(prefix).jobs("slow_batched")
    async with Client(redis_url, prefix=prefix, timeout=30) as client:
        model = client.model("slow_batched")
        answers: dict[int, tuple[int, int]] = {}

        async def call(tag: int, seconds: float) -> None:
            answers[tag] = tag_and_rows(await model.predict(row(seconds, tag)))

        draining = fleet.start(MODELS, extra=["--grace-period", "20"])
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, 1, 1.0)
            await ran(draining, "1")
            tg.start_soon(call, 2, 0.0)
            await wait_until_async(lambda: pending_count(probe, stream) == 2, "2 jobs taken")
            draining.signal(signal.SIGTERM)
        assert answers == {1: (1, 1), 2: (2, 1)}
        assert await anyio.to_thread.run_sync(draining.wait, 20) == 0

        stopped = fleet.start(MODELS, extra=["--grace-period", "20"])
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, 3, 30.0)
            await ran(stopped, "3")
            tg.start_soon(call, 4, 0.0)
            await wait_until_async(lambda: pending_count(probe, stream) == 2, "2 jobs taken")
            stopped.signal(signal.SIGTERM)
            await stopped.wait_for_log_async("worker.stopping ")
            stopped.signal(signal.SIGTERM)
            assert await anyio.to_thread.run_sync(stopped.wait, 20) == 0
            assert "worker.stopping_now" in stopped.log()
            assert pending_count(probe, stream) == 2  # for another worker to reclaim
            tg.cancel_scope.cancel()
        assert set(answers) == {1, 2}


def _job_fields(keys: Keys, tag: int) -> tuple[Job, dict[bytes, bytes]]:
    """A batched job as a client sends it, and its fields as Redis returns them."""
    client_id, request_id = uuid.uuid4().hex[:12], uuid.uuid4().hex
    now = time.time()
    job = Job(
        request_id,
        "predict",
        "slow_batched",
        None,
        keys.reply(client_id, request_id),
        keys.bell(client_id),
        now + 30,
        now,
        args=(row(0.0, tag),),
    )
    fields = {
        key.encode(): value.encode() if isinstance(value, str) else bytes(value)  # type: ignore[arg-type]
        for key, value in encode_job(job).items()
    }
    return job, fields


@pytest.mark.timeout(60)
async def test_malformed_entries_in_a_batched_read_are_dead_lettered_alone(
    fleet: Fleet, prefix: str, probe: redis.Redis
) -> None:
    """One read of a batched model's stream holding good jobs and entries that differ from
    them in a few bytes of their envelope (the read's jobs are decoded together, from the
    first one's layout): each bad entry is dead-lettered with the reason it has alone, the
    good ones run and are answered, the worker keeps serving and the stream empties."""
    keys = Keys(prefix)
    stream = keys.jobs("slow_batched")
    good = [_job_fields(keys, tag) for tag in (1, 5)]
    bad: list[tuple[Job, dict[bytes, bytes]]] = []
    for tag, (old, new) in enumerate(
        [
            (b"FP32", b"FPXX"),  # same length: an unknown datatype
            (b"\x93\xa3<f4\x92\x01\x02", b"\x93\xa3<f4\x92\x01\x03"),  # the array's shape
            (b"\xa4args", b"\xa4argz"),  # no args: a job with nothing to predict
        ],
        start=2,
    ):
        job, fields = _job_fields(keys, tag)
        assert old in fields[b"envelope"]
        bad.append((job, {**fields, b"envelope": fields[b"envelope"].replace(old, new, 1)}))
    job, truncated = _job_fields(keys, 9)
    bad.append((job, {**truncated, b"envelope": truncated[b"envelope"][:-20]}))
    reasons: list[str | None] = []
    for _, fields in bad:
        try:
            decode_job(fields)
            reasons.append(None)  # decodes: the model refuses it, as it would alone
        except WireError as error:
            reasons.append(str(error))
    # all in the stream before the worker's first read: one read takes the first four
    pipe = probe.pipeline(transaction=False)
    for _, fields in [good[0], *bad, good[1]]:
        pipe.xadd(stream, fields)  # type: ignore[arg-type]
    ids = pipe.execute()
    worker = fleet.start(MODELS)
    for (job, _), tag in zip(good, (1, 5), strict=True):
        reply = await anyio.to_thread.run_sync(wait_reply, probe, job.reply)
        message = decode_message(reply)
        assert message.type is MessageType.RESULT, message
        assert isinstance(message.payload, InferenceResponse)
        assert tag_and_rows(message.payload)[0] == tag
    dead = keys.dead("slow_batched")
    for entry_id, reason, (job, _) in zip(ids[1:-1], reasons, bad, strict=True):
        if reason is None:  # it decodes (a job without arguments): the model's error answers it
            message = decode_message(await anyio.to_thread.run_sync(wait_reply, probe, job.reply))
            assert message.error is not None
            assert message.error.code == ErrorCode.MODEL_ERROR
            continue
        letter = await anyio.to_thread.run_sync(wait_dead_letter, probe, dead, entry_id)
        assert reason in letter[b"dead_reason"].decode()
    assert reasons.count(None) == 1
    await anyio.to_thread.run_sync(lambda: wait_acked(probe, stream))
    assert worker.process.poll() is None
    assert worker.count("job.bad_entry") == 3


def wait_reply(probe: redis.Redis, key: str) -> dict[bytes, bytes]:
    """The first entry of a reply stream (XREAD BLOCK, bounded)."""
    answer: Any = probe.xread({key: "0-0"}, count=1, block=10_000)
    assert answer, f"no reply in {key}"
    return dict(answer[0][1][0][1])


def wait_dead_letter(probe: redis.Redis, dead: str, entry_id: bytes) -> dict[bytes, bytes]:
    """The dead letter of one job entry (XREAD BLOCK from the start, bounded)."""
    cursor: bytes | str = "0-0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        answer: Any = probe.xread({dead: cursor}, count=100, block=1000)
        for _, found in answer or []:
            for letter_id, fields in found:
                cursor = letter_id
                if fields.get(b"dead_entry") == entry_id:
                    return dict(fields)
    raise TimeoutError(f"no dead letter of {entry_id!r} in {dead}")
