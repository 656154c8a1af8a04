"""The bridge's calls that do not wait (broker/bridge.py): ``fire`` from trio runs a plain
call on Redis's loop thread, ``back`` from that thread runs one on trio; no Redis needed."""

from __future__ import annotations

import logging
import threading

import anyio
import anyio.to_thread
import pytest

from conveyor.broker.bridge import LoopThread

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.fixture
def anyio_backend() -> str:
    return "trio"  # on asyncio the client calls Redis's loop directly: no bridge


async def test_fired_calls_run_on_the_loop_and_come_back_on_trio(
    caplog: pytest.LogCaptureFixture,
) -> None:
    thread = LoopThread("test-loop")
    thread.start()
    trio_thread = threading.get_ident()
    on_loop: list[tuple[int, bool]] = []
    on_trio: list[tuple[int, bool]] = []
    came_back = anyio.Event()

    def fired(value: int) -> None:
        on_loop.append((value, threading.get_ident() != trio_thread))
        if value == 2:
            raise RuntimeError("a fired call failed")
        thread.back(returned, value)

    def returned(value: int) -> None:
        on_trio.append((value, threading.get_ident() == trio_thread))
        if value == 3:
            raise ValueError("a call back failed")  # said in the log; trio's run goes on
        if len(on_trio) == 3:
            came_back.set()

    try:
        with caplog.at_level(logging.ERROR, logger="conveyor.broker.bridge"):
            for value in (1, 2, 3, 4):
                thread.fire(fired, value)
            with anyio.fail_after(10):
                await came_back.wait()
    finally:
        await anyio.to_thread.run_sync(thread.close)
    assert sorted(on_loop) == [(1, True), (2, True), (3, True), (4, True)]
    assert sorted(on_trio) == [(1, True), (3, True), (4, True)]
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert "bridge.fired_call_failed" in logged
    assert "bridge.call_back_failed" in logged
