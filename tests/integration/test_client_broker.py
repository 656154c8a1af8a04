"""The client's face of the broker (broker/client_broker.py) against a real Redis, on asyncio
and trio: each operation works through it, and every Redis error leaves it as a ConveyorError."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
import redis

from conveyor.broker import ClientBroker, FleetView, RedisSettings
from conveyor.broker.keys import Keys
from conveyor.broker.wire import Job, encode_job
from conveyor.errors import BrokerCommandError, BrokerConnectionError, ConveyorError
from tests.support.probe import wrong_type_stream

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.fixture
async def broker(redis_url: str, prefix: str) -> AsyncIterator[ClientBroker]:
    async with ClientBroker(RedisSettings.from_url(redis_url), Keys(prefix), "c1") as broker:
        yield broker
    with redis.Redis.from_url(redis_url) as cleanup:
        keys = list(cleanup.scan_iter(f"{prefix}:*"))
        if keys:
            cleanup.delete(*keys)


def _job(keys: Keys, request_id: str = "c1-1") -> Job:
    return Job(
        id=request_id,
        method="predict",
        model="m",
        version=None,
        reply=keys.reply("c1", request_id),
        bell=keys.bell("c1"),
        deadline=2e9,
        sent_at=1e9,
    )


async def test_operations_go_through_the_face(broker: ClientBroker, prefix: str) -> None:
    keys = Keys(prefix)
    stream = keys.jobs("m")
    assert not broker.reached
    assert await broker.has_group(stream) is False
    assert broker.reached
    assert await broker.read_fleet() == FleetView()
    assert await broker.model_limits("m") is None
    entry = await broker.send_job(stream, encode_job(_job(keys)))
    assert isinstance(entry, bytes)
    assert await broker.send_job(stream, encode_job(_job(keys, "c1-2")), 1) == 1  # full: backlog
    assert await broker.jobs_present([(stream, entry)]) == [True]
    assert await broker.job_was_taken(stream, entry) is False  # no workers' group
    await broker.withdraw_job(stream, entry)
    assert await broker.jobs_present([(stream, entry)]) == [False]
    rung = await broker.wait_bell(0.01)
    assert rung.ids == []
    assert rung.messages == []
    assert (await broker.drain_bell()).ids == []
    assert await broker.read_replies({keys.reply("c1", "c1-1"): b"0-0"}) == []
    await broker.send_inputs(keys.inputs("c1", "c1-1"), [{"type": "end"}], 10)
    await broker.send_credit(keys.credit("c1", "c1-1"), 2, 10)
    await broker.delete(keys.inputs("c1", "c1-1"), keys.credit("c1", "c1-1"))


async def test_a_key_of_the_wrong_type_is_a_broker_command_error(
    broker: ClientBroker, redis_url: str, prefix: str
) -> None:
    stream = wrong_type_stream(redis_url, prefix)
    with pytest.raises(BrokerCommandError, match="WRONGTYPE") as caught:
        await broker.send_job(stream, encode_job(_job(Keys(prefix))))
    assert isinstance(caught.value.__cause__, redis.exceptions.ResponseError)


async def test_an_unreachable_redis_is_a_broker_connection_error(
    prefix: str, refused_port: int
) -> None:
    settings = RedisSettings.from_url(f"redis://127.0.0.1:{refused_port}/0")
    async with ClientBroker(settings, Keys(prefix), "c1") as broker:
        with anyio.fail_after(20), pytest.raises(BrokerConnectionError) as caught:
            await broker.model_limits("m")
        assert not isinstance(caught.value.__cause__, ConveyorError)
        assert not broker.reached


async def test_a_broker_not_open_says_so(prefix: str) -> None:
    broker = ClientBroker(RedisSettings(), Keys(prefix), "c1")
    with pytest.raises(ConveyorError, match="not open"):
        await broker.model_limits("m")
    await broker.aclose()  # idempotent, and fine unopened


class _Sent:
    """What a job sent without waiting heard back (``ClientBroker.send_job_soon``)."""

    def __init__(self) -> None:
        self.outcomes: list[bytes | BaseException] = []
        self.came = anyio.Event()

    def __call__(self, outcome: bytes | BaseException) -> None:
        self.outcomes.append(outcome)
        self.came.set()

    async def one(self) -> bytes | BaseException:
        with anyio.fail_after(10):
            await self.came.wait()
        (outcome,) = self.outcomes
        return outcome


async def test_a_job_sent_without_waiting_is_stored_on_trio_only(
    broker: ClientBroker, redis_url: str, prefix: str, anyio_backend: str
) -> None:
    """On trio the XADD crosses to Redis's loop without a step of its own, and its entry id
    comes back on trio; on asyncio a waiting send is the cheaper (measured), so none goes."""
    keys = Keys(prefix)
    stream = keys.jobs("m")
    assert await broker.model_limits("m") is None  # a first step: the bridge knows trio
    sent = _Sent()
    soon = broker.send_job_soon(stream, encode_job(_job(keys)), sent)
    with redis.Redis.from_url(redis_url) as probe:
        if anyio_backend == "asyncio":
            assert soon is False
            assert sent.outcomes == []
            assert probe.xlen(stream) == 0
            return
        assert soon is True
        entry = await sent.one()
        assert isinstance(entry, bytes)
        assert [entry_id for entry_id, _ in probe.xrange(stream)] == [entry]


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_job_sent_without_waiting_hears_that_redis_refused_it(
    broker: ClientBroker, redis_url: str, prefix: str
) -> None:
    stream = wrong_type_stream(redis_url, prefix)
    assert await broker.model_limits("m") is None
    sent = _Sent()
    assert broker.send_job_soon(stream, encode_job(_job(Keys(prefix))), sent) is True
    refused = await sent.one()
    assert isinstance(refused, redis.exceptions.ResponseError)
    assert "WRONGTYPE" in str(refused)
