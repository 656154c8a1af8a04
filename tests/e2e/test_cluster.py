"""Conveyor on a real Redis Cluster: three masters started here, models on different
masters; predict, predict_stream, reclaim after a SIGKILLed worker, and dead letters."""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator

import anyio
import numpy as np
import pytest
import redis

from conveyor.client import Client
from conveyor.embedded import RedisServer
from conveyor.types import InferenceRequest
from tests.support.calls import request
from tests.support.fleet import MODELS, Fleet, wait_acked
from tests.support.probe import entries

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli is needed to join a cluster (redis-cli --cluster create)")
    servers = []
    try:
        for _ in range(3):
            server = RedisServer(
                port=_cluster_port(),
                args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
            )
            server.start()
            servers.append(server)
        nodes = [f"127.0.0.1:{server.port}" for server in servers]
        create = ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0"]
        created = subprocess.run(
            [*create, "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        probe = redis.RedisCluster(host="127.0.0.1", port=servers[0].port)
        try:
            with anyio.from_thread.start_blocking_portal() as portal:
                portal.call(_wait_ok, probe)
        finally:
            probe.close()
        yield f"redis://127.0.0.1:{servers[0].port}/0?cluster=true"
    finally:
        for server in servers:
            server.close()


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too, as Redis needs."""
    for _ in range(100):
        port = random.randint(20000, 45000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair of ports for a cluster node")


async def _wait_ok(probe: redis.RedisCluster) -> None:
    with anyio.fail_after(20):
        while probe.cluster_info().get("cluster_state") != "ok":  # noqa: ASYNC110
            await anyio.sleep(0.05)  # the cluster gossips its way to "ok": no event to await


def _node_of(url: str, key: str) -> int:
    port = int(url.split(":")[2].split("/")[0])
    probe = redis.RedisCluster(host="127.0.0.1", port=port)
    try:
        return int(probe.get_node_from_key(key).port)  # type: ignore[no-untyped-call]  # untyped in redis-py
    finally:
        probe.close()


@pytest.fixture
def fleet(cluster_url: str, prefix: str) -> Iterator[Fleet]:
    fleet = Fleet(cluster_url, prefix)
    yield fleet
    fleet.stop()


@pytest.mark.timeout(90)
async def test_predict_and_stream_on_models_of_different_masters(
    cluster_url: str, prefix: str, fleet: Fleet
) -> None:
    echo, counter = f"{prefix}:{{echo}}:jobs", f"{prefix}:{{counter}}:jobs"
    assert _node_of(cluster_url, echo) != _node_of(cluster_url, counter)
    fleet.start(MODELS)
    async with Client(cluster_url, prefix=prefix, timeout=20) as client:
        response = await client.model("echo").predict(request(3.0))
        assert float(np.asarray(response.outputs[0].data.root).ravel()[0]) == 3.0
        pid = await client.model("counter").predict(request(0.0))
        assert int(np.asarray(pid.outputs[0].data.root).ravel()[0]) == fleet.workers[0].pid

        async def inputs() -> AsyncIterator[InferenceRequest]:
            for i in range(4):
                yield request(float(i))

        chunks = [c async for c in client.model("echo").predict_stream(inputs())]
        assert [float(np.asarray(c.outputs[0].data.root).ravel()[0]) for c in chunks] == [
            0.0,
            1.0,
            2.0,
            3.0,
        ]

        results: dict[int, float] = {}

        async def call(i: int) -> None:
            model = "echo" if i % 2 else "counter"
            answer = await client.model(model).predict(request(float(i)))
            results[i] = float(np.asarray(answer.outputs[0].data.root).ravel()[0])

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(call, i)
        assert all(results[i] == float(i) for i in range(1, 40, 2))


@pytest.mark.timeout(90)
async def test_reclaim_after_a_sigkilled_worker(
    cluster_url: str, prefix: str, fleet: Fleet
) -> None:
    first = fleet.start(MODELS, extra=["--concurrency", "1"])
    async with Client(cluster_url, prefix=prefix, timeout=40) as client:
        answers = []

        async def call() -> None:
            answers.append(await client.model("counter").predict(request(0.0, sleep=3.0)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            line = await anyio.to_thread.run_sync(lambda: first.wait_for_log("worker.started"))
            assert line
            port = int(cluster_url.split(":")[2].split("/")[0])
            probe = redis.RedisCluster(host="127.0.0.1", port=port)
            try:
                with anyio.fail_after(15):
                    stream = f"{prefix}:{{counter}}:jobs"
                    while probe.xpending(stream, "workers")["pending"] < 1:  # noqa: ASYNC110
                        await anyio.sleep(0.01)  # watching Redis: no event to await
            finally:
                probe.close()
            first.signal(signal.SIGKILL)
            second = await anyio.to_thread.run_sync(lambda: fleet.start(MODELS))
        assert len(answers) == 1
        assert int(np.asarray(answers[0].outputs[0].data.root).ravel()[0]) == second.pid
        await anyio.to_thread.run_sync(second.wait_for_log, "job.reclaimed")


@pytest.mark.timeout(60)
async def test_dead_letters_on_the_cluster(cluster_url: str, prefix: str, fleet: Fleet) -> None:
    worker = fleet.start(MODELS)
    port = int(cluster_url.split(":")[2].split("/")[0])
    probe = redis.RedisCluster(host="127.0.0.1", port=port)
    try:
        probe.xadd(f"{prefix}:{{echo}}:jobs", {"hello": "world"})
        await anyio.to_thread.run_sync(worker.wait_for_log, "job.bad_entry")
        # the log line comes just before the dead letter is written: wait for it
        dead_stream = f"{prefix}:{{echo}}:dead"
        found = await anyio.to_thread.run_sync(
            lambda: probe.xread({dead_stream: "0-0"}, count=1, block=10_000)
        )
        assert found
        [(_, dead)] = entries(probe, dead_stream)
        assert b"missing field" in dead[b"dead_reason"]
        # acked once the caller's reason is stored too
        await anyio.to_thread.run_sync(lambda: wait_acked(probe, f"{prefix}:{{echo}}:jobs"))
    finally:
        probe.close()
    async with Client(cluster_url, prefix=prefix, timeout=20) as client:  # still serving
        await client.model("echo").predict(request(1.0))


@pytest.mark.timeout(60)
async def test_the_fleets_bookkeeping_on_the_cluster(
    cluster_url: str, prefix: str, fleet: Fleet
) -> None:
    """The heartbeat (which reads Redis's clock: a keyless TIME, refused in a cluster
    pipeline) registers the worker; a stopped worker leaves the registry and its consumers."""
    worker = fleet.start(MODELS)
    async with Client(cluster_url, prefix=prefix, timeout=20) as client:
        await client.model("echo").predict(request(1.0))  # a consumer in echo's group
    port = int(cluster_url.split(":")[2].split("/")[0])
    probe = redis.RedisCluster(host="127.0.0.1", port=port, decode_responses=True)
    stream = f"{prefix}:{{echo}}:jobs"
    try:
        with anyio.fail_after(10):
            while not probe.zrange(f"{prefix}:workers", 0, -1):  # noqa: ASYNC110
                await anyio.sleep(0.05)  # the heartbeat thread's first beat: no event to await
        assert len(probe.xinfo_consumers(stream, "workers")) == 1
        worker.signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(worker.wait, 20) == 0
        assert probe.xinfo_consumers(stream, "workers") == []
        assert probe.zrange(f"{prefix}:workers", 0, -1) == []
    finally:
        probe.close()
    assert "heartbeat_failed" not in worker.log()
