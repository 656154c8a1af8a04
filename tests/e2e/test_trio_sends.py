"""A call's job sent without waiting for Redis, on trio (``ClientBroker.send_job_soon``): what
happens when Redis refuses it. A private Redis at maxmemory, a worker as a real subprocess."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

from conveyor.broker.client_streams import ClientStreams
from conveyor.client import Client
from conveyor.errors import BrokerOutOfMemory
from tests.support.calls import output, request
from tests.support.fleet import Fleet
from tests.support.probe import fill_to_maxmemory

# asyncio's sends wait for Redis: that measured cheaper there (see ClientBroker.send_job_soon)
pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["trio"])]

COUNTER = Path(__file__).parents[1] / "models" / "delivery"  # the `counter` model


@pytest.mark.timeout(90)
async def test_calls_sent_without_waiting_that_a_full_redis_refuses_fail_at_once(
    redis_server_factory: Callable[..., Any], prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On trio a call's job goes without a step through the bridge of its own: the XADD
    crosses with the next hop and rides with the next round trip, and the caller waits for
    its answer only (``ClientBroker.send_job_soon``). A Redis at maxmemory refuses those
    XADDs: each caller is woken, sends its job again waiting, and gets BrokerOutOfMemory at
    once, not at its timeout. Once memory frees, calls work again."""
    server = redis_server_factory(args=["--maxmemory", "16mb", "--maxmemory-policy", "noeviction"])
    fleet = Fleet(server.url, prefix)
    probe = redis.Redis.from_url(server.url)
    submitted: list[str] = []  # the jobs sent without waiting
    submit_job = ClientStreams.submit_job

    def counted(self: ClientStreams, stream: str, *args: Any) -> None:
        submitted.append(stream)
        submit_job(self, stream, *args)

    monkeypatch.setattr(ClientStreams, "submit_job", counted)
    outcomes: list[BaseException] = []
    try:
        fleet.start(COUNTER, extra=("--heartbeat-ttl", "3", "--grace-period", "1"))
        async with Client(server.url, prefix=prefix, timeout=40) as client:
            model = client.model("counter")
            assert output(await model.predict(request(1)), "x") == 1.0
            filler = fill_to_maxmemory(probe, prefix)

            async def call(value: int) -> None:
                try:
                    await model.predict(request(value))
                except Exception as error:
                    outcomes.append(error)

            with anyio.fail_after(20):  # well within the calls' own 40 s timeout
                async with anyio.create_task_group() as tg:
                    for value in range(16):
                        tg.start_soon(call, value)
            assert len(outcomes) == 16
            assert all(isinstance(error, BrokerOutOfMemory) for error in outcomes), outcomes
            assert len(submitted) >= 16, "the calls' jobs did not go without waiting"
            probe.delete(*filler)
            assert output(await model.predict(request(2)), "x") == 2.0
    finally:
        fleet.stop()
        probe.close()
