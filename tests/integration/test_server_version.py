"""broker.server_version against the session's real server, and the hint a command it does
not know gets (broker.errors): which server Conveyor talks to, and whether it is new enough.
Redis 6.2 itself: tests/e2e/test_old_redis.py."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from conveyor.broker import WorkerBroker
from conveyor.broker.errors import translate_every_error
from conveyor.broker.server_version import ServerVersion, read_server_version
from conveyor.errors import BrokerCommandError

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis.asyncio


async def test_the_server_says_its_name_and_version(redis_url: str) -> None:
    async with Redis.from_url(redis_url) as redis:
        found = await read_server_version(redis)
    assert found is not None
    assert found.name in ("redis", "valkey"), found
    assert not found.too_old, found  # the suite's servers are 7.0 or newer


async def test_a_worker_reads_it_as_a_user_held_to_nothing_but_its_keys(
    worker_broker: WorkerBroker,
) -> None:
    """HELLO needs no ACL permission: the same as the plain client, through the worker's face
    (tests/e2e/test_security.py runs a whole worker under README's ACL line)."""
    found = await worker_broker.server_version()
    assert found is not None
    assert found.version[0].isdigit()


@pytest.mark.parametrize(
    ("version", "too_old"),
    [
        ("6.2.14", True),
        ("6.0.16", True),
        ("5.0.7", True),
        ("7.0.0", False),
        ("7.0.15", False),
        ("7.2.4", False),
        ("9.1.2", False),  # Valkey
        ("255.255.255", False),
        ("unstable", False),  # not numbers: not judged
        ("7", False),
    ],
)
def test_too_old_is_below_7_0(version: str, too_old: bool) -> None:
    assert ServerVersion("redis", version).too_old is too_old


async def test_a_command_the_server_lacks_says_conveyor_needs_7_0(redis_url: str) -> None:
    async with Redis.from_url(redis_url) as redis:
        with pytest.raises(BrokerCommandError) as caught, translate_every_error(redis_url):
            await redis.execute_command("BLMPOPX", 1, 1, "k", "LEFT")  # type: ignore[no-untyped-call]
    assert "unknown command" in str(caught.value)
    assert "Conveyor needs Redis 7.0 or newer" in str(caught.value)


async def test_other_refusals_get_no_such_hint(redis_url: str, prefix: str) -> None:
    async with Redis.from_url(redis_url) as redis:
        await redis.set(f"{prefix}:s", "v")
        with pytest.raises(BrokerCommandError) as caught, translate_every_error(redis_url):
            await redis.lpush(f"{prefix}:s", "x")
        await redis.delete(f"{prefix}:s")
    assert "WRONGTYPE" in str(caught.value)
    assert "Conveyor needs" not in str(caught.value)
