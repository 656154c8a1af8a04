"""A failover under load: the Redis a worker and a client use becomes a replica (its replica
promoted, as Sentinel or a managed Redis does); then it is primary again, or the address
they use points at the new primary, as a managed Redis's name does after a failover.

Redis answers writes on the demoted server with READONLY and ends blocking reads with
"UNBLOCKED ... (master -> replica?)". Both pass like an outage (broker.errors,
broker.clients): the worker waits, says why, and serves again, reconnecting, so a name that
moved is followed; every call in flight gets its one right answer. Before, the worker stopped
at the first of them and the calls timed out.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable, Iterator

import anyio
import numpy as np
import pytest
import redis

from conveyor.client import Client
from conveyor.embedded import RedisServer
from conveyor.errors import ConveyorError
from tests.support.calls import request
from tests.support.fleet import MODELS, Fleet, WorkerProcess
from tests.support.proxy import ResettingProxy
from tests.support.waiting import wait_until_async

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

CALLERS = 8


def in_sync(replica: redis.Redis) -> bool:
    info = replica.info("replication")
    return bool(info["role"] == "slave" and info["master_link_status"] == "up")


def primary(server: redis.Redis) -> bool:
    return bool(server.info("replication")["role"] == "master")


class Pair:
    """A primary and its replica, with a client to each."""

    def __init__(self, factory: Callable[..., RedisServer]) -> None:
        self.main, self.spare = factory(), factory()
        self.first = redis.Redis(port=self.main.port)
        self.second = redis.Redis(port=self.spare.port)
        self.second.replicaof("127.0.0.1", self.main.port)

    async def fail_over(self) -> None:
        """The replica is promoted; the primary follows it."""
        await wait_until_async(lambda: in_sync(self.second), "the replica in sync")
        self.second.replicaof("NO", "ONE")
        self.first.replicaof("127.0.0.1", self.spare.port)
        await wait_until_async(lambda: in_sync(self.first), "the old primary a replica")

    async def fail_back(self) -> None:
        self.first.replicaof("NO", "ONE")
        self.second.replicaof("127.0.0.1", self.main.port)
        await wait_until_async(lambda: primary(self.first), "the old primary again")

    def close(self) -> None:
        self.first.close()
        self.second.close()


@pytest.fixture
def pair(redis_server_factory: Callable[..., RedisServer]) -> Iterator[Pair]:
    made = Pair(redis_server_factory)
    try:
        yield made
    finally:
        made.close()


class Callers:
    """Callers that call the echo model one after another, each checking its answers."""

    def __init__(self) -> None:
        self.answered: collections.Counter[int] = collections.Counter()
        self.failed: list[str] = []
        self.stop = anyio.Event()

    @property
    def total(self) -> int:
        return sum(self.answered.values())

    async def more(self, count: int) -> None:
        """Until ``count`` more calls are answered (or one failed)."""
        goal = self.total + count
        await wait_until_async(lambda: self.total >= goal or self.failed, "calls answered", 60)

    async def _call(self, client: Client, number: int) -> None:
        echo, value = client.model("echo"), 0
        while not self.stop.is_set():
            value += 1
            try:
                answer = await echo.predict(request(float(value)))
            except ConveyorError as error:
                self.failed.append(f"{type(error).__name__}: {error}")
                return
            assert np.asarray(answer.outputs[0].data.root).tolist() == [float(value)]
            self.answered[number] += 1


async def calling(
    url: str,
    prefix: str,
    worker: WorkerProcess,
    scenario: Callable[[Callers], Awaitable[None]],
) -> None:
    """Runs the callers through ``url`` while ``scenario`` (awaited) plays; checks that the
    worker lives and that every call was answered."""
    callers = Callers()
    async with Client(url, prefix=prefix, timeout=60) as client, anyio.create_task_group() as tg:
        for number in range(CALLERS):
            tg.start_soon(callers._call, client, number)
        await callers.more(200)
        await scenario(callers)
        callers.stop.set()
    assert worker.process.poll() is None, worker.log()
    assert not callers.failed, callers.failed
    assert all(callers.answered[number] for number in range(CALLERS)), callers.answered


async def test_a_failover_and_back_loses_no_call_and_the_worker_serves_on(
    pair: Pair, prefix: str
) -> None:
    with Fleet(pair.main.url, prefix) as fleet:
        worker = fleet.start(MODELS / "echo")

        async def scenario(callers: Callers) -> None:
            await pair.fail_over()
            said = await worker.wait_for_log_async("read-only replica", 30)
            assert "worker.redis_unavailable" in said
            await pair.fail_back()
            await callers.more(200)

        await calling(pair.main.url, prefix, worker, scenario)


async def test_a_name_that_moves_to_the_new_primary_is_followed(pair: Pair, prefix: str) -> None:
    """A managed Redis's name points at the new primary after a failover; connections made
    before still reach the old one, now a replica. Here a proxy plays the name."""
    with ResettingProxy(pair.main.port) as name, Fleet(name.url(pair.main.url), prefix) as fleet:
        url = name.url(pair.main.url)
        worker = fleet.start(MODELS / "echo")

        async def scenario(callers: Callers) -> None:
            await pair.fail_over()
            name.upstream = ("127.0.0.1", pair.spare.port)  # new connections: the new primary
            pair.second.config_resetstat()
            await worker.wait_for_log_async("read-only replica", 30)
            await callers.more(200)
            # The worker and the client moved: they read jobs and bells there now (a replica
            # runs what its primary propagates, never an XREADGROUP or a BLMPOP)
            stats = pair.second.info("commandstats")
            assert stats["cmdstat_xreadgroup"]["calls"] > 0, stats
            assert stats["cmdstat_blmpop"]["calls"] > 0, stats

        await calling(url, prefix, worker, scenario)
