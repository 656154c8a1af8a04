"""An answer a client cannot decode ends its call at once, with the reason, when the answer
names its request: the caller does not wait out its timeout for an answer that came."""

from __future__ import annotations

from typing import Any

import anyio
import msgpack
import pytest
import redis

from conveyor.broker.keys import Keys
from conveyor.broker.wire import INLINE_MARK, Message, MessageType, encode_message
from conveyor.client import Client
from conveyor.errors import InferenceError
from tests.support.calls import request
from tests.support.fleet import MODELS, Fleet

pytestmark = pytest.mark.anyio


def _bad_answer(request_id: str) -> bytes:
    """A bell entry answering ``request_id`` with an array no client accepts: a fixed-width
    text 10^8 characters wide, far out of proportion to its entry."""
    body = msgpack.packb(["<U99999999", [1000], ["a"] * 1000])
    answer = {"v": 1, "payload": ["plain", msgpack.ExtType(1, body)], "error": None}
    entry = {
        **encode_message(Message(MessageType.RESULT, request_id, 0)),
        "envelope": msgpack.packb(answer, use_bin_type=True),
    }
    packed: bytes = msgpack.packb(entry, use_bin_type=True)
    return INLINE_MARK + packed


@pytest.mark.timeout(60)
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_an_undecodable_inline_answer_ends_its_call_with_the_reason(
    redis_url: str, prefix: str, fleet: Fleet
) -> None:
    fleet.start(MODELS)
    probe = redis.Redis.from_url(redis_url)
    stream = Keys(prefix).jobs("ticker")
    failed: list[BaseException] = []
    ended = anyio.Event()
    try:
        async with Client(redis_url, prefix=prefix, timeout=50) as client:
            await client.model("ticker").predict(request(0.0))  # the fleet is up
            sent: Any = probe.xrange(stream)
            last = sent[-1][0]

            async def call() -> None:
                try:
                    # the model answers after 5 s: without the bad answer ending it at once,
                    # the call succeeds then
                    await client.model("ticker").predict(request(5.0))
                except InferenceError as error:
                    failed.append(error)
                finally:
                    ended.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                read: Any = await anyio.to_thread.run_sync(
                    lambda: probe.xread({stream: last}, count=1, block=20_000)
                )
                fields: dict[bytes, bytes] = read[0][1][0][1]  # the call's job
                request_id = fields[b"id"].decode()
                probe.lpush(fields[b"bell"], _bad_answer(request_id))
                with anyio.fail_after(20):
                    await ended.wait()
    finally:
        probe.close()
    assert len(failed) == 1, "the call ended without an error: the model's own answer came first"
    assert "out of proportion" in str(failed[0])
    assert request_id in str(failed[0])
