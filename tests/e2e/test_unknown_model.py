"""A call to a model no worker serves fails fast, names what is served, and leaves nothing.

And the other side of that check (client/served.py): a call made while the fleet starts, or
while a worker loads the model, waits for it instead of failing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import anyio
import numpy as np
import pytest
import redis

from conveyor.client import Client
from conveyor.errors import ModelNotFound, ModelNotServed, NoWorkerError
from tests.support.calls import request
from tests.support.fleet import MODELS, Fleet

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def shared_prefix() -> str:
    return f"t{uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def shared_fleet(redis_url: str, shared_prefix: str) -> Iterator[Fleet]:
    with Fleet(redis_url, shared_prefix) as fleet:
        fleet.start(MODELS)
        yield fleet


def keys_of(redis_url: str, prefix: str) -> set[bytes]:
    probe = redis.Redis.from_url(redis_url)
    try:
        return set(probe.scan_iter(match=f"{prefix}:*", count=1000))
    finally:
        probe.close()


async def test_an_unknown_model_fails_fast_naming_the_served_ones_and_leaves_nothing(
    redis_url: str, shared_prefix: str, shared_fleet: Fleet
) -> None:
    async with Client(redis_url, prefix=shared_prefix, timeout=30) as client:
        await client.model("echo").predict(request())  # the fleet is up
        before = keys_of(redis_url, shared_prefix)
        for _ in range(3):  # a retry loop with a typo
            with anyio.fail_after(10):  # well under the call's 30 s
                with pytest.raises(ModelNotServed) as caught:
                    await client.model("no-such-model").predict(request())
        with anyio.fail_after(10), pytest.raises(ModelNotServed):
            await client.model("no-such-model").load()  # a control request: same check
        after = keys_of(redis_url, shared_prefix)
    message = str(caught.value)
    assert "no worker serves model 'no-such-model'" in message
    served = message.split("the models served are: ")[1].split(", ")
    assert {"counter", "echo", "fails"} <= set(served), message  # tests/models
    # what a caller catching the old errors (or MLServer's) still catches
    assert isinstance(caught.value, NoWorkerError | ModelNotFound | TimeoutError)
    new = {key for key in after - before if b"reply:" not in key and b"bell:" not in key}
    assert new == set(), new  # no job stream, no control stream for the typo
    assert not [key for key in after if b"no-such-model" in key]


async def test_an_unknown_version_of_a_served_model_fails_fast(
    redis_url: str, shared_prefix: str, shared_fleet: Fleet
) -> None:
    async with Client(redis_url, prefix=shared_prefix, timeout=30) as client:
        with anyio.fail_after(10), pytest.raises(ModelNotServed, match="version 'v9'"):
            await client.model("echo", "v9").predict(request())
        assert await client.model("echo", "v1").predict(request(2.0))  # the served version


async def test_with_no_worker_at_all_the_call_says_none_is_running(
    redis_url: str, prefix: str
) -> None:
    async with Client(redis_url, prefix=prefix, timeout=30) as client:
        with anyio.fail_after(10), pytest.raises(ModelNotServed, match="no worker is running"):
            await client.model("echo").predict(request(), timeout=1)
    assert not [key for key in keys_of(redis_url, prefix) if b"{echo}" in key]


async def test_a_call_made_as_the_fleet_starts_waits_for_it(
    fleet: Fleet, redis_url: str, prefix: str
) -> None:
    """The race a fail-fast check must not lose: the worker process is started together with
    the client (as `docker compose up` does), so the first call may come before its first
    heartbeat, and while it loads its models."""
    fleet.start(MODELS, wait=False)
    async with Client(redis_url, prefix=prefix, timeout=30) as client:
        response = await client.model("echo").predict(request(4.0))
    assert np.asarray(response.outputs[0].data.root).tolist() == [4.0]


_SLOW_LOAD = """
import logging
import time

from conveyor import MLModel


class Model(MLModel):
    def load(self) -> bool:
        logging.getLogger("slow").warning("slow.loading")
        time.sleep(3)  # longer than the client's grace: only "loading" lets the call wait
        return True
"""


async def test_a_call_to_a_model_a_worker_is_loading_waits_for_it(
    fleet: Fleet, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    folder = tmp_path / "models" / "slow"
    folder.mkdir(parents=True)
    (folder / "slow.py").write_text(_SLOW_LOAD)
    (folder / "model-settings.json").write_text('{"name": "slow", "implementation": "slow.Model"}')
    worker = fleet.start(folder, MODELS, wait=False)
    await anyio.to_thread.run_sync(worker.wait_for_log, "slow.loading")
    async with Client(redis_url, prefix=prefix, timeout=30) as client:
        # a model of the same worker, also loading: the call waits (3 s > the 2 s grace)
        response = await client.model("echo").predict(request(5.0))
    assert np.asarray(response.outputs[0].data.root).tolist() == [5.0]
