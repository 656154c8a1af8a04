"""Fault injection: workers killed, stopped, starved and robbed of their consumer group, with
a real Redis and workers as real subprocesses. Each test says which peer-project bug it
guards against. Figures (calls, kills, times) are printed: run with ``-s`` to see them.

Every wait is on an event: a worker's log line, or Redis state polled under a deadline
(Redis has no event to await). The only timed pause is the churn test's kill cadence.
"""

from __future__ import annotations

import contextlib
import random
import signal
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import redis

from conveyor.broker.client_streams import ClientStreams
from conveyor.broker.wire import Message, MessageType, Rung
from conveyor.client import Client
from conveyor.client.waiter import Waiter
from conveyor.errors import MethodNotAllowed, RemoteError
from conveyor.types import InferenceRequest, InferenceResponse, RequestInput
from tests.support.calls import output, request
from tests.support.fleet import MODELS, Fleet, WorkerProcess, wait_acked
from tests.support.probe import pending, text
from tests.support.waiting import wait_until_async

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

FAULT_MODELS = Path(__file__).parents[1] / "models" / "faults"
TTL = 1.5  # heartbeat TTL of every worker here: recovery takes about 1-2 TTLs
TTL_ARGS = ("--heartbeat-ttl", str(TTL))
GROUP = "workers"
ALLOWED = ("job.reclaimed",)  # what a worker may log at WARNING here


# -- helpers ---------------------------------------------------------------------------------


def pid_of(response: InferenceResponse) -> int:
    return int(output(response, "pid"))


async def start(fleet: Fleet, *model_dirs: Path, extra: Sequence[str] = ()) -> WorkerProcess:
    return await anyio.to_thread.run_sync(
        lambda: fleet.start(*model_dirs, extra=[*TTL_ARGS, *extra])
    )


def blocked_in_xreadgroup(probe: redis.Redis) -> bool:
    """Whether some connection is blocked in XREADGROUP (the tests run one worker)."""
    return any(
        c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "") for c in probe.client_list()
    )


def pid_of_consumer(probe: redis.Redis, prefix: str, consumer: bytes | str) -> int | None:
    pid = probe.hget(f"{prefix}:worker:{text(consumer)}", "pid")
    return int(pid) if pid is not None else None


@dataclass(frozen=True)
class Seen:
    """One reply message as the client's reader handed it to a waiting call."""

    request_id: str
    type: MessageType
    attempt: int
    kept: bool  # False: fenced off, another delivery had answered first


@pytest.fixture
def replies(monkeypatch: pytest.MonkeyPatch) -> list[Seen]:
    """Every reply message the client's reader delivers to a call in this test."""
    seen: list[Seen] = []
    deliver = Waiter.deliver

    def recording(self: Waiter, message: Message) -> None:
        kept = self.attempt is None or self.attempt == message.attempt
        seen.append(Seen(self.request_id, message.type, message.attempt, kept))
        deliver(self, message)

    monkeypatch.setattr(Waiter, "deliver", recording)
    return seen


@pytest.fixture
async def client(redis_url: str, prefix: str) -> AsyncIterator[Client]:
    async with Client(redis_url, prefix=prefix, timeout=40) as client:
        yield client


# -- 1. churn --------------------------------------------------------------------------------


@pytest.mark.timeout(180)
async def test_churn_every_call_gets_exactly_its_own_answer(
    fleet: Fleet, client: Client, probe: redis.Redis, prefix: str, replies: list[Seen]
) -> None:
    """1,000 calls, 64 in flight, over 3 workers while a random one is SIGKILLed and replaced
    every few hundred ms: each call gets one answer, and it is its own."""
    calls, in_flight = 1000, 64
    await fleet.start_many(3, FAULT_MODELS, extra=TTL_ARGS)
    model = client.model("slow")  # max_deliveries=10: a job may meet several kills in a row
    answers: dict[int, float] = {}
    kills: list[float] = []
    rng = random.Random(5)
    indices = iter(range(calls))
    began = time.monotonic()

    def serving() -> list[WorkerProcess]:
        return [w for w in fleet.workers if w.process.poll() is None and w.count("worker.started")]

    async def churn() -> None:
        while True:
            await anyio.sleep(rng.uniform(0.2, 0.4))  # the kill cadence, not a wait for state
            while len(serving()) < 2:  # never kill the last one serving: wait for a newcomer
                newcomer = next(
                    w
                    for w in fleet.workers
                    if w.process.poll() is None and not w.count("worker.started")
                )
                await newcomer.wait_for_log_async("worker.started", 30)
            await rng.choice(serving()).kill()
            kills.append(time.monotonic() - began)
            fleet.start(FAULT_MODELS, extra=TTL_ARGS, wait=False)  # joins once loaded

    async def caller() -> None:
        for i in indices:
            # 0.1 s per job keeps jobs on every worker: each kill strands some
            response = await model.predict(request(i + 0.5, sleep=0.1))
            assert i not in answers
            answers[i] = output(response, "x")

    async with anyio.create_task_group() as chaos:
        chaos.start_soon(churn)
        async with anyio.create_task_group() as callers:
            for _ in range(in_flight):
                callers.start_soon(caller)
        elapsed = time.monotonic() - began
        chaos.cancel_scope.cancel()

    assert answers == {i: i + 0.5 for i in range(calls)}
    kept = [s for s in replies if s.kept]
    assert len(kept) == calls  # one final message per call, no chunk, no second answer
    assert len({s.request_id for s in kept}) == calls
    assert all(s.type is MessageType.RESULT for s in kept)
    for worker in fleet.workers:  # killed or not, no worker logged an error
        assert worker.problems(allowed=(" WARNING ",)) == [], worker.log()
    reclaimed = sum(line.count("job.reclaimed") for w in fleet.workers for line in w.lines)
    attempts = max(s.attempt for s in kept)
    fenced = sum(not s.kept for s in replies)
    gaps = np.diff([0.0, *kills])
    print(
        f"\nchurn: {calls} calls ({in_flight} in flight) in {elapsed:.1f}s "
        f"({calls / elapsed:.0f}/s); {len(kills)} SIGKILLs, one every "
        f"{gaps.mean():.2f}s on average (min {gaps.min():.2f}s); {reclaimed} jobs reclaimed, "
        f"highest attempt answered {attempts}; {fenced} late replies fenced off; "
        f"{probe.zcard(f'{prefix}:workers')} ids in {prefix}:workers"
    )
    assert len(kills) >= 3, "the calls finished before the churn really started"


# -- 2. hung worker ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_hung_worker_late_answer_is_ignored_and_it_rejoins(
    fleet: Fleet, client: Client, probe: redis.Redis, prefix: str, replies: list[Seen]
) -> None:
    """A worker SIGSTOPped past its heartbeat TTL loses its job to another worker; resumed,
    it finishes the job late (nobody listens, nothing breaks) and keeps serving."""
    stream = f"{prefix}:{{counter}}:jobs"
    hung = await start(fleet, MODELS, extra=["--concurrency", "1"])
    counter = client.model("counter")
    answers: list[InferenceResponse] = []

    async def call() -> None:
        answers.append(await counter.predict(request(0.0, sleep=1.0)))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await wait_until_async(lambda: len(pending(probe, stream)) == 1, "the job was taken")
            hung_name = text(pending(probe, stream)[0]["consumer"])
            hung.signal(signal.SIGSTOP)
            rescuer = await start(fleet, MODELS)
        assert [pid_of(a) for a in answers] == [rescuer.pid]
        assert "deliveries=2" in await rescuer.wait_for_log_async("job.reclaimed")
        assert [(s.attempt, s.kept) for s in replies] == [(2, True)]
        await wait_until_async(lambda: not pending(probe, stream), "the rescuer acked the job")
    finally:
        hung.signal(signal.SIGCONT)  # also on failure, or stopping the fleet would hang

    # resumed: its heartbeat comes back and its late run of the job ends (done=1)
    hung_key = f"{prefix}:worker:{hung_name}"
    await wait_until_async(
        lambda: probe.hmget(hung_key, "done", "in_flight") == [b"1", b"0"],
        "the resumed worker finished its late run",
    )
    assert probe.xlen(stream) == 0
    assert not pending(probe, stream)
    late_reply = f"{prefix}:reply:{{{client.client_id}}}:{replies[0].request_id}"
    # the late reply went to a request nobody waits for: unlinked by the client, or expiring
    late_ttl = probe.ttl(late_reply)
    assert late_ttl == -2 or late_ttl > 0
    assert [(s.attempt, s.kept) for s in replies] == [(2, True)]  # nothing more reached a call

    # it rejoins: with the rescuer gone, the once-hung worker answers
    await anyio.to_thread.run_sync(rescuer.stop)
    assert pid_of(await counter.predict(request(1.0))) == hung.pid
    assert hung.problems(ALLOWED) == []
    assert rescuer.problems(ALLOWED) == []
    print(f"\nhung worker: late run of {hung_name} ignored; it then answered a new call")


# -- 3. long job on a live worker --------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["spin", "block"])
async def test_long_job_on_a_live_worker_is_never_reclaimed(
    fleet: Fleet, client: Client, probe: redis.Redis, prefix: str, replies: list[Seen], how: str
) -> None:
    """dramatiq#692 / taskiq-redis#101: a predict that blocks the event loop (a pure-Python
    busy loop holding the GIL, or time.sleep in ``async def``) for over 2x the heartbeat TTL,
    with an idle worker watching: it is never reclaimed and answers as attempt 1."""
    stream = f"{prefix}:{{slow}}:jobs"
    workers = await fleet.start_many(2, FAULT_MODELS, extra=TTL_ARGS)
    seconds = 2.7 * TTL
    most_idle_ms = 0
    answers: list[InferenceResponse] = []

    params: dict[str, Any] = {how: seconds}

    async def call() -> None:
        answers.append(await client.model("slow").predict(request(1.0, **params)))

    began = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await wait_until_async(lambda: len(pending(probe, stream)) == 1, "the job was taken")
        while not answers:  # sample how idle the running job's claim ever gets
            for entry in pending(probe, stream):
                most_idle_ms = max(most_idle_ms, entry["time_since_delivered"])
            await anyio.sleep(0.05)
    elapsed = time.monotonic() - began

    assert elapsed >= seconds
    runner = next(w for w in workers if w.pid == pid_of(answers[0]))
    assert [(s.attempt, s.kept) for s in replies] == [(1, True)]
    for worker in workers:
        assert not any("job.reclaimed" in line for line in worker.lines), worker.log()
        assert worker.problems(ALLOWED) == []
    assert most_idle_ms < TTL * 1000
    await anyio.to_thread.run_sync(lambda: wait_acked(probe, stream))
    print(
        f"\nlong job ({how} {seconds:.1f}s, TTL {TTL}s): answered by pid {runner.pid} as "
        f"attempt 1 after {elapsed:.1f}s; its claim was never idle more than {most_idle_ms} ms"
    )


# -- 4. reclaim survives SIGKILLs --------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_killing_the_reclaimers_does_not_stop_reclaiming(
    fleet: Fleet, client: Client, probe: redis.Redis, prefix: str, replies: list[Seen]
) -> None:
    """taskiq-redis#131: kill the worker holding jobs, then kill the worker that reclaimed
    them right after it did, twice in a row: the last survivor still reclaims and answers
    (attempt 4: the ``slow`` model allows 10 deliveries)."""
    stream = f"{prefix}:{{slow}}:jobs"
    jobs = 3
    holder = await start(fleet, FAULT_MODELS)
    answers: dict[int, InferenceResponse] = {}
    owners: list[int] = []

    async def call(i: int) -> None:
        answers[i] = await client.model("slow").predict(request(float(i), sleep=2.0))

    def held_by_one_new_owner(times_delivered: int) -> bool:
        entries = pending(probe, stream)
        if len(entries) != jobs or {e["times_delivered"] for e in entries} != {times_delivered}:
            return False
        pids = {pid_of_consumer(probe, prefix, e["consumer"]) for e in entries}
        if len(pids) != 1 or None in pids:
            return False
        owners.append(pids.pop() or 0)
        return True

    began = time.monotonic()
    async with anyio.create_task_group() as tg:
        for i in range(jobs):
            tg.start_soon(call, i)
        await wait_until_async(lambda: held_by_one_new_owner(1), "the holder took every job")
        await holder.kill()
        rescuers = {w.pid: w for w in await fleet.start_many(3, FAULT_MODELS, extra=TTL_ARGS)}
        for times_delivered in (2, 3):
            await wait_until_async(
                lambda: held_by_one_new_owner(times_delivered),  # noqa: B023
                f"delivery {times_delivered}: one worker reclaimed every job",
            )
            await rescuers.pop(owners[-1]).kill()  # mid-job, just after it reclaimed them
    elapsed = time.monotonic() - began

    (survivor,) = rescuers.values()
    assert {pid_of(a) for a in answers.values()} == {survivor.pid}
    assert {i: output(a, "x") for i, a in answers.items()} == {i: float(i) for i in range(jobs)}
    assert {(s.attempt, s.kept) for s in replies} == {(4, True)}
    lines = [line for line in survivor.lines if "job.reclaimed" in line]
    assert len(lines) == jobs
    assert all("deliveries=4" in line for line in lines)
    await anyio.to_thread.run_sync(lambda: wait_acked(probe, stream))
    print(
        f"\nreclaim after kills: {jobs} jobs, 3 SIGKILLs (holder, then 2 reclaimers), "
        f"answered by the 3rd reclaimer as attempt 4 in {elapsed:.1f}s"
    )


# -- 5. streams stay bounded -------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_answered_jobs_leave_their_stream(
    fleet: Fleet, client: Client, probe: redis.Redis, prefix: str
) -> None:
    """taskiq-redis#114, faststream#2223: acked entries are deleted too; after many calls,
    whatever their outcome, the job streams are empty and nothing is pending."""
    await start(fleet, MODELS)
    ok, failed, refused = 300, 30, 20

    async def succeed(i: int) -> None:
        assert output(await client.model("echo").predict(request(float(i))), "x") == i

    async def fail() -> None:
        with pytest.raises(RemoteError, match="cannot handle"):
            await client.model("fails").predict(request(0.0))

    async def refuse() -> None:
        with pytest.raises(MethodNotAllowed):
            await client.model("echo").call("not_exposed")

    async with anyio.create_task_group() as tg:
        for i in range(ok):
            tg.start_soon(succeed, i)
        for _ in range(failed):
            tg.start_soon(fail)
        for _ in range(refused):
            tg.start_soon(refuse)

    streams = [f"{prefix}:{{echo}}:jobs", f"{prefix}:{{fails}}:jobs"]
    await anyio.to_thread.run_sync(lambda: wait_acked(probe, *streams))
    for stream in streams:
        assert all(c["pending"] == 0 for c in probe.xinfo_consumers(stream, GROUP))
    for key in probe.scan_iter(f"{prefix}:reply:*"):
        assert probe.ttl(key) > 0, key
    total = ok + failed + refused
    print(f"\nbounded streams: {total} calls answered; XLEN 0 and nothing pending on {streams}")


# -- 6. no hoarding ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_worker_never_holds_more_jobs_than_it_runs(
    fleet: Fleet, client: Client, probe: redis.Redis, prefix: str
) -> None:
    """taskiq-redis PR #129: with 20 slow jobs queued and two workers of concurrency 2, no
    worker ever has more than 2 pending entries (the rest stay in the stream for others)."""
    stream = f"{prefix}:{{echo}}:jobs"
    jobs, concurrency = 20, 2
    answers: dict[int, float] = {}
    most: dict[str, int] = {}
    samples = 0

    async def call(i: int) -> None:
        answers[i] = output(await client.model("echo").predict(request(i, sleep=0.25)), "x")

    # The model was served before (its group exists) and its workers are gone, as when scaled
    # to zero: calls queue their jobs. (For a model no worker ever served, the client would
    # instead wait for a worker to appear, or fail: client/served.py.)
    with contextlib.suppress(redis.ResponseError):  # BUSYGROUP: made by an earlier run
        probe.xgroup_create(stream, GROUP, id="0", mkstream=True)
    async with anyio.create_task_group() as tg:
        for i in range(jobs):
            tg.start_soon(call, i)
        await wait_until_async(lambda: probe.xlen(stream) == jobs, "every job is queued")
        for _ in range(2):
            fleet.start(MODELS, extra=[*TTL_ARGS, "--concurrency", str(concurrency)], wait=False)
        while len(answers) < jobs:  # sample each consumer's pending count while jobs drain
            with probe.pipeline(transaction=False) as pipe:
                pipe.xpending(stream, GROUP)
                pipe.xinfo_consumers(stream, GROUP)
                try:
                    summary, consumers = pipe.execute()
                except redis.ResponseError:  # no group until the first worker creates it
                    summary, consumers = {"consumers": []}, []
            samples += 1
            for counts in (summary["consumers"], consumers):
                for consumer in counts:
                    name = text(consumer["name"])
                    most[name] = max(most.get(name, 0), int(consumer["pending"]))
            await anyio.sleep(0.005)

    assert answers == {i: float(i) for i in range(jobs)}
    assert len(most) == 2
    assert max(most.values()) <= concurrency, most
    print(
        f"\nno hoarding: {jobs} jobs over 2 workers of concurrency {concurrency}; "
        f"{samples} samples; most pending per worker: {sorted(most.values())}"
    )


# -- 7. consumer group lost --------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "how",
    [
        "destroy-group",
        "delete-stream",
        "delete-stream-mid-job",
    ],
)
async def test_lost_consumer_group_is_recreated(
    fleet: Fleet, client: Client, probe: redis.Redis, prefix: str, how: str
) -> None:
    """faststream#2611: the job stream or its group disappears under a running worker (Redis
    restarted without persistence, an operator's DEL): new calls are still served, and the
    worker does not loop on NOGROUP errors."""
    stream = f"{prefix}:{{echo}}:jobs"
    worker = await start(fleet, MODELS, extra=["--concurrency", "1"])
    echo = client.model("echo")
    assert output(await echo.predict(request(1.0)), "x") == 1.0

    if how == "delete-stream-mid-job":
        answers: list[InferenceResponse] = []

        async def call() -> None:
            answers.append(await echo.predict(request(2.0, sleep=TTL)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await wait_until_async(lambda: len(pending(probe, stream)) == 1, "the job was taken")
            probe.delete(stream)  # the running job still answers; its ack finds no entry
        assert output(answers[0], "x") == 2.0
    else:
        # while the worker waits in XREADGROUP BLOCK (it may still be acking the first call)
        await wait_until_async(lambda: blocked_in_xreadgroup(probe), "the worker waits for jobs")
        if how == "delete-stream":
            probe.delete(stream)
        else:
            probe.xgroup_destroy(stream, GROUP)

    for i in range(5):
        with anyio.move_on_after(4 * TTL):
            assert output(await echo.predict(request(10.0 + i)), "x") == 10 + i
            continue
        raise AssertionError(f"call {i} after {how} unanswered; worker log:\n{worker.log()}")
    assert worker.process.poll() is None
    recreated = [line for line in worker.lines if "consumer group missing" in line]
    assert len(recreated) <= 2, recreated
    assert worker.problems(allowed=("consumer group missing",)) == []
    print(f"\nlost group ({how}): 5 calls served after it; group recreated {len(recreated)}x")


# -- 8. reply written before anyone reads ------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("size", [1, 4096])
async def test_reply_written_before_the_client_reads_is_kept(
    fleet: Fleet,
    redis_url: str,
    prefix: str,
    probe: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
) -> None:
    """Pub/sub request/reply loses a reply published before the caller subscribes. Here the
    doorbell is a list: a small answer rides in it, a big one (a tensor field of its own) is
    a reply stream entry it points to; a reader that only starts reading after the worker
    answered still gets the answer, either way."""
    await start(fleet, MODELS)
    reader_may_go = anyio.Event()
    wait_bell = ClientStreams.wait_bell

    async def late_wait_bell(
        self: ClientStreams,
        block_s: float,
        unlink: Sequence[str] = (),
        trim: Mapping[str, bytes] | None = None,
    ) -> Rung:
        await reader_may_go.wait()
        return await wait_bell(self, block_s, unlink, trim)

    monkeypatch.setattr(ClientStreams, "wait_bell", late_wait_bell)
    answers: list[InferenceResponse] = []
    sent = InferenceRequest(
        inputs=[
            RequestInput(name="x", shape=[size], datatype="FP32", data=np.full(size, 42.0, "f4"))
        ]
    )
    async with Client(redis_url, prefix=prefix, timeout=20) as client:
        bell = f"{prefix}:bell:{{{client.client_id}}}"
        stream = f"{prefix}:{{echo}}:jobs"

        async def call() -> None:
            answers.append(await client.model("echo").predict(sent))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            # the worker answers, acks and rings the bell while nobody reads
            await wait_until_async(lambda: probe.llen(bell) == 1, "the worker rang the bell")
            await wait_until_async(lambda: probe.xlen(stream) == 0, "the job left its stream")
            assert probe.ttl(bell) > 0  # kept for a late reader, but not forever
            (entry,) = probe.lrange(bell, 0, -1)
            if size == 1:
                assert entry[:1] == b"\x00"  # the answer itself, inline
                assert not probe.keys(f"{prefix}:reply:*")
            else:
                reply = f"{prefix}:reply:{{{client.client_id}}}:{text(entry)}"
                assert probe.xlen(reply) == 1
                assert probe.ttl(reply) > 0
            assert not answers
            reader_may_go.set()
    assert output(answers[0], "x") == 42.0
    print("\nlate reader: the answer written before the client read was delivered")
