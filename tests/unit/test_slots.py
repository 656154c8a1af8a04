"""The worker's slots: a job run alone frees its model's room once answered, its slot once
acked (worker.slots, worker.call_limit)."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from conveyor.worker.call_limit import Hold, plan_reads
from conveyor.worker.slots import Slots

pytestmark = pytest.mark.timeout(10)

STREAM = "p:{m}:jobs"
MODEL_OF = {STREAM: "m"}
HOLDS = {"m": Hold(3, 3)}  # an unbatched model of one call slot: three jobs held


def full_model() -> Slots:
    slots = Slots({})
    for entry in (b"1-0", b"2-0", b"3-0"):
        slots.take(entry, STREAM)
        slots.awaiting_ack += 1  # answered: its ack waits
    return slots


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Slots waits on asyncio events (the worker's loop)


def test_an_answered_job_frees_its_models_room_but_keeps_its_slot() -> None:
    slots = full_model()
    assert plan_reads([STREAM], MODEL_OF, HOLDS, slots.held, 16).wait == []
    slots.answered(STREAM)
    reads = plan_reads([STREAM], MODEL_OF, HOLDS, slots.held, 16 - len(slots.in_flight))
    assert (reads.wait, reads.wait_count) == ([STREAM], 1)
    # the slot (the worker's --concurrency, the heartbeat's in-flight jobs) waits for the ack
    assert set(slots.in_flight) == {b"1-0", b"2-0", b"3-0"}
    slots.ack_done(b"1-0")
    assert set(slots.in_flight) == {b"2-0", b"3-0"}
    assert slots.awaiting_ack == 2
    assert slots.held["m"] == 2  # counted once: at the answer


def test_an_acked_batched_job_frees_both_at_once() -> None:
    slots = full_model()
    slots.acked(b"1-0", STREAM)
    assert slots.held["m"] == 2
    assert set(slots.in_flight) == {b"2-0", b"3-0"}


@pytest.mark.anyio
async def test_the_reader_wakes_at_the_ack_not_at_the_answer() -> None:
    slots = full_model()
    waiting = asyncio.ensure_future(slots.wait())
    slots.answered(STREAM)
    for _ in range(5):  # the loop's turns a set event would take to resume the waiter
        await asyncio.sleep(0)
    assert not waiting.done()
    slots.ack_done(b"1-0")
    with anyio.fail_after(5):
        await waiting
