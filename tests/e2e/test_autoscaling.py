"""KEDA's Redis Streams scaler reads the key layout as it is: the figure it would read
(XLEN in `streamLength` mode, the group's lag in `lagCount` mode) equals the backlog."""

from __future__ import annotations

import time

import anyio
import numpy as np
import pytest
import redis

from conveyor.broker.keys import GROUP, Keys
from conveyor.broker.wire import Job, encode_job
from conveyor.client import Client
from conveyor.types import InferenceRequest, RequestInput
from tests.support.fleet import MODELS, Fleet


def job(keys: Keys, i: int) -> Job:
    data = np.full(1, float(i), "f4")
    request = InferenceRequest(
        inputs=[RequestInput(name="x", shape=[1], datatype="FP32", data=data)]
    )
    now = time.time()
    return Job(
        id=f"req-{i}",
        method="predict",
        model="echo",
        version=None,
        reply=keys.reply("keda", f"req-{i}"),
        bell=keys.bell("keda"),
        deadline=now + 60,
        sent_at=now,
        args=(request,),
    )


@pytest.mark.anyio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_figure_keda_reads_is_the_backlog(
    probe: redis.Redis, redis_url: str, prefix: str
) -> None:
    keys = Keys(prefix)
    stream = keys.jobs("echo")
    # 7 jobs queued before any worker exists, as a burst of traffic would leave them
    probe.xgroup_create(stream, GROUP, id="0", mkstream=True)
    for i in range(7):
        probe.xadd(stream, encode_job(job(keys, i)))  # type: ignore[arg-type]
    group = probe.xinfo_groups(stream)[0]
    assert probe.xlen(stream) == 7  # streamLength mode
    assert group["lag"] == 7  # lagCount mode
    assert group["pending"] == 0  # pendingEntriesCount mode: nothing taken yet

    fleet = Fleet(redis_url, prefix)
    fleet.start(MODELS)
    try:
        async with Client(redis_url, prefix=prefix, timeout=20) as client:
            # a call goes through only once the worker has drained the queue before it
            await client.model("echo").predict(job(keys, 99).args[0])  # type: ignore[arg-type]
        with anyio.fail_after(10):
            while probe.xlen(stream):  # noqa: ASYNC110 - watching Redis: no event
                await anyio.sleep(0.01)
    finally:
        fleet.stop()
    group = probe.xinfo_groups(stream)[0]
    assert probe.xlen(stream) == 0
    assert group["lag"] == 0
    assert group["pending"] == 0
