"""Where a plain ``def`` model's calls run (``worker.inline_calls``): the policy alone."""

from __future__ import annotations

import logging
import time

import pytest

from conveyor.worker.call_limit import CallLimit
from conveyor.worker.inline_calls import (
    CALLS_TO_GO_INLINE,
    INLINE_MAX_S,
    InlineCalls,
    thread_clock,
)

SHORT = INLINE_MAX_S / 10


def held(calls: InlineCalls, count: int, wall: float = SHORT) -> None:
    """``count`` calls that held the GIL their whole ``wall`` time."""
    for _ in range(count):
        calls.observe(wall, wall)


def test_short_calls_that_hold_the_gil_go_to_the_loop_after_enough_in_a_row(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = InlineCalls("m")
    held(calls, CALLS_TO_GO_INLINE - 1)
    assert not calls.inline
    with caplog.at_level(logging.INFO, logger="conveyor.worker.inline_calls"):
        held(calls, 1)
    assert calls.inline
    assert "model.calls_inline model=m calls=8" in caplog.text


def test_a_call_that_does_not_qualify_starts_the_count_again() -> None:
    calls = InlineCalls("m")
    held(calls, CALLS_TO_GO_INLINE - 1)
    calls.observe(SHORT, SHORT * 0.1)  # mostly waiting: the GIL released
    held(calls, CALLS_TO_GO_INLINE - 1)
    assert not calls.inline
    calls.observe(INLINE_MAX_S * 2, INLINE_MAX_S * 2)  # long
    held(calls, CALLS_TO_GO_INLINE - 1)
    assert not calls.inline
    held(calls, 1)
    assert calls.inline


@pytest.mark.parametrize(
    ("wall", "cpu", "reason"),
    [(INLINE_MAX_S * 2, INLINE_MAX_S * 2, "long_call"), (SHORT, 0.0, "gil_released")],
)
def test_on_the_loop_one_call_that_does_not_qualify_sends_them_back_to_threads(
    caplog: pytest.LogCaptureFixture, wall: float, cpu: float, reason: str
) -> None:
    calls = InlineCalls("m")
    held(calls, CALLS_TO_GO_INLINE)
    held(calls, 100)  # qualifying calls keep them on the loop
    assert calls.inline
    with caplog.at_level(logging.INFO, logger="conveyor.worker.inline_calls"):
        calls.observe(wall, cpu)
    assert not calls.inline
    assert f"model.calls_threaded model=m reason={reason}" in caplog.text
    # twice as many calls in a row to go back: a model that changes often stays in threads
    held(calls, CALLS_TO_GO_INLINE * 2 - 1)
    assert not calls.inline
    held(calls, 1)
    assert calls.inline


def test_on_the_loop_a_call_stretched_by_a_busy_host_stays_there() -> None:
    calls = InlineCalls("m")
    held(calls, CALLS_TO_GO_INLINE)
    calls.observe(SHORT, SHORT * 0.5)  # held the GIL, waited half its time for a CPU
    assert calls.inline
    calls.observe(SHORT, SHORT * 0.2)  # mostly waited: released it
    assert not calls.inline


def test_a_call_that_raised_counts_against_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    calls = InlineCalls("m")
    held(calls, CALLS_TO_GO_INLINE - 1)
    calls.observe(SHORT, SHORT, raised=True)  # in a thread: the count starts again
    held(calls, CALLS_TO_GO_INLINE - 1)
    assert not calls.inline
    held(calls, 1)
    assert calls.inline
    with caplog.at_level(logging.INFO, logger="conveyor.worker.inline_calls"):
        calls.observe(SHORT, SHORT, raised=True)  # on the loop: back to threads at once
    assert not calls.inline
    assert "model.calls_threaded model=m reason=raised" in caplog.text


def test_time_a_call_waited_for_a_cpu_is_not_taken_for_a_released_gil() -> None:
    calls = InlineCalls("m")
    for _ in range(CALLS_TO_GO_INLINE):  # 1 ms on the CPU, 4 ms more waiting for one
        calls.observe(0.005, 0.001, 0.004)
    assert calls.inline


def test_the_thread_clock_counts_this_thread_s_cpu_time() -> None:
    cpu, waited = thread_clock()
    started = time.thread_time()
    while time.thread_time() - started < 0.02:
        pass
    later_cpu, later_waited = thread_clock()
    assert 0.015 < later_cpu - cpu < 1.0
    assert later_waited >= waited >= 0.0


def test_the_count_needed_stops_doubling_at_a_bound() -> None:
    calls = InlineCalls("m")
    for _ in range(20):
        held(calls, 2048)
        assert calls.inline
        calls.observe(INLINE_MAX_S * 2, 0.0)
    held(calls, 1023)
    assert not calls.inline
    held(calls, 1)
    assert calls.inline


def test_only_an_instance_of_one_call_at_a_time_may_run_on_the_loop() -> None:
    assert CallLimit(None, 0).inline is not None
    assert CallLimit(1, 0).inline is not None
    assert CallLimit(2, 0).inline is None  # two calls at once need threads
    assert CallLimit(None, 0, inline=False).inline is None  # the model's inline_calls: false
