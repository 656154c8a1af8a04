"""Redis refusing the client's reads (its bell is a key of another type): each call in flight
ends at once with Redis's words, the caller's block goes on, and the client serves again once
the key is mended (client/reader.py). Before, the reader's error cancelled the caller's whole
``async with Client`` block and left as an ExceptionGroup."""

from __future__ import annotations

import anyio
import pytest
import redis

from conveyor.broker.keys import Keys
from conveyor.client import Client
from conveyor.errors import BrokerCommandError
from tests.support.calls import request
from tests.support.fleet import MODELS, Fleet

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def test_a_bell_of_another_type_fails_the_calls_and_the_client_recovers(
    fleet: Fleet, redis_url: str, prefix: str, probe: redis.Redis
) -> None:
    fleet.start(MODELS / "echo")
    async with Client(redis_url, prefix=prefix, timeout=30) as client:
        echo = client.model("echo")
        await echo.predict(request(1.0))
        bell = Keys(prefix).bell(client.client_id)
        probe.set(bell, "not a list")  # an operator's mistake, say
        with anyio.fail_after(10):  # not the call's 30 s timeout
            with pytest.raises(BrokerCommandError, match="WRONGTYPE"):
                await echo.predict(request(2.0))
        probe.delete(bell)
        with anyio.fail_after(10):
            answer = await echo.predict(request(3.0))
        assert answer.outputs[0].data.root == [3.0]
