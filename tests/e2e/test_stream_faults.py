"""Faults around streams: a ``predict_stream`` whose worker is SIGKILLed before or after the
caller saw chunks, a client whose Redis connections are killed mid-stream, and a job stream
that must never lose the entry of a job still running. Real Redis, workers as real
subprocesses (``tests/models_streams/streamer``: a slow stream whose chunks carry their index
and the pid of the worker that wrote them).

Every wait is on an event: a chunk, a worker's log line, or Redis state polled under a
deadline (Redis has no event to await).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import numpy as np
import pytest
import redis

from conveyor.broker import RedisSettings
from conveyor.broker.wire import Message
from conveyor.client import Client
from conveyor.client.waiter import Waiter
from conveyor.errors import StreamInterrupted
from conveyor.types import InferenceResponse
from tests.support.calls import one, output, request
from tests.support.fleet import MODELS, Fleet, WorkerProcess, wait_acked
from tests.support.probe import pending, reply_streams, text
from tests.support.waiting import wait_until_async

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

STREAM_MODELS = Path(__file__).parents[1] / "models" / "streams"
TTL = 1.5  # heartbeat TTL of every worker here: a dead worker's job is reclaimed in 1-2 TTLs
# A short grace period: a worker stopped at teardown does not wait long for a stream nobody reads.
WORKER_ARGS = ("--heartbeat-ttl", str(TTL), "--grace-period", "1")
GROUP = "workers"


# -- helpers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    index: int
    pid: int


def chunk_of(response: InferenceResponse) -> Chunk:
    values = {o.name: int(np.asarray(o.data.root).ravel()[0]) for o in response.outputs}
    return Chunk(values["index"], values["pid"])


async def read_stream(
    chunks: AsyncIterator[InferenceResponse],
    seen: list[Chunk],
    after_each: Callable[[], Awaitable[None]],
) -> None:
    """Reads a stream to its end into ``seen``, awaiting ``after_each`` after every chunk."""
    async for response in chunks:
        seen.append(chunk_of(response))
        await after_each()


def by_pid(workers: Sequence[WorkerProcess], pid: int) -> WorkerProcess:
    return next(w for w in workers if w.pid == pid)


def kill_writer_after(
    count: int, seen: list[Chunk], workers: Sequence[WorkerProcess], victims: list[WorkerProcess]
) -> Callable[[], Awaitable[None]]:
    """An ``after_each`` for :func:`read_stream`: once ``count`` chunks arrived, SIGKILLs the
    worker that wrote them (its pid is in each chunk) and adds it to ``victims``."""

    async def after_each() -> None:
        if len(seen) == count:
            victims.append(by_pid(workers, seen[0].pid))
            await victims[0].kill()

    return after_each


def client_connections(probe: redis.Redis, client: Client) -> list[dict[str, Any]]:
    """The client's own connections, by the name it gives them (``CLIENT LIST``)."""
    name = f"conveyor-client-{client.client_id}"
    return [c for c in probe.client_list() if c.get("name") == name]


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The attempt of every reply message the client's reader hands to a waiting call."""
    seen: list[int] = []
    deliver = Waiter.deliver

    def recording(self: Waiter, message: Message) -> None:
        seen.append(message.attempt)
        deliver(self, message)

    monkeypatch.setattr(Waiter, "deliver", recording)
    return seen


# -- 1. a predict_stream whose worker dies -----------------------------------------------------


@pytest.mark.timeout(60)
async def test_stream_broken_after_some_chunks_raises_stream_interrupted(
    fleet: Fleet, redis_url: str, prefix: str, probe: redis.Redis
) -> None:
    """The worker streaming to a caller is SIGKILLed after the caller took 3 chunks; the other
    worker reclaims the job after the TTL and restarts it as attempt 2. The caller gets the 3
    chunks, then ``StreamInterrupted`` ("broke after 3 chunks"), never a repeated chunk 0.

    ``stream_window=1`` makes the worker wait for the caller before each chunk, so exactly 3
    chunks were written when the kill lands."""
    stream = f"{prefix}:{{streamer}}:jobs"
    workers = await fleet.start_many(2, STREAM_MODELS, extra=WORKER_ARGS)
    seen: list[Chunk] = []
    victims: list[WorkerProcess] = []
    began = time.monotonic()
    async with Client(redis_url, prefix=prefix, timeout=40, stream_window=1) as client:
        chunks = client.model("streamer").predict_stream(one(request(0.0, chunks=50)))
        kill_after_3 = kill_writer_after(3, seen, workers, victims)
        with pytest.raises(StreamInterrupted) as caught:
            await read_stream(chunks, seen, kill_after_3)
    elapsed = time.monotonic() - began

    assert seen == [Chunk(i, seen[0].pid) for i in range(3)]
    assert "the stream broke after 3 chunks" in str(caught.value)
    (survivor,) = (w for w in workers if w is not victims[0])
    assert "deliveries=2" in await survivor.wait_for_log_async("job.reclaimed")
    assert [e["times_delivered"] for e in pending(probe, stream)] in ([], [2])
    assert survivor.problems(allowed=("job.reclaimed",)) == []
    print(f"\nstream broken after 3 chunks: StreamInterrupted after {elapsed:.1f}s")


@pytest.mark.timeout(60)
async def test_stream_interrupted_stops_the_restarted_job(
    fleet: Fleet, redis_url: str, prefix: str, probe: redis.Redis
) -> None:
    """Once the caller got StreamInterrupted nobody reads attempt 2, so the client must stop it
    as it stops any call it gives up on (withdraw the entry, cancel through the control
    stream): the worker that reclaimed the job stops it at once and frees its slot."""
    stream = f"{prefix}:{{streamer}}:jobs"
    workers = await fleet.start_many(2, STREAM_MODELS, extra=WORKER_ARGS)
    seen: list[Chunk] = []
    victims: list[WorkerProcess] = []
    async with Client(redis_url, prefix=prefix, timeout=40) as client:
        chunks = client.model("streamer").predict_stream(one(request(0.0, chunks=100)))
        kill_after_3 = kill_writer_after(3, seen, workers, victims)
        with pytest.raises(StreamInterrupted):
            await read_stream(chunks, seen, kill_after_3)
    (survivor,) = (w for w in workers if w is not victims[0])
    await survivor.wait_for_log_async("job.reclaimed")
    # the restarted stream has ~9 s to go: it must be stopped well before that
    assert "reason=cancelled" in await survivor.wait_for_log_async("job.stopped", timeout=5)
    await anyio.to_thread.run_sync(lambda: wait_acked(probe, stream, timeout=5))


@pytest.mark.timeout(60)
async def test_stream_whose_worker_dies_before_the_first_chunk_restarts_seamlessly(
    fleet: Fleet, redis_url: str, prefix: str, probe: redis.Redis, attempts: list[int]
) -> None:
    """The worker is SIGKILLed while the model sleeps before its first chunk: the caller saw
    nothing yet, so it silently follows attempt 2 on the other worker and gets the whole
    stream, chunk 0 first."""
    stream = f"{prefix}:{{streamer}}:jobs"
    workers = await fleet.start_many(2, STREAM_MODELS, extra=WORKER_ARGS)
    count = 10
    seen: list[Chunk] = []
    victims: list[WorkerProcess] = []
    began = time.monotonic()
    async with Client(redis_url, prefix=prefix, timeout=40) as client:
        model = client.model("streamer")
        payload = request(0.0, chunks=count, interval=0.05, first_delay=1.5)

        async def consume() -> None:
            async for response in model.predict_stream(one(payload)):
                seen.append(chunk_of(response))

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await wait_until_async(
                lambda: len(pending(probe, stream)) == 1, "a worker took the job"
            )
            consumer = text(pending(probe, stream)[0]["consumer"])
            pid = probe.hget(f"{prefix}:worker:{consumer}", "pid")
            assert pid is not None
            victims.append(by_pid(workers, int(pid)))
            await victims[0].kill()
            # the premise: nothing reached Redis from the victim, let alone the caller
            assert all(probe.xlen(key) == 0 for key in reply_streams(probe, prefix))
    elapsed = time.monotonic() - began

    (survivor,) = (w for w in workers if w is not victims[0])
    assert seen == [Chunk(i, survivor.pid) for i in range(count)]
    assert set(attempts) == {2}  # every message the call took came from the restart
    assert "deliveries=2" in await survivor.wait_for_log_async("job.reclaimed")
    await anyio.to_thread.run_sync(lambda: wait_acked(probe, stream))
    assert survivor.problems(allowed=("job.reclaimed",)) == []
    print(f"\nstream restarted before its first chunk: {count} chunks in {elapsed:.1f}s")


@pytest.mark.timeout(60)
async def test_stream_interrupted_counts_every_chunk_the_caller_got(
    fleet: Fleet, redis_url: str, prefix: str, probe: redis.Redis, attempts: list[int]
) -> None:
    """A caller that reads slowly takes 3 chunks while the worker writes 7; the worker is
    killed and the restart is noticed while 4 chunks wait in the client's buffer. The caller
    then gets those 4 too (7 in all, none repeated or missing), and StreamInterrupted must
    say the stream broke after 7 chunks: the count tells the caller what it already has."""
    workers = await fleet.start_many(2, STREAM_MODELS, extra=WORKER_ARGS)
    seen: list[Chunk] = []

    async def hold_then_kill() -> None:
        if len(seen) != 3:
            return
        (reply,) = reply_streams(probe, prefix)
        # entries-added: the client deletes the entries it read from the stream as it goes
        await wait_until_async(
            lambda: probe.xinfo_stream(reply)["entries-added"] >= 7, "the worker wrote 7 chunks"
        )
        await by_pid(workers, seen[0].pid).kill()
        await wait_until_async(lambda: 2 in attempts, "the restart reached the client")

    async with Client(redis_url, prefix=prefix, timeout=40) as client:
        chunks = client.model("streamer").predict_stream(one(request(0.0, chunks=50)))
        with pytest.raises(StreamInterrupted) as caught:
            await read_stream(chunks, seen, hold_then_kill)
    assert [c.index for c in seen] == list(range(len(seen)))
    assert len(seen) >= 7
    assert f"the stream broke after {len(seen)} chunks" in str(caught.value)


# -- 2. the client's connections are killed mid-stream -----------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("whose", ["client", "everyone"])
async def test_stream_survives_killed_connections(
    fleet: Fleet, redis_url: str, prefix: str, probe: redis.Redis, whose: str
) -> None:
    """While a caller reads a slow stream, Redis drops its connections (``CLIENT KILL ID`` of
    the client's named connections; or ``CLIENT KILL TYPE normal``, every connection but the
    probe's, the worker's included), three times: the client reconnects and goes on reading
    its reply stream from the last entry it saw, so it gets every chunk once, in order."""
    worker = (await fleet.start_many(1, STREAM_MODELS, extra=WORKER_ARGS))[0]
    count, kill_after = 30, (5, 12, 20)
    seen: list[Chunk] = []
    killed: set[int] = set()
    async with Client(redis_url, prefix=prefix, timeout=40) as client:
        chunks = client.model("streamer").predict_stream(one(request(0.0, chunks=count)))
        async for response in chunks:
            seen.append(chunk_of(response))
            if len(seen) not in kill_after:
                continue
            mine = client_connections(probe, client)
            assert any(c.get("cmd") == "blmpop" for c in mine), mine  # the reader, waiting
            killed.update(int(c["id"]) for c in mine)
            if whose == "client":
                for connection in mine:
                    probe.client_kill_filter(_id=connection["id"])
            else:
                probe.client_kill_filter(_type="normal", skipme=True)
            await wait_until_async(
                lambda: not {int(c["id"]) for c in client_connections(probe, client)} & killed,
                "the killed connections are gone",
            )
        again = {int(c["id"]) for c in client_connections(probe, client)}
    assert seen == [Chunk(i, worker.pid) for i in range(count)]
    assert again, "the client never reconnected"
    assert not again & killed
    assert worker.process.poll() is None
    stream = f"{prefix}:{{streamer}}:jobs"
    await wait_until_async(lambda: probe.xlen(stream) == 0, "the job left its stream")
    print(
        f"\nkilled connections ({whose}): {len(killed)} client connections killed in 3 rounds; "
        f"{count} chunks, each once, in order"
    )


class CuttingProxy:
    """A TCP proxy to Redis that, once, forwards the ``nth`` write holding every one of
    ``needles`` and then drops that connection before Redis's reply gets back: the command
    ran, but its sender cannot know. That is a connection lost at the worst moment."""

    def __init__(self, host: str, port: int, needles: Sequence[bytes], nth: int) -> None:
        self.host, self.port = host, port
        self.needles, self.nth = needles, nth
        self.seen = 0
        self.ran = anyio.Event()  # the test sets it once Redis shows the command's effect
        self.cut = anyio.Event()  # set once the connection is dropped

    async def serve(self, listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> None:
        await listener.serve(self._handle)

    async def _handle(self, downstream: anyio.abc.SocketStream) -> None:
        dropping = False  # once set, nothing more from Redis reaches this connection's sender
        async with downstream, await anyio.connect_tcp(self.host, self.port) as upstream:

            async def up(scope: anyio.CancelScope) -> None:
                nonlocal dropping
                with contextlib.suppress(anyio.BrokenResourceError, OSError):
                    async for data in downstream:
                        if not self.cut.is_set() and all(n in data for n in self.needles):
                            self.seen += 1
                            if self.seen == self.nth:
                                dropping = True
                                await upstream.send(data)
                                with anyio.fail_after(10):
                                    await self.ran.wait()
                                self.cut.set()
                                break
                        await upstream.send(data)
                scope.cancel()

            async def down(scope: anyio.CancelScope) -> None:
                with contextlib.suppress(anyio.BrokenResourceError, OSError):
                    async for data in upstream:
                        if not dropping:
                            await downstream.send(data)
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(up, tg.cancel_scope)
                tg.start_soon(down, tg.cancel_scope)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("side", ["worker", "client"])
async def test_write_resent_after_a_lost_reply_reaches_the_caller_once(
    fleet: Fleet, redis_url: str, prefix: str, probe: redis.Redis, side: str
) -> None:
    """One side talks to Redis through a proxy that drops its connection right after Redis
    ran an XADD and before the sender heard back: the worker's XADD of chunk 2, or the
    client's XADD of the job. redis-py reconnects and sends the pipeline again; the caller
    must still get each chunk once, in order."""
    settings = RedisSettings.from_url(redis_url)
    stream = f"{prefix}:{{streamer}}:jobs"
    if side == "worker":
        proxy = CuttingProxy(settings.host, settings.port, (b"XADD", b":reply:"), nth=3)
    else:
        proxy = CuttingProxy(settings.host, settings.port, (b"XADD", stream.encode()), nth=1)
    count = 8
    seen: list[Chunk] = []

    async def nothing() -> None:
        pass

    def redis_ran_it() -> bool:
        if side == "worker":  # chunk 2 reached the reply stream (the client trims what it read)
            return any(
                int(probe.xinfo_stream(key)["entries-added"]) >= 3
                for key in reply_streams(probe, prefix)
            )
        return int(probe.xinfo_stream(stream)["entries-added"]) >= 1

    async def tell_proxy() -> None:
        await wait_until_async(redis_ran_it, f"Redis ran the {side}'s XADD")
        proxy.ran.set()

    async with (
        await anyio.create_tcp_listener(local_host="127.0.0.1") as listener,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(proxy.serve, listener)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        via_proxy = settings.model_copy(update={"host": "127.0.0.1", "port": port}).to_url()
        fleet.redis_url = via_proxy if side == "worker" else redis_url
        await anyio.to_thread.run_sync(lambda: fleet.start(STREAM_MODELS, extra=WORKER_ARGS))
        client_url = via_proxy if side == "client" else redis_url
        async with Client(client_url, prefix=prefix, timeout=30) as client:
            tg.start_soon(tell_proxy)
            chunks = client.model("streamer").predict_stream(one(request(0.0, chunks=count)))
            await read_stream(chunks, seen, nothing)
        await anyio.to_thread.run_sync(fleet.stop)  # before the proxy goes
        tg.cancel_scope.cancel()
    assert proxy.cut.is_set()
    assert [c.index for c in seen] == list(range(count))


# -- 3. trimming never deletes a running job ---------------------------------------------------


@pytest.mark.timeout(60)
async def test_running_job_stays_in_its_stream_while_others_are_answered(
    fleet: Fleet, redis_url: str, prefix: str, probe: redis.Redis
) -> None:
    """symfony#53406: trimming a stream (XADD MAXLEN, XTRIM) deletes the oldest entries,
    running or not. Here a long job keeps its entry while 300 short jobs are sent, answered
    and deleted around it; the stream holds exactly the unanswered job until it is answered."""
    stream = f"{prefix}:{{echo}}:jobs"
    await anyio.to_thread.run_sync(lambda: fleet.start(MODELS, extra=WORKER_ARGS))
    shorts, long_s = 300, 8.0  # 300 short calls take ~1 s; 8 s leaves room on a loaded host
    answers: dict[int, float] = {}
    long_answer: list[InferenceResponse] = []
    missing: list[int] = []  # samples in which the running job's entry was not in the stream
    samples = 0
    async with Client(redis_url, prefix=prefix, timeout=40) as client:
        echo = client.model("echo")

        async def long_call() -> None:
            long_answer.append(await echo.predict(request(-1.0, sleep=long_s)))

        async def short_call(i: int) -> None:
            answers[i] = output(await echo.predict(request(float(i))))

        async with anyio.create_task_group() as tg:
            tg.start_soon(long_call)
            await wait_until_async(
                lambda: len(pending(probe, stream)) == 1, "the long job was taken"
            )
            (entry,) = pending(probe, stream)
            entry_id = entry["message_id"]
            found: Any = probe.xrange(stream, entry_id, entry_id)
            fields = found[0][1]
            async with anyio.create_task_group() as calls:
                for i in range(shorts):
                    calls.start_soon(short_call, i)
                while len(answers) < shorts:
                    samples += 1
                    if not probe.xrange(stream, entry_id, entry_id):
                        missing.append(samples)
                    await anyio.sleep(0.01)
            assert not long_answer, "the long job ended before the short ones: make it longer"
            # every short job answered and deleted (acked just after its answer); the running
            # one is still there, intact
            await wait_until_async(lambda: probe.xlen(stream) == 1, "the short jobs were acked")
            assert probe.xrange(stream) == [(entry_id, fields)]
            assert [p["message_id"] for p in pending(probe, stream)] == [entry_id]
    assert answers == {i: float(i) for i in range(shorts)}
    assert output(long_answer[0]) == -1.0
    assert missing == []
    await anyio.to_thread.run_sync(lambda: wait_acked(probe, stream))
    info = probe.xinfo_stream(stream)
    assert info["entries-added"] == shorts + 1
    print(
        f"\nno trimming: the running job's entry was in the stream in all {samples} samples "
        f"while {shorts} jobs were answered; XLEN 1 until it was answered, then 0"
    )
