"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis

from conveyor.broker import WorkerBroker
from conveyor.broker.keys import Keys


@pytest.fixture
async def worker_broker(redis_url: str, prefix: str) -> AsyncIterator[WorkerBroker]:
    """A worker's broker under this test's prefix (reads block at most 0.2 s); its keys are
    deleted afterwards. Worker code runs on asyncio: a test using it runs on asyncio only."""
    async with WorkerBroker(redis_url, Keys(prefix), "w1", max_block=0.2) as broker:
        yield broker
    with redis.Redis.from_url(redis_url) as cleanup:
        keys = list(cleanup.scan_iter(f"{prefix}:*"))
        if keys:
            cleanup.delete(*keys)
