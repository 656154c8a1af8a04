"""A worker's claims (broker/claims.py) against a real Redis: a read's claims of one client
go as one script, which says what a SET NX GET each would have said; a script Redis lost
(SCRIPT FLUSH, a restart) is loaded again, and a user whose ACL refuses it claims with SETs."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from redis.asyncio.client import Redis

from conveyor.broker import RedisSettings, create_client
from conveyor.broker.claims import SoonClaims
from conveyor.broker.pipelining import PipelineBatcher
from conveyor.broker.wire import Job

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the batcher drives redis.asyncio: asyncio only


@pytest.fixture
async def redis(redis_url: str, prefix: str) -> AsyncIterator[Redis]:
    client = create_client(RedisSettings.from_url(redis_url), max_connections=3)
    try:
        yield client
    finally:
        keys = [key async for key in client.scan_iter(f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def _job(request_id: str, attempt: int = 1) -> Job:
    now = time.time()
    return Job(request_id, "predict", "m", None, "r", "b", now + 30, now, attempt)


Claim = tuple[str, Job, bytes]


@asynccontextmanager
async def _flushing(batcher: PipelineBatcher) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.run_flusher)
        yield
        tg.cancel_scope.cancel()


async def _claim(redis: Redis, claims: list[Claim]) -> list[str | None]:
    """Claims them all with one SoonClaims, as a worker's read does; what each heard."""
    soon = SoonClaims(batcher := PipelineBatcher(redis))
    async with _flushing(batcher):
        return await _claim_with(soon, claims)


async def _claim_with(soon: SoonClaims, claims: list[Claim]) -> list[str | None]:
    """Claims them all at once (the batcher's flusher runs); what each heard."""
    heard: dict[int, str | None] = {}
    done = anyio.Event()

    def told(index: int) -> Any:
        def claimed(holder: str | None) -> None:
            heard[index] = holder
            if len(heard) == len(claims):
                done.set()

        return claimed

    for index, (key, job, entry) in enumerate(claims):
        soon.claim_soon(key, job, entry, 30.0, told(index))
    with anyio.fail_after(10):
        await done.wait()
    return [heard[index] for index in range(len(claims))]


async def _calls(redis: Redis, command: str) -> int:
    stats: dict[str, Any] = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def _keys(prefix: str, client: str, count: int) -> list[str]:
    return [f"{prefix}:claim:{{{client}}}:{uuid.uuid4().hex}" for _ in range(count)]


async def test_a_read_s_claims_of_one_client_go_as_one_script(redis: Redis, prefix: str) -> None:
    mine, other, lone = _keys(prefix, "c1", 10), _keys(prefix, "c2", 3), _keys(prefix, "c3", 1)
    claims = [(key, _job(key[-8:]), f"1-{i}".encode()) for i, key in enumerate(mine + other + lone)]
    scripts = await _calls(redis, "evalsha")
    assert await _claim(redis, claims) == [None] * len(claims)
    assert await _calls(redis, "evalsha") == scripts + 2  # c1's and c2's; c3's lone SET
    for key, job, entry in claims:
        assert await redis.get(key) == f"{job.attempt} {entry.decode()}".encode()
        assert 25_000 < await redis.pttl(key) <= 30_000


async def test_the_script_says_what_a_set_each_says(redis: Redis, prefix: str) -> None:
    """Held by this entry (a reclaim), by another copy, by an earlier send (taken over), and
    free: the same answers in a script as in SETs alone."""
    keys = _keys(prefix, "c1", 4)
    jobs = [_job(f"r{i}", attempt=2) for i in range(4)]
    await redis.set(keys[0], "2 1-0")  # this very entry: its worker died, it runs again
    await redis.set(keys[1], "2 9-9")  # another copy of this send runs it
    await redis.set(keys[2], "1 8-8")  # the client's earlier send: this one takes it over
    entries = [b"1-0", b"1-1", b"1-2", b"1-3"]
    claims = list(zip(keys, jobs, entries, strict=True))
    soon = SoonClaims(batcher := PipelineBatcher(redis))
    async with _flushing(batcher):
        together = await _claim_with(soon, claims)
        # the takeover was queued by the claims' settle: it goes before this GET
        (taken,) = await batcher.run(lambda pipe: pipe.get(keys[2]))
    assert together == [None, "2 9-9", None, None]
    assert taken == b"2 1-2"
    assert await redis.get(keys[1]) == b"2 9-9"
    alone = [(await _claim(redis, [claim]))[0] for claim in claims]
    assert alone == [None, "2 9-9", None, None]


async def test_a_script_redis_lost_is_loaded_again(redis: Redis, prefix: str) -> None:
    soon = SoonClaims(batcher := PipelineBatcher(redis))
    async with _flushing(batcher):
        first = [(key, _job(key[-8:]), b"1-1") for key in _keys(prefix, "c1", 5)]
        assert await _claim_with(soon, first) == [None] * 5
        await redis.script_flush()  # as a restart would
        again = [(key, _job(key[-8:]), b"1-2") for key in _keys(prefix, "c1", 5)]
        assert await _claim_with(soon, again) == [None] * 5  # sent again as SETs
        for key, _, _ in again:
            assert await redis.get(key) == b"1 1-2"
        scripts = await _calls(redis, "evalsha")
        last = [(key, _job(key[-8:]), b"1-3") for key in _keys(prefix, "c1", 5)]
        assert await _claim_with(soon, last) == [None] * 5
    assert await _calls(redis, "evalsha") == scripts + 1  # loaded again, and used


async def test_a_user_whose_acl_refuses_the_script_claims_with_sets(
    redis: Redis, redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    user, password = f"claims-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await redis.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=[f"{prefix}:*"],
        commands=["-@all", "+ping", "+client|setname", "+set"],
    )
    host = redis_url.split("://", 1)[1]
    client = create_client(RedisSettings.from_url(f"redis://{user}:{password}@{host}"))
    try:
        soon = SoonClaims(batcher := PipelineBatcher(client))
        with caplog.at_level(logging.WARNING, logger="conveyor.broker.claims"):
            async with _flushing(batcher):
                for round_ in range(2):
                    keys = _keys(prefix, f"c{round_}", 4)
                    claims = [(key, _job(key[-8:]), b"1-1") for key in keys]
                    assert await _claim_with(soon, claims) == [None] * 4
                    for key in keys:
                        assert await redis.get(key) == b"1 1-1"
        said = [r.getMessage() for r in caplog.records if "claims_unbatched" in r.getMessage()]
        assert len(said) == 1, said
        assert "+evalsha +script|load" in said[0]
    finally:
        await client.aclose()
        await redis.acl_deluser(user)
