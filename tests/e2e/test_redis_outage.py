"""Redis closes connections or goes away for seconds; clients and workers carry on (issue 12 §1).

Real Redis servers (private, AOF with ``appendfsync always`` so a crash loses nothing Redis
acknowledged) and a real worker subprocess. Every call must get its one correct answer within
its timeout (README: "a call keeps trying within its timeout"), or a ``ConveyorError``: never
a raw redis-py exception, never a ``BrokerConnectionError`` at once while time is left, never
a hang until the deadline.
"""

from __future__ import annotations

import collections
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from redis import Redis

from conveyor.client import Client
from conveyor.embedded import RedisServer
from conveyor.errors import ConveyorError, StreamInterrupted
from conveyor.types import InferenceRequest
from tests.support.calls import generator, request
from tests.support.fleet import Fleet
from tests.support.proxy import ResettingProxy

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

MODELS = Path(__file__).parents[1] / "models" / "connections"
TICKER = Path(__file__).parents[1] / "models" / "common" / "ticker"
ECHO = Path(__file__).parents[1] / "models" / "common" / "echo"
OUTAGE_S = 2.5  # how long Redis stays down: several of the connection's retry rounds


async def call(client: Client, value: float, timeout: float = 30) -> Any:
    """The answer's value, or the error raised (a ConveyorError only: others propagate)."""
    try:
        response = await client.model("tally").predict(
            request(value, datatype="FP64"), timeout=timeout
        )
    except ConveyorError as error:
        return error
    return float(np.asarray(response.outputs[0].data.root).ravel()[0])


class Setup:
    def __init__(self, server: RedisServer, fleet: Fleet, tally: Path) -> None:
        self.server = server
        self.fleet = fleet
        self.tally = tally

    def runs(self) -> list[str]:
        return self.tally.read_text().splitlines() if self.tally.exists() else []

    def admin(self) -> Redis:
        return Redis.from_url(self.server.url)

    def outage(self) -> None:
        """kill -9, then back on the same port (with its AOF) OUTAGE_S later."""
        self.server.kill()
        time.sleep(OUTAGE_S)  # the outage itself is what is under test: only time passes
        self.server.start()


@pytest.fixture
def setup(
    redis_server_factory: Callable[..., RedisServer],
    prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Setup]:
    server = redis_server_factory(args=["--appendonly", "yes", "--appendfsync", "always"])
    tally = tmp_path / "tally"
    monkeypatch.setenv("TALLY_FILE", str(tally))
    fleet = Fleet(server.url, prefix)
    fleet.start(MODELS, extra=["--concurrency", "16"])
    try:
        yield Setup(server, fleet, tally)
    finally:
        fleet.stop()


async def five_calls(client: Client) -> list[Any]:
    return [await call(client, float(i), timeout=20) for i in range(5)]


async def test_idle_client_and_worker_after_client_kill(setup: Setup, prefix: str) -> None:
    """CLIENT KILL TYPE normal: every connection of the client and of the worker is gone.
    Before the fix: every later call failed with "Connection closed by server"."""
    async with Client(setup.server.url, prefix=prefix) as client:
        assert await five_calls(client) == [0.0, 1.0, 2.0, 3.0, 4.0]
        with setup.admin() as admin:
            killed = admin.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 4  # the client's sender and reader, the worker's connections
        assert await five_calls(client) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert setup.fleet.workers[0].process.poll() is None


async def test_idle_client_and_worker_under_the_server_timeout(setup: Setup, prefix: str) -> None:
    """Redis's `timeout 1` closes every connection idle for a second: the client's sending
    connections between calls, the worker's between reads."""
    async with Client(setup.server.url, prefix=prefix) as client:
        assert await five_calls(client) == [0.0, 1.0, 2.0, 3.0, 4.0]
        with setup.admin() as admin:
            admin.config_set("timeout", 1)
            name = f"conveyor-client-{client.client_id}"
            # No event says Redis closed an idle connection: poll CLIENT LIST (bounded).
            with anyio.fail_after(15):
                while sum(c["name"] == name for c in admin.client_list()) > 1:  # noqa: ASYNC110
                    await anyio.sleep(0.2)
        assert await five_calls(client) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert setup.fleet.workers[0].process.poll() is None


async def test_an_outage_of_seconds_while_idle(setup: Setup, prefix: str) -> None:
    """Redis killed and back 2.5 s later while nothing is in flight: the next calls work (the
    reader and the worker's read loop reconnect; the pooled connections are replaced)."""
    async with Client(setup.server.url, prefix=prefix) as client:
        assert await five_calls(client) == [0.0, 1.0, 2.0, 3.0, 4.0]
        await anyio.to_thread.run_sync(setup.outage)
        assert await five_calls(client) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert setup.fleet.workers[0].process.poll() is None


async def test_calls_sent_during_an_outage_wait_for_redis(setup: Setup, prefix: str) -> None:
    """A call made while a Redis that answered before is down keeps trying within its
    timeout, and is answered once Redis is back."""
    async with Client(setup.server.url, prefix=prefix) as client:
        assert await call(client, 1.0) == 1.0
        await anyio.to_thread.run_sync(setup.server.kill)
        answers: list[Any] = []

        async def one_call(value: float) -> None:
            answers.append(await call(client, value, timeout=20))

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(one_call, float(i))
            await anyio.sleep(OUTAGE_S)  # the outage under test
            await anyio.to_thread.run_sync(setup.server.start)
        assert sorted(answers) == [0.0, 1.0, 2.0, 3.0, 4.0]


@pytest.mark.timeout(120)
async def test_an_outage_of_seconds_under_load(
    setup: Setup, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """120 calls at a concurrency of 30; Redis is killed once a third are answered and is
    back 2.5 s later. Before the fix: 57 answered, 30 failed at once with
    BrokerConnectionError, the rest hung until their deadline."""
    calls, concurrency = 120, 30
    outcomes: dict[int, Any] = {}
    third = anyio.Event()
    async with Client(setup.server.url, prefix=prefix) as client:
        limiter = anyio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with limiter:
                outcomes[i] = await call(client, float(i), timeout=30)
            if len(outcomes) >= calls // 3:
                third.set()

        async with anyio.create_task_group() as tg:
            for i in range(calls):
                tg.start_soon(one, i)
            await third.wait()
            await anyio.to_thread.run_sync(setup.outage)
    errors = {i: repr(o) for i, o in outcomes.items() if isinstance(o, BaseException)}
    runs = collections.Counter(setup.runs())
    with capsys.disabled():  # the figures README's Reliability section quotes
        print(
            f"\noutage under load: {calls} calls, {len(errors)} errors, "
            f"{sum(n - 1 for n in runs.values())} extra runs of the model"
        )
    assert errors == {}
    assert outcomes == {i: float(i) for i in range(calls)}
    assert setup.fleet.workers[0].process.poll() is None


async def _one(value: float) -> AsyncIterator[InferenceRequest]:
    yield request(value, datatype="FP64")


async def test_a_stream_that_ended_is_not_failed_by_its_cleanup(setup: Setup, prefix: str) -> None:
    """The stream's cleanup (UNLINK of its input keys) fails after the stream ended normally:
    the caller still sees a stream that ended normally. ACL stands in, deterministically, for
    Redis going away at that moment. Before: the cleanup's BrokerConnectionError was raised
    from the `async for`."""
    chunks = 0
    async with Client(setup.server.url, prefix=prefix) as client:
        async for _ in client.model("tally").predict_stream(_one(7.0), timeout=20):
            chunks += 1
            if chunks == 1:
                with setup.admin() as admin:  # from now on no UNLINK for anyone
                    admin.acl_setuser("default", enabled=True, commands=["-unlink"])
    assert chunks == 5


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_stream_whose_worker_loses_redis_is_not_the_models_error(
    redis_server_factory: Callable[..., RedisServer], prefix: str
) -> None:
    """The worker's connections hang mid-stream (a stalled proxy; short socket timeouts), so
    writing a chunk fails: that is not the model's failure. The job stays pending, is
    reclaimed and restarted, and the caller, who had taken chunks, gets StreamInterrupted.
    Before: the caller got RemoteError("BrokerConnectionError: ...") as if the model raised."""
    server = redis_server_factory()
    with ResettingProxy(server.port) as proxy:
        fleet = Fleet(f"{proxy.url(server.url)}?socket_timeout=0.5&retries=0", prefix)
        worker = fleet.start(TICKER)
        try:
            async with Client(server.url, prefix=prefix, timeout=30) as client:

                async def consume() -> ConveyorError | None:
                    ticks = 0
                    try:
                        async for _ in client.model("ticker").predict_stream(_one(0.0)):
                            ticks += 1
                            if ticks == 3:
                                assert await anyio.to_thread.run_sync(proxy.stall) >= 1
                    except ConveyorError as error:
                        return error
                    return None

                error = await consume()
        finally:
            fleet.stop()
    assert isinstance(error, StreamInterrupted), repr(error)
    assert "job.failed" not in worker.log()


async def test_a_stream_through_an_outage_keeps_trying(setup: Setup, prefix: str) -> None:
    """Redis dies mid-stream and is back 2.5 s later: the stream's own sends (credit to the
    worker, inputs) keep trying within its timeout. The worker's chunk write failed meanwhile,
    so the job restarts and the caller, who had taken chunks, gets StreamInterrupted: a
    ConveyorError that says to send again. Before: BrokerConnectionError at once."""
    setup.fleet.start(TICKER)
    async with Client(setup.server.url, prefix=prefix, timeout=30, stream_window=8) as client:

        async def consume() -> tuple[int, BaseException | None]:
            ticks = 0
            try:
                async with aclosing(
                    generator(client.model("ticker").predict_stream(_one(0.0)))
                ) as chunks:
                    async for _ in chunks:
                        ticks += 1
                        if ticks == 20:
                            await anyio.to_thread.run_sync(setup.server.kill)
                            tg.start_soon(restart)
                        if ticks == 400:
                            break
            except ConveyorError as error:
                return ticks, error
            return ticks, None

        async def restart() -> None:
            await anyio.sleep(OUTAGE_S)  # the outage under test
            await anyio.to_thread.run_sync(setup.server.start)

        async with anyio.create_task_group() as tg:
            ticks, error = await consume()
    assert error is None or isinstance(error, StreamInterrupted), repr(error)
    assert ticks >= 20


async def test_an_input_sent_twice_reaches_the_model_once(setup: Setup, prefix: str) -> None:
    """A stream's input whose XADD was re-sent (its reply lost with the connection) is in the
    input stream twice; the worker skips the copy by its seq. Here the copy is written by
    hand, between the first input's answer and the second input."""
    setup.fleet.start(ECHO)
    answered = anyio.Event()
    async with Client(setup.server.url, prefix=prefix) as client:

        async def inputs() -> AsyncIterator[InferenceRequest]:
            yield request(1.0, datatype="FP64")
            await answered.wait()
            with setup.admin() as admin:
                (key,) = admin.keys(f"{prefix}:in:*")
                (first,) = admin.xrange(key)
                admin.xadd(key, first[1])  # the same input, seq 0, again
            yield request(2.0, datatype="FP64")

        values = []
        async with aclosing(
            generator(client.model("echo").predict_stream(inputs(), timeout=20))
        ) as chunks:
            async for chunk in chunks:
                values.append(float(np.asarray(chunk.outputs[0].data.root).ravel()[0]))
                answered.set()
                if len(values) == 2:
                    break
    assert values == [1.0, 2.0]
