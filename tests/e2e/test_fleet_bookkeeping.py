"""The fleet's bookkeeping does not grow (issue 12, section 5): after workers restart, stop,
or are killed, the consumer group holds one consumer per live worker, and the registry
``<prefix>:workers`` only live workers (and, for a minute, those gone without a word).

Real Redis, workers as real subprocesses (``--heartbeat-ttl 3``) of the ``counter`` model,
which answers with its process id.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator

import anyio
import numpy as np
import pytest
import redis

from conveyor.broker.keys import GROUP, Keys
from conveyor.client import Client
from tests.support.calls import request
from tests.support.fleet import MODELS, Fleet, WorkerProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(150)

COUNTER = MODELS / "counter"
ROUNDS = 3  # of BATCH workers started together, then stopped (one of them killed)
BATCH = 4


@pytest.fixture
def probe(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def name_of(worker: WorkerProcess) -> str:
    """The worker's consumer name, from its ``worker.started worker=NAME`` line."""
    line = worker.wait_for_log("worker.started")
    return line.split("worker.started worker=", 1)[1].split()[0]


def consumers(probe: redis.Redis, stream: str) -> set[str]:
    return {str(c["name"]) for c in probe.xinfo_consumers(stream, GROUP)}


def registered(probe: redis.Redis, keys: Keys) -> set[str]:
    return {str(m) for m in probe.zrange(keys.workers(), 0, -1)}


async def serve_everyone(url: str, prefix: str, workers: list[WorkerProcess]) -> None:
    """Sends short jobs until each of ``workers`` has answered one (so each is a consumer:
    Redis 7.0 makes one only when it delivers an entry)."""
    wanted = {worker.pid for worker in workers}
    seen: set[int] = set()
    async with Client(url, prefix=prefix, timeout=20) as client:
        counter = client.model("counter")

        async def call() -> None:
            response = await counter.predict(request(0.0, sleep=0.05))
            seen.add(int(np.asarray(response.outputs[0].data.root).ravel()[0]))

        with anyio.fail_after(60):
            while not wanted <= seen:
                async with anyio.create_task_group() as tg:
                    for _ in range(3 * len(workers)):
                        tg.start_soon(call)


def test_restarted_workers_leave_one_consumer_each(
    fleet: Fleet, probe: redis.Redis, redis_url: str, prefix: str
) -> None:
    keys = Keys(prefix)
    stream = keys.jobs("counter")
    one = ["--concurrency", "1"]  # one job at a time: the jobs spread over every worker
    survivor = fleet.start(COUNTER, extra=one)
    killed: list[str] = []
    for _ in range(ROUNDS):
        batch = [fleet.start(COUNTER, extra=one, wait=False) for _ in range(BATCH)]
        names = [name_of(worker) for worker in batch]
        anyio.run(serve_everyone, redis_url, prefix, batch)
        assert set(names) <= consumers(probe, stream)
        # all but one stop as a deployment stops them; the last is killed
        for worker in batch[:-1]:
            worker.signal(signal.SIGTERM)
        batch[-1].signal(signal.SIGKILL)
        killed.append(names[-1])
        for worker in batch:
            worker.wait(timeout=20)
        # a stopped worker has left the group and the registry, at once
        assert consumers(probe, stream).isdisjoint(names[:-1])
        assert registered(probe, keys).isdisjoint(names[:-1])

    # The killed ones' consumers owned nothing: a live worker (the survivor, or one of a
    # later round) deletes each once its heartbeat key has expired.
    survivor_name = name_of(survivor)
    deadline = time.monotonic() + 30
    while consumers(probe, stream) != {survivor_name}:
        assert time.monotonic() < deadline, consumers(probe, stream)
        time.sleep(0.05)  # watching Redis: the deleting worker may be any, and is gone

    def deleted() -> set[str]:
        lines = [line for w in fleet.workers for line in w.lines if "consumer.deleted" in line]
        return {line.split("consumer=")[1].split()[0] for line in lines}

    # the deleting worker logs it after Redis has done it: its line may trail a moment
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: deleted() == set(killed), "each killed consumer's deletion logged")
    assert deleted() == set(killed)
    # killed workers stay listed a minute (``conveyor inspect`` shows them as gone) ...
    assert registered(probe, keys) <= {survivor_name, *killed}


def test_a_killed_workers_consumer_goes_once_its_job_is_reclaimed(
    fleet: Fleet, probe: redis.Redis, redis_url: str, prefix: str
) -> None:
    keys = Keys(prefix)
    stream = keys.jobs("counter")
    victim = fleet.start(COUNTER)
    victim_name = name_of(victim)

    async def main() -> int:
        async with Client(redis_url, prefix=prefix, timeout=40) as client:
            async with anyio.create_task_group() as tg:
                answers: list[int] = []

                async def call() -> None:
                    response = await client.model("counter").predict(request(0.0, sleep=2.0))
                    answers.append(int(np.asarray(response.outputs[0].data.root).ravel()[0]))

                tg.start_soon(call)
                with anyio.fail_after(15):
                    while not probe.xpending(stream, GROUP)["pending"]:  # noqa: ASYNC110
                        await anyio.sleep(0.01)  # watching Redis, which has no event to await
                victim.signal(signal.SIGKILL)
                heir = await anyio.to_thread.run_sync(lambda: fleet.start(COUNTER))
            assert answers == [heir.pid]  # reclaimed and answered by the heir
            return heir.pid

    heir_pid = anyio.run(main)
    [heir] = [worker for worker in fleet.workers if worker.pid == heir_pid]
    heir.wait_for_log(f"consumer.deleted stream={stream} consumer={victim_name}", timeout=30)
    assert consumers(probe, stream) == {name_of(heir)}


def test_a_worker_gone_a_minute_leaves_the_registry(
    fleet: Fleet, probe: redis.Redis, prefix: str
) -> None:
    """An id whose heartbeat key expired over a minute ago (a killed worker) is removed by
    the next heartbeat of a live worker; a recent one stays, for ``conveyor inspect``."""
    keys = Keys(prefix)
    now = time.time()
    probe.zadd(keys.workers(), {"gone-long-ago": now - 120, "gone-just-now": now - 5})
    worker = fleet.start(COUNTER)
    worker.wait_for_log("worker.forgot_dead workers=gone-long-ago", timeout=15)
    assert registered(probe, keys) == {name_of(worker), "gone-just-now"}


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # redis.asyncio, driven directly
async def test_streams_deleted_meanwhile_are_no_error(redis_url: str, prefix: str) -> None:
    """A job stream deleted (or its group destroyed) under a worker: nothing to clean there,
    and no error (each command words it its own way)."""
    from conveyor.broker import RedisSettings, bookkeeping, create_client

    keys = Keys(prefix)
    redis_client = create_client(RedisSettings.from_url(redis_url))
    try:
        gone, no_group = keys.jobs("gone"), keys.jobs("no-group")
        await redis_client.xadd(no_group, {"f": "v"})
        streams = [gone, no_group]
        assert await bookkeeping.delete_consumer(redis_client, streams, "w1") == []
        assert await bookkeeping.delete_dead_consumers(redis_client, keys, streams, 0, "w") == []
    finally:
        await redis_client.aclose()
