"""The client's fence and completeness checks, message by message (no Redis: the behaviour
against real workers is in tests/test_delivery.py and tests/test_stream_faults.py)."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.broker.wire import Job, Message, MessageType
from conveyor.client.waiter import Unsent, Waiter


def chunk(seq: int, attempt: int = 1, entry: str = "1-0") -> Message:
    return Message(MessageType.CHUNK, "r", attempt, seq, None, None, entry)


def end(seq: int, attempt: int = 1, entry: str = "1-0") -> Message:
    return Message(MessageType.END, "r", attempt, seq, None, None, entry)


def taken(waiter: Waiter) -> list[tuple[str, int, str]]:
    return [(m.type.value, m.seq, m.entry) for m in waiter.inbox]


def new_waiter() -> Waiter:
    return Waiter("r", "k", asyncio.Event)


def test_waiter_keeps_one_copy_of_a_job() -> None:
    """Two copies of one job (entries 1-0 and 2-0, both attempt 1) answer interleaved: the
    call keeps the copy it heard from first."""
    waiter = new_waiter()
    for message in (chunk(0), chunk(0, entry="2-0"), chunk(1, entry="2-0"), chunk(1), end(2)):
        waiter.deliver(message)
    assert taken(waiter) == [("chunk", 0, "1-0"), ("chunk", 1, "1-0"), ("end", 2, "1-0")]


def test_waiter_raises_on_a_missing_chunk_or_a_short_stream() -> None:
    gap = new_waiter()
    for message in (chunk(0), chunk(0), chunk(2), chunk(3)):  # a repeat is dropped; 1 missing
        gap.deliver(message)
    assert [m.type for m in gap.inbox] == [MessageType.CHUNK, MessageType.ERROR]
    error = gap.inbox[-1].error
    assert error is not None
    assert error.code == "stream_interrupted"
    assert "chunks 1 to 1 never arrived" in error.message

    short = new_waiter()
    for message in (chunk(0), end(3)):
        short.deliver(message)
    error = short.inbox[-1].error
    assert error is not None
    assert "it ended after 3 chunks but 1 arrived" in error.message


def _job() -> Job:
    return Job("r", "predict", "m", None, "k", "b", 2.0, 1.0)


def test_a_job_sent_without_waiting_is_known_once_its_xadd_answers() -> None:
    waiter = new_waiter()
    waiter.sending = (_job(), "jobs")
    waiter.sent_soon(b"5-0")
    assert waiter.sent is not None
    assert (waiter.sent.stream, waiter.sent.entry_id) == ("jobs", b"5-0")
    assert waiter.unsent is None
    waiter.sent_soon(ConnectionError("late"))  # one outcome per send: a second is ignored
    assert waiter.unsent is None


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the waiter's events are asyncio's here
async def test_a_job_sent_without_waiting_that_redis_refused_wakes_its_caller() -> None:
    """The caller waits for its answer, not for the XADD; a refused XADD wakes it with
    Unsent (it then sends the job again, waiting, and hears why it fails)."""
    waiter = new_waiter()
    waiter.sending = (_job(), "jobs")
    refused = RuntimeError("OOM command not allowed")

    async def refuse_soon() -> None:
        await asyncio.sleep(0)
        waiter.sent_soon(refused)

    task = asyncio.ensure_future(refuse_soon())
    with pytest.raises(Unsent) as raised:
        await asyncio.wait_for(waiter.next(), 5)
    await task
    assert raised.value.__cause__ is refused
    assert waiter.sent is None
    waiter.deliver(Message(MessageType.RESULT, "r", 1, entry="6-0"))  # sent again: answered
    assert (await waiter.next()).entry == "6-0"
